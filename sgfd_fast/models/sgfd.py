"""SGFD: semantic-guided feature distillation, independent of the backbone.

Per modality m with raw item features F_m (n_items, d_m) (constants, never trained):

* teacher T_m: a stack of Linear layers with widths ``teacher_widths(d_m, D)`` and **no**
  activation in between (as released), then leaky-ReLU (if ``leaky``) and row-wise L2
  normalisation;
* student S_m: one Linear(d_m, D), leaky-ReLU (if ``leaky``), L2 normalisation. Only the student
  feeds the backbone;
* classifier C_m: Linear(D, K), shared by teacher and student of that modality.

Fusion head over all M modalities' teacher features (in ``modalities`` order):
``g = leaky_relu(Linear(M*D, D)([f^t_1; ...; f^t_M]))``, ``L_F = CE(Linear(D, K)(g), y)``.

Losses on a batch of item ids (a multiset: duplicates weigh more, as released), docs/RELEASED_CODE.md
§3.4-3.6, evaluated once per distinct item with its multiplicity as row weight (exact up to
rounding)::

    L = ce_weight * (mean_m CE_m + L_F) + kd_weight * (mean_m LD_m + mean_m FD_m)

with (CE_m, LD_m, FD_m) from ``sgfd_fast.ops.sgfd_loss`` in one of two flavours (docs/DESIGN.md §3.5):
``official`` = the released formulas (CE on softmax probabilities, L1 between tempered softmaxes,
MSE of unit features, nothing detached); ``standard`` = CE on logits, KL(teacher||student) of the
tempered softmaxes times tau^2 and feature MSE, both with the teacher detached.

Teacher layer rule (generalises the released ``decay_ration = 4`` rule so that every width works):
widths ``d, d//4, d//16, ...`` as long as they stay > D, then a final layer to D. Where the released
rule works (4096, 2048, 1024, 768, widths <= 4D divisible by 4) it builds the same layers; where it
crashes (a width not divisible by 4 along the chain: 1000, 4095, ...) ours floors and continues.
Widths <= 4D give a single layer, the same shape as the student.

The student's head is configurable (config keys ``student_activation``, ``student_norm``,
``student_init``; :mod:`.heads`), and so is the plain backbone's own extractor
(:class:`~sgfd_fast.models.features.Projection`), so that the head and the distillation can be
measured apart; ``auto`` keeps the released head.

Every head (teacher's last layer, student) runs through ``ops.feature_head`` (linear with a fused
bias/leaky-ReLU/L2 epilogue). Teacher, student and fusion layers are :class:`~.heads.Linear`: under
``precision: bf16`` their products (and the collapsed teacher's chain) run in bf16; the
classifiers, whose logits are the losses' inputs, stay float32.

``collapse_teacher``: the teacher is linear up to its activation, so ``W_L ... W_1 x + b`` is
evaluated as one product ``W x + b`` with ``(W, b) = ops.collapse_linear_stack(...)`` formed from
the layer parameters every step, whenever that costs fewer multiply-adds than the stack for the
batch's row count (``teacher_costs``; 4096->1024->256->128 collapses from ~210 rows up).
The parameters, the function and (up to rounding) the gradients are those of the stack; the cost
drops from ~d*d/4 to ~D*d multiply-adds per item (the 4096->1024 layer was 47% of a released
epoch, docs/RELEASED_CODE.md §12), hence ``collapse_teacher: true`` by default.

``t_decay`` (tau) is used as a float; the released BM3 casts it to int (same value for its
integer settings 5, 50, 100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..choices import SGFD_LOSSES
from ..errors import ConfigError, DataError
from .features import ItemFeatures
from .heads import NEGATIVE_SLOPE, Head, Linear, apply_head, init_head, resolve_head

__all__ = ["SGFD", "teacher_widths", "teacher_costs", "SHRINK"]

SHRINK = 4              # the released ``decay_ration``


def teacher_widths(d: int, dim: int, shrink: int = SHRINK) -> list[int]:
    """Layer widths ``[d, ..., dim]`` of the teacher stack for input width d (see module doc).

    Examples (dim 128): 4096 -> [4096, 1024, 256, 128]; 768 -> [768, 192, 128];
    384 -> [384, 128]; 1000 -> [1000, 250, 128]; 7 -> [7, 128].
    """
    widths, f = [d], d // shrink
    while f > dim:
        widths.append(f)
        f //= shrink
    return widths + [dim]


def teacher_costs(shapes, n_rows: int) -> tuple[int, int]:
    """Multiply-adds of one training step (forward + backward, inputs constant) of a linear stack
    with weight shapes ``shapes`` (application order, ``(out, in)``) on ``n_rows`` rows:
    ``(layer by layer, collapsed)``.

    Layer by layer: each layer's forward and weight gradient cost ``n·out·in``; every layer but
    the first also passes its input gradient on (``n·out·in``). Collapsed: the chain
    ``W_L ⋯ W_1`` multiplied from the output side (``Σ_k D·F_k·F_{k-1}``) and twice that in its
    backward, plus the head's forward and weight gradient, ``2·n·D·F_0``.
    """
    shapes = [tuple(map(int, s)) for s in shapes]
    stacked = sum((2 if k == 0 else 3) * n_rows * o * i for k, (o, i) in enumerate(shapes))
    dim = shapes[-1][0]
    chain = sum(dim * o * i for o, i in shapes[:-1])
    return stacked, 3 * chain + 2 * n_rows * dim * shapes[0][1]


class SGFD(ItemFeatures):
    """Teacher, student and classifier per modality plus the fusion head (see module doc): the
    SGFD kind of :class:`~sgfd_fast.models.features.ItemFeatures`, whose :meth:`student` feeds
    the backbone and whose :meth:`losses` are the SGFD losses.

    Args:
        features: ``{modality: (n_items, d_m) float tensor}``, one or more modalities.
        labels: (n_items,) int64 category per item in ``[0, n_labels)``.
        dim: D, the feature width the backbone consumes.
        leaky: leaky-ReLU on teacher and student outputs (BM3 yes, GRCN no).
        student: the student's head; None: the released one (leaky-ReLU as ``leaky``, L2,
            ``nn.Linear``'s initialisation).
        tau, ce_weight, kd_weight, flavour, collapse_teacher: see module doc.
    """

    state_name = "sgfd"
    distills = True
    #: a :class:`~sgfd_fast.models.split.RowSplit` dividing the collapse between processes
    #: (set by ``Recommender.set_split``), or None
    split = None

    def __init__(self, features: dict, labels: torch.Tensor, n_labels: int, dim: int, *,
                 leaky: bool = True, tau: float = 50.0, ce_weight: float = 0.1,
                 kd_weight: float = 0.01, flavour: str = "official",
                 collapse_teacher: bool = True, student: Head | None = None):
        if not features:
            raise DataError("SGFD needs at least one item feature modality")
        if flavour not in SGFD_LOSSES:
            raise ConfigError(f"sgfd_loss must be one of {list(SGFD_LOSSES)}, got {flavour!r}")
        if n_labels < 1:
            raise DataError("SGFD needs item category labels (n_labels >= 1)")
        super().__init__(features)
        self.dim, self.n_labels = int(dim), int(n_labels)
        self.slope = NEGATIVE_SLOPE if leaky else None
        self.student_head = student if student is not None else Head(self.slope, True, "pytorch")
        self.tau, self.ce_weight, self.kd_weight = float(tau), float(ce_weight), float(kd_weight)
        self.flavour, self.collapse_teacher = flavour, bool(collapse_teacher)
        # constants: not saved in checkpoints (they come with the dataset), moved by .to()
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long), persistent=False)
        self.teachers = nn.ModuleList()
        self.students = nn.ModuleList()
        self.classifiers = nn.ModuleList()
        for j in range(len(self.modalities)):
            d = self.feature(j).shape[1]
            widths = teacher_widths(d, self.dim)
            self.teachers.append(nn.Sequential(*(Linear(a, b)
                                                 for a, b in zip(widths, widths[1:]))))
            self.students.append(Linear(d, self.dim))
            self.classifiers.append(nn.Linear(self.dim, self.n_labels))
        self.fusion = Linear(len(self.modalities) * self.dim, self.dim)
        self.fusion_classifier = nn.Linear(self.dim, self.n_labels)
        for layer in self.students:  # after every other draw: the released draws stay the same
            init_head(layer, self.student_head.init)

    @classmethod
    def from_config(cls, features: dict, labels, n_labels: int, config: dict, *,
                    leaky: bool) -> "SGFD":
        """Build from the resolved flat config (``embedding_size``, ``t_decay``, ``ce_weight``,
        ``kd_weight``, ``sgfd_loss``, ``collapse_teacher``, ``student_*``)."""
        student = resolve_head(config, activation="leaky_relu" if leaky else "identity",
                               norm="l2", init="pytorch")
        return cls(features, labels, n_labels, config["embedding_size"], leaky=leaky,
                   tau=config["t_decay"], ce_weight=config["ce_weight"],
                   kd_weight=config["kd_weight"], flavour=config["sgfd_loss"],
                   collapse_teacher=config["collapse_teacher"], student=student)

    def width(self, j):
        return self.dim

    def student(self, j: int, items: torch.Tensor | None = None, *,
                x: torch.Tensor | None = None) -> torch.Tensor:
        """Student features of modality j for ``items`` (all items when None), (n, D); ``x``:
        the rows already gathered by :meth:`rows`."""
        x = self.rows(j, items) if x is None else x
        return apply_head(x, self.students[j], self.student_head)

    def teacher(self, j: int, items: torch.Tensor | None = None, *,
                x: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher features of modality j for ``items`` (all items when None), (n, D); ``x``:
        the rows already gathered by :meth:`rows`.

        With ``collapse_teacher`` the stack runs in whichever GEMM order costs fewer
        multiply-adds for these n rows (:func:`teacher_costs`): collapsed for a batch's ~10³
        rows, layer by layer for a few rows."""
        x = self.rows(j, items) if x is None else x
        layers = list(self.teachers[j])
        if self.collapse_teacher and len(layers) > 1:
            stacked, collapsed = teacher_costs([l.weight.shape for l in layers], x.shape[0])
            # under a split every process collapses (the choice must not depend on its rows)
            if self.split is not None or collapsed < stacked:
                w, b = self._collapse(layers)
                return ops.feature_head(x, w, b, self.slope)
        for layer in layers[:-1]:
            x = layer(x)
        if self.bf16:  # the last product in bf16 too (ops.feature_head: by x's dtype)
            x = x.to(torch.bfloat16)
        return ops.feature_head(x, layers[-1].weight, layers[-1].bias, self.slope)

    def _collapse(self, layers) -> tuple[torch.Tensor, torch.Tensor]:
        """``ops.collapse_linear_stack`` of the teacher's layers. Under :attr:`split` each process
        takes its block K of the first layer's outputs (``split.bounds(F_1)``): its part
        ``C[:, K] W_1[K]`` of W, with the chain ``C = W_L ⋯ W_2`` on K's columns only
        (~D*F_1*d/W multiply-adds), and ``C[:, K] b_1[K]`` of b; the parts are summed over the
        processes (one ``RowSplit.sum``) and the rest of b, ``W_L ⋯ W_3 b_2 + ... + b_L`` (matrix
        times vector), added. The gradients of ``W_1[K]`` and ``b_1[K]`` are then whole on
        their owner (:meth:`split_rows`)."""
        weights, biases = [l.weight for l in layers], [l.bias for l in layers]
        if self.split is None:
            return ops.collapse_linear_stack(weights, biases, bf16=self.bf16)
        lo, hi = self.split.bounds(weights[0].shape[0])
        w, b = ops.collapse_linear_stack(
            [self.split.own_rows(weights[0]), weights[1][:, lo:hi], *weights[2:]],
            [self.split.own_rows(biases[0])] + [None] * (len(layers) - 1), bf16=self.bf16)
        rest = biases[1]
        for wi, bi in zip(weights[2:], biases[2:]):
            rest = F.linear(rest, wi, bi)
        # one collective for both parts, forward and backward
        wb = self.split.sum(torch.cat([w.reshape(-1), b]))
        return wb[:w.numel()].view_as(w), wb[w.numel():] + rest

    def split_rows(self) -> list:
        """``(parameter, n, offset)`` of the parameters whose gradient under a split is whole on
        this process's rows of ``n`` (``models.base.Recommender.split_rows``): each multi-layer
        teacher's first layer, when it collapses (:meth:`_collapse`)."""
        if not self.collapse_teacher:
            return []
        return [(p, t[0].weight.shape[0], 0) for t in self.teachers if len(t) > 1
                for p in (t[0].weight, t[0].bias)]

    def split_local(self) -> list:
        """The parameters of :meth:`split_rows` read only on their own rows under a split (all
        of them: :meth:`_collapse` reads ``W_1[K]`` and ``b_1[K]`` alone, and under a split
        :meth:`teacher` always collapses), ``Recommender.split_local``."""
        return [p for p, _, _ in self.split_rows()]

    def losses(self, item_ids: torch.Tensor, students: list | None = None,
               features: list | None = None) -> dict:
        """SGFD losses on a batch of item ids (duplicates count).

        Teacher, student, fusion and the losses run once per distinct item, each weighted by its
        number of occurrences (``ops.sgfd_loss``'s ``row_weight``, a weighted fusion CE), so the
        result equals the released per-row computation over the B ids up to rounding.

        Args:
            item_ids: (B,) int64.
            students: optional per-modality student features of ``torch.unique(item_ids)``
                (sorted), when the backbone has computed them already.
            features: optional per-modality raw feature rows of the same items
                (:meth:`rows`), when the backbone has gathered them already.

        Returns:
            ``{"sgfd": weighted total, "sgfd_ce": mean_m CE_m, "sgfd_fusion": L_F,
            "sgfd_ld": mean_m LD_m, "sgfd_fd": mean_m FD_m}``.
        """
        uniq, inv = torch.unique(item_ids, return_inverse=True)
        y = self.labels[uniq]
        counts = torch.bincount(inv, minlength=uniq.numel()).to(self.fusion.weight.dtype)
        ce = ld = fd = 0.0
        teachers = []
        for j in range(len(self.modalities)):
            x = features[j] if features is not None else self.rows(j, uniq)
            f_t = self.teacher(j, x=x)
            f_s = students[j] if students is not None else self.student(j, x=x)
            teachers.append(f_t)
            c = self.classifiers[j]
            ce_j, ld_j, fd_j = ops.sgfd_loss(f_t, f_s, c.weight, c.bias, y, self.tau, self.flavour,
                                             row_weight=counts, validate=False)
            ce, ld, fd = ce + ce_j, ld + ld_j, fd + fd_j
        n = len(self.modalities)
        ce, ld, fd = ce / n, ld / n, fd / n
        g = F.leaky_relu(self.fusion(torch.cat(teachers, dim=1)), NEGATIVE_SLOPE)
        fusion = (F.cross_entropy(self.fusion_classifier(g), y, reduction="none") @ counts
                  / item_ids.numel())
        total = self.ce_weight * (ce + fusion) + self.kd_weight * (ld + fd)
        return {"sgfd": total, "sgfd_ce": ce, "sgfd_fusion": fusion, "sgfd_ld": ld, "sgfd_fd": fd}

