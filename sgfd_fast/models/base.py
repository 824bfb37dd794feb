"""The interface every recommender implements (the trainer-model contract), and the row gather
models share.

A model receives the loaded :class:`~sgfd_fast.data.Dataset` and the resolved flat config dict,
whose types and ranges :func:`sgfd_fast.config.load_config` has checked: models read
``config[key]`` as it is. Per epoch and step the trainer (``training.loop``) calls, in order::

    model.begin_epoch(epoch, key)                      # once per epoch, before its first step
    model.begin_step(key, shard_fraction, batch)       # every step: the step context
    parts = model.calculate_loss(users, items, negatives)
    parts["loss"] * shard_fraction -> backward, gradients summed over processes, optimizer step
    model.post_step()                                  # after the optimizer step

:mod:`sgfd_fast.evaluation` ranks with :meth:`Recommender.ranking_topk` (a fused op),
:meth:`Recommender.ranking_embeddings` (dot-product scorers) or :meth:`Recommender.score_users`;
under ``protocol: legacy`` it reads the class attributes ``legacy_metrics`` and
``legacy_mask_value``. A backbone that consumes item features gets them from
:func:`~sgfd_fast.models.features.item_features` (:meth:`Recommender.attach_features`).
"""

from __future__ import annotations

import torch

from ..graph import CSR
from ..ops.row_dropout import mix64
from .features import EXTRA_TOTAL, ItemFeatures
from .heads import Linear

__all__ = ["Recommender", "bpr_loss", "emb_loss", "rows", "step_key"]


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


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """MMRec's ``BPRLoss``: ``-mean log(1e-10 + sigmoid(pos - neg))`` over the rows, a scalar
    (Rendle et al., UAI 2009; the 1e-10 keeps the log finite)."""
    return -torch.log(1e-10 + torch.sigmoid(pos - neg)).mean()


def emb_loss(*blocks: torch.Tensor) -> torch.Tensor:
    """MMRec's ``EmbLoss``: the sum of the blocks' Frobenius norms (not squared) divided by the
    last block's row count, a scalar. A norm of the batch's rows: a distributed model computes it
    on :attr:`Recommender.global_batch`."""
    return sum(b.norm() for b in blocks) / blocks[-1].shape[0]


def step_key(seed: int, epoch: int, batch: int) -> int:
    """The step key (:meth:`Recommender.begin_step`) of batch ``batch`` of epoch ``epoch`` (both
    from 0) of a run seeded with ``seed``: an int64 that depends on the global position only."""
    z = torch.tensor([seed & ((1 << 63) - 1), epoch, batch], dtype=torch.int64)
    return int(mix64(mix64(mix64(z[0]) + z[1]) + z[2]))


