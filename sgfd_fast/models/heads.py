"""Item-feature heads: ``Linear`` → optional leaky-ReLU → optional row L2 normalisation, with a
chosen weight initialisation. Both kinds of :mod:`.features` build their heads from here: the SGFD
student and the plain backbones' own extractors (config keys ``student_activation``,
``student_norm``, ``student_init``; ``auto`` keeps each head as released)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = ["Head", "NEGATIVE_SLOPE", "apply_head", "init_head", "resolve_head"]

NEGATIVE_SLOPE = 0.01   # F.leaky_relu's default, used by the released code


class Head(NamedTuple):
    """An item-feature head: ``Linear`` → leaky-ReLU with ``slope`` (None: no activation) → row
    L2 normalisation (``l2``); ``init``: how its weight is initialised
    (``choices.STUDENT_INITS``)."""

    slope: float | None
    l2: bool
    init: str


def resolve_head(config: dict, *, activation: str, norm: str, init: str) -> Head:
    """The head that the config keys ``student_activation``, ``student_norm`` and
    ``student_init`` describe, ``auto`` (also: key absent) standing for the given released
    choice of the head in question (``activation`` ``leaky_relu``/``identity``, ``norm``
    ``l2``/``none``, ``init`` one of ``choices.STUDENT_INITS``)."""
    def pick(key, released):
        value = config.get(key, "auto")
        return released if value == "auto" else value

    return Head(NEGATIVE_SLOPE if pick("student_activation", activation) == "leaky_relu" else None,
                pick("student_norm", norm) == "l2", pick("student_init", init))


def init_head(layer: nn.Linear, init: str) -> None:
    """Initialise ``layer.weight`` as ``init`` says; ``pytorch`` keeps what ``nn.Linear`` drew."""
    if init == "xavier_normal":
        nn.init.xavier_normal_(layer.weight)
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(layer.weight)


def apply_head(x: torch.Tensor, layer: nn.Linear, head: Head) -> torch.Tensor:
    """``head`` applied to raw feature rows x (n, d) → (n, D). An L2 head runs the fused
    ``ops.feature_head``; without L2 it is ``F.linear`` (+ leaky-ReLU), what ``nn.Linear`` does."""
    if head.l2:
        return ops.feature_head(x, layer.weight, layer.bias, head.slope)
    h = F.linear(x, layer.weight, layer.bias)
    return h if head.slope is None else F.leaky_relu(h, head.slope)
