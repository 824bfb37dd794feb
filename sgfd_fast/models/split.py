"""Whole-graph work of a step divided between the processes of a distributed run, exactly.

Under torchrun (``sgfd_fast.training.distributed``) every rank trains the same model on its share of
each global batch. What a step computes for the whole graph or for all items (the propagation
``mean_l Â^l x``, the collapsed SGFD teacher) does not depend on the batch: without a split every
rank repeats it. With a :class:`RowSplit` (``Recommender.split``, set by the trainer) rank r of W
computes only its contiguous block of rows (``shard_bounds``) and the blocks are gathered (one
broadcast per rank's block), so every rank holds the same full result while doing 1/W of the
work; work whose parts add up (the collapsed teacher, by blocks of its first layer's outputs) is
summed (:meth:`RowSplit.sum`).

Gradients. Each rank backpropagates its own shard's loss, and the trainer sums the parameter
gradients over ranks. A gathered tensor y = [y_0; ...; y_{W-1}] is used by every rank's loss, so
the gradient of the total loss with respect to rank r's block y_r is the sum over ranks of their
gradients with respect to y_r: :func:`RowSplit.gather`'s backward all-reduces the incoming gradient
and keeps the block's rows (an all-reduce rather than a reduce-scatter: gloo has no
reduce-scatter). Whatever the block depends on then receives its share of the gradient on its
owner only, and the trainer's gradient reduction adds the shares: the step's gradients equal the
one-process gradients up to summation order. The propagation goes further (:func:`propagate`):
Â is symmetric, so its backward is the same row-block map applied to the summed gradient, and
each rank ends with the whole gradient of x on its own rows (zeros elsewhere); a parameter that
reaches the loss only that way needs no gradient reduction at all, its rows being updated where
they are computed (``Recommender.split_rows``, ``training.distributed.ShardedAdam``). Every rank
must therefore run the same sequence of split calls, forward and backward (the trainer runs the
split only on steps where every rank has rows of the batch, and evaluation joins the forward on
every rank).

Sparse gradients (BM3, ``models.bm3._Encode``). Gathering y and all-reducing its dense (N, d)
gradient moves every row twice per layer, though a step's loss often reads few rows of y. BM3's
reads the batch's rows and the Frobenius norms of its two halves: every rank then computes the
whole y = M x (M = mean_l Â^l plus the residual, symmetric) itself, without communication (one
fused product; on gloo the gather of a row block costs more CPU than computing it), and the
gradient of the total loss with respect to y is G = c · y / ||y|| on each half (c: the ranks'
gradients of the norm, summed) plus the sum of the ranks' gradients on the rows they read.
:meth:`RowSplit.all_rows` exchanges those rows (ids and values, ~10^3 rows instead of N) and the
scalars c in one all-gather; every rank then assembles the same G, and the gradient of x, M G,
is propagated by each rank on its own rows only (:meth:`RowSplit.propagate_rows`): again the
whole gradient of x on its rows and zeros elsewhere, as above, equal to one process's up to
summation order.

``torch.distributed`` is imported only when a split is built (a plain run never builds one).
"""

from __future__ import annotations

import math

import torch

from .. import ops
from ..graph import CSR

__all__ = ["RowSplit", "bounds", "gather", "rows_of", "propagate"]


def _bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    # the trainer's shard_bounds: contiguous, sizes differ by <= 1
    return n * rank // world, n * (rank + 1) // world


def _gather_blocks(split, block: torch.Tensor, n: int) -> torch.Tensor:
    """The (n, ...) tensor of every rank's row block (``split.bounds``), as one broadcast per
    rank into the rows of one output: no padding and no concatenation, and on gloo a third of
    the CPU time of ``all_gather`` (``bench/bench_scale.py``'s collectives table)."""
    out = block.new_empty(n, *block.shape[1:])
    lo, hi = split.bounds(n)
    out[lo:hi] = block
    split.broadcast_rows(out)
    split.sent += block.numel() * block.element_size() * (split.world - 1)
    return out