class Recommender(torch.nn.Module):
    """Base class of all recommenders (one backbone = one file: docs/DEVELOPING.md).

    Subclasses set ``n_negatives`` (negatives per positive pair the trainer samples) and implement
    :meth:`calculate_loss` and one of :meth:`ranking_topk`, :meth:`ranking_embeddings`,
    :meth:`score_users`; the hooks (:meth:`begin_epoch`, :meth:`post_step`) default to nothing.
    """

    n_negatives: int = 0
    #: ``protocol: legacy`` metric definitions (``evaluation.LEGACY_METRICS``): ``mmrec`` = the
    #: released BM3's (MMRec's micro recall, its NDCG); ``hit_normalized`` = GRCN/MAML's.
    legacy_metrics: str = "mmrec"
    #: the score the released code gives a user's training items under ``protocol: legacy``
    #: (None = excluded from the ranking, like BM3's -1e10)
    legacy_mask_value: float | None = None

    # -- the step context (:meth:`begin_step`); the defaults are a single-process step --------
    #: Counter-based RNG key of the current training step, from its global position
    #: ``(seed, epoch, batch)`` (:func:`step_key`); models draw their random masks with
    #: :func:`sgfd_fast.ops.row_dropout` from it, never from the global RNG, so every process of a
    #: distributed run draws the masks one process would.
    step_key: int = 0
    #: Share of the global batch's rows this process's :meth:`calculate_loss` sees (1.0 in one
    #: process). The trainer scales the loss by it and sums gradients over processes, which is
    #: exact for means over the batch's rows and for terms over the whole model; a term that
    #: SUMS over the batch's rows divides by it (MAML's hinge sum).
    shard_fraction: float = 1.0
    #: ``(users, items, negatives)`` of the whole global batch (None: the batch
    #: :meth:`calculate_loss` receives is the whole batch). A term that is neither a mean nor a
    #: sum over rows (a norm of the batch's rows) is computed by every process on this whole
    #: batch: scaled by the shard fractions, which sum to 1, the processes count it once.
    global_batch: tuple | None = None
    #: How the processes of a distributed run divide the step's whole-graph work
    #: (:class:`~sgfd_fast.models.split.RowSplit`, set by the trainer with :meth:`set_split`;
    #: None: this process computes all of it). Models propagate through :meth:`propagate`.
    split = None

    def __init__(self, dataset, config: dict):
        super().__init__()
        self.n_users = int(dataset.n_users)
        self.n_items = int(dataset.n_items)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- item features -----------------------------------------------------------------------

    def attach_features(self, features: ItemFeatures) -> ItemFeatures:
        """Register the item-feature seam under its ``state_name`` (its checkpoint-key prefix,
        ``sgfd`` or ``extractors``); :attr:`features` returns it."""
        setattr(self, features.state_name, features)
        self._features_name = features.state_name
        return features

    @property
    def features(self) -> ItemFeatures | None:
        """The item features this backbone consumes (None: a model without item features)."""
        name = self.__dict__.get("_features_name")
        return None if name is None else self._modules[name]

    @property
    def sgfd(self):
        """The :class:`~sgfd_fast.models.sgfd.SGFD` seam when the model distils, else None."""
        f = self.features
        return f if f is not None and f.distills else None

    @property
    def modalities(self) -> list[str]:
        """The item-feature modalities, in the order of the seam's ``j``."""
        f = self.features
        return [] if f is None else f.modalities

    def use_precision(self, precision: str) -> "Recommender":
        """Apply the config key ``precision`` (``choices.PRECISIONS``) to the built model, once:
        ``bf16`` sets every :class:`~sgfd_fast.models.heads.Linear` (the backbone's and SGFD's
        dense layers) to multiply in bf16 and the item-feature seam to hold its raw features in
        bfloat16 (:meth:`ItemFeatures.hold_bf16`); ``fp32`` changes nothing. Parameters,
        optimizer state, embedding tables, losses, norms and propagation stay float32.
        :func:`~sgfd_fast.models.build_model` calls it after construction, so constants the
        model derived from its features (kNN graphs, MAML's initial item embeddings) are those
        of the float32 features under either precision."""
        if precision == "bf16":
            for m in self.modules():
                if isinstance(m, Linear):
                    m.bf16 = True
            if self.features is not None:
                self.features.hold_bf16()
        return self

    def complete_state(self, state: dict) -> dict:
        """A checkpoint's model state (``state_dict`` form) completed with the entries this
        version added since it was written, as that version behaved without them (resume and
        ``load_run`` call it before checking that the state fits). Default: ``state`` as is."""
        return state

    # -- the training contract -----------------------------------------------------------------

    def begin_epoch(self, epoch: int, key: int) -> None:
        """Called before the first step of epoch ``epoch`` (from 0; also when a run resumes
        inside it), on every process; ``key``: an RNG key of the epoch (:func:`step_key` with
        batch -1), for per-epoch random choices. Default: nothing."""

    def begin_step(self, key: int, shard_fraction: float = 1.0,
                   global_batch: tuple | None = None) -> None:
        """Set the step context (:attr:`step_key`, :attr:`shard_fraction`,
        :attr:`global_batch`) before :meth:`calculate_loss`."""
        self.step_key, self.shard_fraction, self.global_batch = key, shard_fraction, global_batch

    def whole_batch(self, users, items, negatives) -> tuple:
        """:attr:`global_batch`, or ``(users, items, negatives)`` (the step's own batch) when the
        step runs in one process."""
        return self.global_batch if self.global_batch is not None else (users, items, negatives)

    def set_split(self, split) -> None:
        """Divide whole-graph work by row blocks under ``split`` (a
        :class:`~sgfd_fast.models.split.RowSplit`, or None for all of it here): the
        propagations (:meth:`propagate`) and SGFD's collapsed teacher. Every process must then
        run the same forward and backward (``models.split``)."""
        self.split = split
        if self.sgfd is not None:
            self.sgfd.split = split

    def propagate(self, graph: CSR, x: torch.Tensor, n_layers: int,
                  residual: int | None = None) -> torch.Tensor:
        """``graph.propagate(x, n_layers)`` (plus ``x``'s rows from row ``residual`` on), by row
        blocks across processes under :attr:`split` (:func:`sgfd_fast.models.split.propagate`;
        equal up to summation order)."""
        from .split import propagate

        return propagate(graph, x, n_layers, self.split, residual)

    def split_rows(self) -> list:
        """``[(parameter, n, offset), ...]``: the parameters whose gradient, under a split, is
        whole on this process's rows (``split.bounds(n)``, the parameter's row i being row
        ``offset + i`` of the n) and zero on the others, because they reach the loss only
        through the split's row-block work. The trainer updates those rows on their process and
        gathers them instead of summing the gradients (``training.distributed.sharded_adam``);
        ``tests/test_distributed.py`` checks every declaration. Default: SGFD's
        (:meth:`~sgfd_fast.models.sgfd.SGFD.split_rows`)."""
        return self.sgfd.split_rows() if self.sgfd is not None else []

    def split_local(self) -> list:
        """The parameters of :meth:`split_rows` that, under a split, no process reads outside its
        own rows: their other rows may be stale between steps, so the trainer skips their
        per-step broadcast and brings every row up to date only before something reads them
        whole (an unsplit step, the end of an epoch: ``ShardedAdam.sync``). Default: SGFD's
        (:meth:`~sgfd_fast.models.sgfd.SGFD.split_local`)."""
        return self.sgfd.split_local() if self.sgfd is not None else []

    def post_step(self) -> None:
        """Called after every optimizer step (MAML clips its embedding rows). Default: nothing."""

    def loss_output(self, total: torch.Tensor, parts: dict, extra: dict) -> dict:
        """What :meth:`calculate_loss` returns, from the backbone's weighted ``total``, its
        logged ``parts`` and the seam's extra losses (``features.losses(...)``, ``{}``
        without): ``{"loss": total + extra total, **parts, **extra}``, everything detached but
        ``"loss"`` and the extra total (``training.diagnostics`` measures its gradient)."""
        if extra:
            total = total + extra[EXTRA_TOTAL]
        parts = {**parts, **extra}
        return {"loss": total,
                **{k: v if k == EXTRA_TOTAL else v.detach() for k, v in parts.items()}}


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
        """Per-modality item features the backbone consumes, ``{modality: (n_items, D)}``, without
        gradient (``{}`` without item features)."""
        f = self.features
        return {} if f is None else f.student_features()
