"""Item-feature heads: ``Linear`` → optional leaky-ReLU → optional row L2 normalisation, with a
chosen weight initialisation. Both kinds of :mod:`.features` build their heads from here: the SGFD
student and the plain backbones' own extractors (config keys ``student_activation``,
``student_norm``, ``student_init``; ``auto`` keeps each head as released).

:class:`Linear` is the dense layer of every backbone and of SGFD: ``nn.Linear`` whose product
follows the model's ``precision`` (:meth:`Recommender.use_precision
<sgfd_fast.models.base.Recommender.use_precision>` sets :attr:`Linear.bf16`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._tensors import bf16_linear

__all__ = ["Head", "Linear", "NEGATIVE_SLOPE", "apply_head", "init_head", "resolve_head"]

NEGATIVE_SLOPE = 0.01   # F.leaky_relu's default, used by the released code


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, initialisation and checkpoint keys) whose product runs in
    bf16 when :attr:`bf16` is set (``_tensors.bf16_linear``: bf16 inputs, float32 accumulation,
    float32 output; weight and bias stay float32). A bfloat16 input (raw item features under
    ``precision: bf16``) always takes the bf16 product."""

    #: set by ``Recommender.use_precision`` for ``precision: bf16``
    bf16: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16 or x.dtype == torch.bfloat16:
            return bf16_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", bf16" if self.bf16 else "")


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


def apply_head(x: torch.Tensor, layer: Linear, head: Head) -> torch.Tensor:
    """``head`` applied to raw feature rows x (n, d) → (n, D) float32. An L2 head runs the fused
    ``ops.feature_head`` (a bf16 product for a bfloat16 x or a bf16 ``layer``); without L2 it is
    ``layer(x)`` (+ leaky-ReLU)."""
    if head.l2:
        if layer.bf16:
            x = x.to(torch.bfloat16)
        return ops.feature_head(x, layer.weight, layer.bias, head.slope)
    h = layer(x)
    return h if head.slope is None else F.leaky_relu(h, head.slope)