def _all_reduce(split, x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks, in a new tensor (``x`` itself may be autograd's)."""
    x = x.contiguous().clone()
    split.dist.all_reduce(x, group=split.group)
    split.sent += 2 * x.numel() * x.element_size() * (split.world - 1) // split.world
    return x


class _Gather(torch.autograd.Function):
    """Gather of row blocks (sizes differing by <= 1) into the full tensor; backward: the
    all-reduced gradient's rows of this rank's block (module doc)."""

    @staticmethod
    def forward(ctx, block, split, n):
        ctx.split, ctx.n = split, n
        return _gather_blocks(split, block, n)

    @staticmethod
    def backward(ctx, grad):
        lo, hi = ctx.split.bounds(ctx.n)
        return _all_reduce(ctx.split, grad)[lo:hi], None, None


class _Sum(torch.autograd.Function):
    """Sum over the ranks of each rank's partial result; backward: the gradient summed over the
    ranks (every rank's loss uses the sum, so each partial receives the total gradient)."""

    @staticmethod
    def forward(ctx, part, split):
        ctx.split = split
        return _all_reduce(split, part)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(ctx.split, grad), None


def _block_propagate(split, block: CSR, x: torch.Tensor, n_layers: int,
                     residual: int | None) -> torch.Tensor:
    """This rank's rows of ``mean_l Â^l x`` (+ ``x``'s rows from ``residual`` on), x (N, d) whole:
    its rows of Â times each layer, the layers gathered between layers."""
    n = x.shape[0]
    lo, hi = split.bounds(n)
    layer, total = x, x[lo:hi]
    for k in range(n_layers):
        out = ops.spmm_csr(block.rowptr, block.col, block.val, layer,
                           transpose=block.transpose(), validate=False)
        total = total + out
        if k < n_layers - 1:
            layer = _gather_blocks(split, out, n)
    total = total / (n_layers + 1)
    if residual is not None and hi > residual:
        total[max(lo, residual) - lo:] += x[max(lo, residual):hi]
    return total


class _Propagate(torch.autograd.Function):
    """y = mean_l Â^l x (+ x's rows from ``residual`` on) by row blocks (module doc). Â is
    symmetric, so the gradient of x is the same map applied to the gradient of y: once the
    ranks' gradients of y are summed (G), each rank computes its rows of the map on G and
    returns them, zeros elsewhere. That is the whole gradient of x on its rows, not a share of
    it: a parameter that reaches the loss only through x is exact on this rank's rows
    (``Recommender.split_rows``)."""

    @staticmethod
    def forward(ctx, x, block, n_layers, split, residual):
        ctx.args = block, n_layers, split, residual
        return _gather_blocks(split, _block_propagate(split, block, x, n_layers, residual),
                              x.shape[0])

    @staticmethod
    def backward(ctx, grad):
        block, n_layers, split, residual = ctx.args
        g = _all_reduce(split, grad)
        lo, hi = split.bounds(g.shape[0])
        out = torch.zeros_like(g)
        out[lo:hi] = _block_propagate(split, block, g, n_layers, residual)
        return out, None, None, None, None


def held(buffer: torch.Tensor) -> bool:
    """Whether a tensor other than ``buffer`` itself (a view handed out as a gradient) still
    uses its memory (torch's private ``_storage_Use_Count``); True when torch cannot tell, so
    that the caller then allocates afresh."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    # the count includes the temporary storage object of this call
    return count is None or count(buffer.untyped_storage()._cdata) > 2


class _OwnRows(torch.autograd.Function):
    """``param[lo:hi]``; backward: ``param``'s gradient, ``grad`` on those rows and zeros
    elsewhere, in a buffer kept across steps (:meth:`RowSplit.own_rows`)."""

    @staticmethod
    def forward(ctx, param, lo, hi, split):
        ctx.args = param, lo, hi, split
        return param[lo:hi]

    @staticmethod
    def backward(ctx, grad):
        param, lo, hi, split = ctx.args
        buf = split._grads.get(id(param))
        if (buf is None or buf.shape != param.shape or buf.dtype != grad.dtype
                or buf.device != grad.device or held(buf)):
            buf = split._grads[id(param)] = grad.new_zeros(param.shape)
        buf[lo:hi] = grad  # the other rows: zero since the buffer was made
        # a view: AccumulateGrad takes a tensor nothing else refers to as .grad without a copy
        return buf.view_as(buf), None, None, None


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
        self._grads: dict = {}  # id(parameter) -> its gradient buffer (own_rows)

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """``[lo, hi)`` of ``rank``'s (default: this rank's) block of ``n`` rows."""
        return _bounds(n, self.rank if rank is None else rank, self.world)

    def broadcast_rows(self, x: torch.Tensor, n: int | None = None, offset: int = 0) -> None:
        """Fill ``x``'s rows from every rank's block, in place: rank r broadcasts rows
        ``bounds(n, r)`` (shifted by ``-offset``, clipped to ``x``'s rows) to the others.
        ``n``: the rows the blocks divide (default ``x.shape[0]``), ``x`` holding rows
        ``[offset, offset + len(x))`` of them (a parameter that is a part of the split rows)."""
        n = x.shape[0] if n is None else n
        for r in range(self.world):
            a, b = (min(max(v - offset, 0), x.shape[0]) for v in self.bounds(n, r))
            if b > a:
                self.dist.broadcast(x[a:b], src=r, group=self.group)

    def sum(self, part: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks of each rank's ``part`` (differentiable: backward sums the
        gradient; every rank must call it)."""
        return _Sum.apply(part, self)

    def gather(self, block: torch.Tensor, n: int) -> torch.Tensor:
        """The (n, ...) tensor whose rows :meth:`bounds` of every rank are that rank's ``block``
        (differentiable; every rank must call it)."""
        return _Gather.apply(block, self, n)

    def all_rows(self, index: torch.Tensor, values: torch.Tensor, capacity: int,
                 sums: torch.Tensor | None = None) -> tuple:
        """Every rank's ``(index, values)`` concatenated in rank order: ``index`` (k,) int64 row
        ids and ``values`` (k, ...) their rows here (float32/float64/bfloat16), (sum of k, ...)
        returned; a sparse exchange of rows where a dense all-reduce would move every row. With
        ``sums`` (a few float values), also their sum over the ranks (in rank order, float64,
        returned in ``sums``' dtype). Not differentiable; every rank must call it, with the same
        ``capacity``: an upper bound of every rank's k.

        One collective: an all-gather of each rank's message, its count, sums, ids and rows as
        bytes padded to ``capacity`` rows (on gloo over loopback even an 8-byte collective
        takes about 0.4 ms, docs/BENCHMARKS.md; bytes are gathered, never computed with).

        Raises:
            ValueError: k above ``capacity``."""
        k = index.numel()
        if k > capacity:
            raise ValueError(f"all_rows: {k} rows exceed the capacity {capacity}")
        extra = sums.reshape(-1).double() if sums is not None else \
            torch.zeros(0, dtype=torch.float64, device=index.device)
        head = torch.cat([extra.new_tensor([k]), extra])
        width = math.prod(values.shape[1:]) * values.element_size()  # bytes per row
        at_ids = head.numel() * 8
        at_rows = at_ids + capacity * 8
        msg = torch.empty(at_rows + capacity * width, dtype=torch.uint8, device=index.device)
        msg[:at_ids] = head.view(torch.uint8)
        msg[at_ids:at_ids + k * 8] = index.to(torch.int64).contiguous().view(torch.uint8)
        msg[at_rows:at_rows + k * width] = values.contiguous().reshape(-1).view(torch.uint8)
        parts = [torch.empty_like(msg) for _ in range(self.world)]
        self.dist.all_gather(parts, msg, group=self.group)
        self.sent += (self.world - 1) * msg.numel()
        heads = [m[:at_ids].view(torch.float64) for m in parts]
        counts = [int(h[0]) for h in heads]
        ids = torch.cat([m[at_ids:at_ids + c * 8].view(torch.int64)
                         for m, c in zip(parts, counts)])
        rows = torch.cat([m[at_rows:at_rows + c * width] for m, c in zip(parts, counts)])
        rows = rows.view(values.dtype).view(-1, *values.shape[1:])
        if sums is None:
            return ids, rows
        total = heads[0][1:].clone()
        for h in heads[1:]:
            total += h[1:]
        return ids, rows, total.to(sums.dtype).view_as(sums)

    def propagate_rows(self, graph: CSR, x: torch.Tensor, n_layers: int, out: torch.Tensor,
                       residual: int | None = None) -> torch.Tensor:
        """This rank's rows (:meth:`bounds`) of ``propagate(graph, x, n_layers, None,
        residual)`` for an ``x`` (N, d) whole on every rank, written into ``out`` ((N, d),
        contiguous, not overlapping x), whose other rows are set to 0; returns ``out``. Not
        differentiable; every rank must call it.

        L = 1: one call of the fused kernel (``ops.propagate``, no temporaries) on the block's
        rows of Â held as an (N, N) matrix whose other rows are empty: it writes the block's
        rows of ``(x + Âx) / 2`` and, on the other rows, ``x / 2`` (then zeroed). L >= 2: the
        block's rows of Â times each layer, the layers gathered between layers (L - 1
        gathers)."""
        n = x.shape[0]
        lo, hi = self.bounds(n)
        if n_layers == 1:
            block = self._block(graph)[2]
            ops.propagate(block.rowptr, block.col, block.val, x, 1, validate=False, out=out)
            if residual is not None and hi > residual:
                out[max(lo, residual):hi] += x[max(lo, residual):hi]
        else:
            out[lo:hi] = _block_propagate(self, self.rows_of(graph), x, n_layers, residual)
        out[:lo] = 0
        out[hi:] = 0
        return out

    def own_rows(self, param: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """``param``'s rows :meth:`bounds` (of ``n``, default its row count), differentiable:
        the gradient, that of the rows and zeros elsewhere, is written into a (param.shape)
        buffer kept across steps (its zeros written once) instead of a zero-filled tensor made
        per call as slicing's backward does (16 MiB a step for SGFD's 4096 x 1024 teacher
        layer). A buffer still in use (a gradient kept from the last step) is not reused."""
        lo, hi = self.bounds(param.shape[0] if n is None else n)
        return _OwnRows.apply(param, lo, hi, self)

    def rows_of(self, graph: CSR) -> CSR:
        """This rank's row block of ``graph`` (cached per graph object: a model's graph is a
        constant, FREEDOM's per-epoch sampled graph changes once an epoch)."""
        return self._block(graph)[1]

    def _block(self, graph: CSR) -> tuple:
        """``(graph, its rows bounds(n_rows), the same as an (n_rows, n_cols) CSR whose other
        rows are empty)``, cached per graph object (:meth:`rows_of`)."""
        hit = self._blocks.get(id(graph))
        if hit is None or hit[0] is not graph:
            lo, hi = self.bounds(graph.n_rows)
            rows = graph.select_rows(torch.arange(lo, hi, device=graph.device))
            pad = rows.rowptr.new_full((graph.n_rows - hi,), rows.nnz)
            padded = CSR(torch.cat([rows.rowptr.new_zeros(lo), rows.rowptr, pad]), rows.col,
                         rows.val, graph.n_cols, validate=False)
            hit = (graph, rows, padded)
            if len(self._blocks) >= 4:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[id(graph)] = hit
        return hit


def bounds(split: RowSplit | None, n: int) -> tuple[int, int]:
    """This rank's block ``[lo, hi)`` of n rows; ``(0, n)`` without a split."""
    return (0, n) if split is None else split.bounds(n)


def gather(split: RowSplit | None, block: torch.Tensor, n: int) -> torch.Tensor:
    """:meth:`RowSplit.gather`; the block itself (all n rows) without a split."""
    return block if split is None else split.gather(block, n)


def rows_of(split: RowSplit | None, graph: CSR) -> CSR:
    """:meth:`RowSplit.rows_of`; the whole graph without a split."""
    return graph if split is None else split.rows_of(graph)


def propagate(graph: CSR, x: torch.Tensor, n_layers: int, split: RowSplit | None,
              residual: int | None = None) -> torch.Tensor:
    """``graph.propagate(x, n_layers)`` (the mean of ``x, Âx, ..., Â^L x``, Â symmetric, x
    (N, d)), plus ``x``'s rows from row ``residual`` on when given (BM3's item-ID residual).

    Under ``split``, by row blocks: each rank multiplies its rows of Â (``spmm_csr``), the
    layers are gathered between layers and the result last (L gathers of (N, d) per forward);
    the backward all-reduces the gradient of the result once and applies the same map to it by
    row blocks (L - 1 gathers), leaving each rank the exact gradient of x on its rows and zeros
    elsewhere (:class:`_Propagate`). Without a split, or without a gradient to propagate
    (evaluation: every rank computes all rows, no communication), it is ``graph.propagate``."""
    if split is None or not (torch.is_grad_enabled() and x.requires_grad):
        # without a gradient (evaluation) each rank computes all rows: on gloo the whole
        # product costs less CPU than its row block and the gather (docs/BENCHMARKS.md)
        y = graph.propagate(x, n_layers)  # a new tensor, not saved for its backward
        if residual is not None:
            y[residual:] += x[residual:]
        return y
    return _Propagate.apply(x, split.rows_of(graph), n_layers, split, residual)
