"""Whole-graph work of a step divided between the processes of a distributed run, exactly.

Under torchrun (``sgfd_fast.training.distributed``) every rank trains the same model on its share of
each global batch. What a step computes for the whole graph or for all items (the propagation
``mean_l Â^l x``, the collapsed SGFD teacher) does not depend on the batch: without a split every
rank repeats it. With a :class:`RowSplit` (``Recommender.split``, set by the trainer) rank r of W
computes only its contiguous block of rows (``shard_bounds``) and the blocks are all-gathered, so
every rank holds the same full result while doing 1/W of the work.

Gradients. Each rank backpropagates its own shard's loss, and the trainer sums the parameter
gradients over ranks. A gathered tensor y = [y_0; ...; y_{W-1}] is used by every rank's loss, so
the gradient of the total loss with respect to rank r's block y_r is the sum over ranks of their
gradients with respect to y_r: :func:`RowSplit.gather`'s backward all-reduces the incoming gradient
and keeps the block's rows (an all-reduce rather than a reduce-scatter: gloo has no
reduce-scatter). Whatever the block depends on then receives its share of the gradient on its
owner only, and the trainer's gradient all-reduce adds the shares: the step's gradients equal the
one-process gradients up to summation order. Every rank must therefore run the same sequence of
split calls, forward and backward (the trainer runs the split only on steps where every rank has
rows of the batch, and evaluation joins the forward on every rank).

``torch.distributed`` is imported only when a split is built (a plain run never builds one).
"""

from __future__ import annotations

import torch

from .. import ops
from ..graph import CSR

__all__ = ["RowSplit", "bounds", "gather", "rows_of", "propagate"]


def _bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    # the trainer's shard_bounds: contiguous, sizes differ by <= 1
    return n * rank // world, n * (rank + 1) // world


class _Gather(torch.autograd.Function):
    """All-gather of row blocks (sizes differing by <= 1) into the full tensor; backward: the
    all-reduced gradient's rows of this rank's block (module doc)."""

    @staticmethod
    def forward(ctx, block, split, n):
        dist, w = split.dist, split.world
        lo, hi = split.bounds(n)
        width = -(-n // w)  # blocks padded to the largest: gloo's all_gather wants equal sizes
        padded = block.new_zeros(width, *block.shape[1:])
        padded[:hi - lo] = block
        parts = [torch.empty_like(padded) for _ in range(w)]
        dist.all_gather(parts, padded, group=split.group)
        split.sent += padded.numel() * padded.element_size() * (w - 1)
        ctx.split, ctx.n = split, n
        return torch.cat([p[:b - a] for p, (a, b) in
                          zip(parts, (split.bounds(n, r) for r in range(w)))])

    @staticmethod
    def backward(ctx, grad):
        split = ctx.split
        grad = grad.contiguous().clone()
        split.dist.all_reduce(grad, group=split.group)
        split.sent += 2 * grad.numel() * grad.element_size() * (split.world - 1) // split.world
        lo, hi = split.bounds(ctx.n)
        return grad[lo:hi], None, None


class RowSplit:
    """Rank ``rank`` of ``world`` computes rows ``shard_bounds(n, rank, world)`` of whole-graph
    work and :meth:`gather` assembles them (module doc).

    Attributes:
        sent: bytes this rank has sent through the split's collectives (an estimate for the ring
            algorithms: ``(W-1)/W`` of an all-reduce twice, ``W-1`` blocks of an all-gather);
            the scale benchmark reads it.
    """

    def __init__(self, rank: int, world: int, group=None):
        import torch.distributed as dist

        self.dist, self.rank, self.world, self.group = dist, int(rank), int(world), group
        self.sent = 0
        self._blocks: dict = {}

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """``[lo, hi)`` of ``rank``'s (default: this rank's) block of ``n`` rows."""
        return _bounds(n, self.rank if rank is None else rank, self.world)

    def gather(self, block: torch.Tensor, n: int) -> torch.Tensor:
        """The (n, ...) tensor whose rows :meth:`bounds` of every rank are that rank's ``block``
        (differentiable; every rank must call it)."""
        return _Gather.apply(block, self, n)

    def rows_of(self, graph: CSR) -> CSR:
        """This rank's row block of ``graph`` (cached per graph object: a model's graph is a
        constant, FREEDOM's per-epoch sampled graph changes once an epoch)."""
        hit = self._blocks.get(id(graph))
        if hit is None or hit[0] is not graph:
            lo, hi = self.bounds(graph.n_rows)
            rows = torch.arange(lo, hi, device=graph.device)
            hit = (graph, graph.select_rows(rows))
            if len(self._blocks) >= 4:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[id(graph)] = hit
        return hit[1]


def bounds(split: RowSplit | None, n: int) -> tuple[int, int]:
    """This rank's block ``[lo, hi)`` of n rows; ``(0, n)`` without a split."""
    return (0, n) if split is None else split.bounds(n)


def gather(split: RowSplit | None, block: torch.Tensor, n: int) -> torch.Tensor:
    """:meth:`RowSplit.gather`; the block itself (all n rows) without a split."""
    return block if split is None else split.gather(block, n)


def rows_of(split: RowSplit | None, graph: CSR) -> CSR:
    """:meth:`RowSplit.rows_of`; the whole graph without a split."""
    return graph if split is None else split.rows_of(graph)


def propagate(graph: CSR, x: torch.Tensor, n_layers: int, split: RowSplit | None) -> torch.Tensor:
    """``graph.propagate(x, n_layers)`` (the mean of ``x, Âx, ..., Â^L x``, Â symmetric, x
    (N, d)), by row blocks under ``split``: each rank multiplies its rows of Â (``spmm_csr``)
    and the layers are gathered between layers; the layer mean is taken on the block and
    gathered last (L gathers of (N, d) per forward, L all-reduces per backward). Without a split
    (or L = 0) it is ``graph.propagate``."""
    if split is None or n_layers == 0:
        return graph.propagate(x, n_layers)
    block = split.rows_of(graph)
    n = x.shape[0]
    lo, hi = split.bounds(n)
    layer, total = x, x[lo:hi]
    for k in range(n_layers):
        out = ops.spmm_csr(block.rowptr, block.col, block.val, layer,
                           transpose=block.transpose(), validate=False)
        total = total + out
        if k < n_layers - 1:
            layer = split.gather(out, n)
    return split.gather(total / (n_layers + 1), n)
