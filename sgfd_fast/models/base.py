"""The interface every recommender implements, and the config helpers models share.

A model receives the loaded :class:`~sgfd_fast.data.Dataset` and the resolved flat config dict.
The trainer calls :meth:`Recommender.calculate_loss` per batch of positive (user, item) pairs (plus
``n_negatives`` sampled negatives per pair) and :mod:`sgfd_fast.evaluation` ranks with
:meth:`Recommender.ranking_embeddings` (dot-product scorers) or :meth:`Recommender.score_users`.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["Recommender", "config_value", "rows"]


def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a tensor of row ids (any shape), with a repeatable gradient.

    On CPU the backward of ``x[index]`` (``index_put_`` with accumulation) adds repeated rows in
    an order that varies between runs when torch uses several threads; ``index_select``'s
    backward (``index_add_``) does not. On CUDA it is the other way round (``index_add_`` uses
    atomics, the indexing backward sorts), so CUDA keeps ``x[index]``.
    """
    if x.device.type != "cpu":
        return x[index]
    return x.index_select(0, index.reshape(-1)).reshape(*index.shape, *x.shape[1:])


def config_value(config: dict, key: str, kind=None, *, low=None, high=None, choices=None,
                 model: str = "model"):
    """Read ``config[key]``, check its type and range, and raise a clear ConfigError otherwise.

    Args:
        kind: expected Python type (``int``, ``float``, ``bool``, ``str``); ints are accepted
            where floats are expected, bools never pass as numbers.
        low, high: inclusive bounds; choices: the allowed values.
    """
    if key not in config:
        raise ConfigError(f"{model}: missing config key {key!r} (its default lives in "
                          "sgfd_fast/configs/overall.yaml or configs/model/<MODEL>.yaml)")
    value = config[key]
    ok = True
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is not None:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{model}: {key} must be a {kind.__name__}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{model}: {key} must be one of {list(choices)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{model}: {key} must lie in {bounds}, got {value!r}")
    return value


class Recommender(torch.nn.Module):
    """Base class of all recommenders.

    Subclasses set ``n_negatives`` (negatives per positive pair the trainer samples) and implement
    :meth:`calculate_loss` and either :meth:`ranking_embeddings` or :meth:`score_users`.
    ``legacy_mask_value`` is the score the released code gives a user's training items under
    ``protocol: legacy`` (``None`` = excluded from the ranking, like BM3's -1e10).
    """

    n_negatives: int = 0
    legacy_mask_value: float | None = None

    def __init__(self, dataset, config: dict):
        super().__init__()
        self.n_users = int(dataset.n_users)
        self.n_items = int(dataset.n_items)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def calculate_loss(self, users: torch.Tensor, items: torch.Tensor,
                       negatives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of one batch of positive pairs.

        Args:
            users, items: (B,) int64 on the model's device.
            negatives: (B, n_negatives) int64, or None when ``n_negatives == 0``.

        Returns:
            ``{"loss": total scalar to backpropagate, <part>: scalar for logging, ...}``.
        """
        raise NotImplementedError

    def ranking_embeddings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(users (n_users, d), items (n_items, d))`` with score = u @ i.T, or None if the model
        does not score by a dot product. Called once per evaluation under ``torch.no_grad()``."""
        return None

    def ranking_topk(self, users: torch.Tensor, mask_rowptr: torch.Tensor, mask_col: torch.Tensor,
                     k: int, mask_value: float | None):
        """``(values, indices)`` (len(users), k) of a fused ranking op (masking as in
        ``ops.masked_topk``), or None when the model has none; evaluation then ranks
        :meth:`score_users` blocks. Called per user batch under ``torch.no_grad()``."""
        return None

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), n_items) scores of every item for the given users."""
        emb = self.ranking_embeddings()
        if emb is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither "
                                      "ranking_embeddings nor score_users")
        u, i = emb
        return u[users] @ i.T

    def student_features(self) -> dict[str, torch.Tensor]:
        """Per-modality item features the backbone consumes, ``{modality: (n_items, D)}``."""
        return {}
