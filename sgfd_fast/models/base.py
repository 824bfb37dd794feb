"""The interface every recommender implements, and the row gather models share.

A model receives the loaded :class:`~sgfd_fast.data.Dataset` and the resolved flat config dict,
whose types and ranges :func:`sgfd_fast.config.load_config` has checked: models read
``config[key]`` as it is. The trainer calls :meth:`Recommender.calculate_loss` per batch of
positive (user, item) pairs (plus ``n_negatives`` sampled negatives per pair) and
:mod:`sgfd_fast.evaluation` ranks with :meth:`Recommender.ranking_embeddings` (dot-product
scorers) or :meth:`Recommender.score_users`.
"""

from __future__ import annotations

import torch

from ..graph import CSR
from ..ops.row_dropout import mix64

__all__ = ["Recommender", "rows", "step_key"]


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


def step_key(seed: int, epoch: int, batch: int) -> int:
    """The :attr:`Recommender.step_key` of batch ``batch`` of epoch ``epoch`` (both from 0) of a
    run seeded with ``seed``: an int64 that depends on the global position only."""
    z = torch.tensor([seed & ((1 << 63) - 1), epoch, batch], dtype=torch.int64)
    return int(mix64(mix64(mix64(z[0]) + z[1]) + z[2]))


class Recommender(torch.nn.Module):
    """Base class of all recommenders.

    Subclasses set ``n_negatives`` (negatives per positive pair the trainer samples) and implement
    :meth:`calculate_loss` and either :meth:`ranking_embeddings` or :meth:`score_users`.
    ``legacy_mask_value`` is the score the released code gives a user's training items under
    ``protocol: legacy`` (``None`` = excluded from the ranking, like BM3's -1e10).
    """

    n_negatives: int = 0
    legacy_mask_value: float | None = None
    #: Counter-based RNG key of the current training step, set by the trainer before each
    #: :meth:`calculate_loss` from the step's global position ``(seed, epoch, batch)``; models
    #: draw their random masks with :func:`sgfd_fast.ops.row_dropout` from it, never from the
    #: global RNG, so every process of a distributed run draws the masks one process would.
    step_key: int = 0
    #: Share of the global batch's rows this process's :meth:`calculate_loss` sees (1.0 in one
    #: process). The trainer scales the loss by it and sums gradients over processes, which is
    #: exact for means over the batch's rows and for terms over the whole model; a term that
    #: SUMS over the batch's rows divides by it (MAML's hinge sum).
    shard_fraction: float = 1.0

    def __init__(self, dataset, config: dict):
        super().__init__()
        self.n_users = int(dataset.n_users)
        self.n_items = int(dataset.n_items)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _apply(self, fn, recurse=True):
        # A model's graphs (CSR attributes) are constants of the dataset: rebuilt with the model,
        # never checkpointed, and moved or cast by ``.to()``/``.double()`` like non-persistent
        # buffers (index tensors keep their dtype, as ``fn`` leaves integer buffers alone).
        super()._apply(fn, recurse)
        for name, value in list(vars(self).items()):
            if isinstance(value, CSR):
                setattr(self, name, value.apply(fn))
        return self

    def calculate_loss(self, users: torch.Tensor, items: torch.Tensor,
                       negatives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of one batch of positive pairs.

        Args:
            users, items: (B,) int64 on the model's device.
            negatives: (B, n_negatives) int64, or None when ``n_negatives == 0``.

        Returns:
            ``{"loss": total scalar to backpropagate, <part>: scalar for logging, ...}``; the
            parts are detached except ``"sgfd"`` (the weighted SGFD total, when the model runs
            SGFD), whose gradient ``training.diagnostics.gradient_share`` measures.
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
