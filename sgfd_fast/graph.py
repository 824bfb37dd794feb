"""Graph objects: a CSR matrix that owns its index/value tensors and caches its transpose.

Ops take plain dense tensors (rowptr, col, val), never torch sparse tensors: views into a
sparse tensor break ``torch.compile``'s fake-tensor tracing (docs/DEVELOPING.md, "Rules the pattern relies on").
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

import numpy as np
import torch

from . import _backend, _ext, ops
from .errors import InputError

__all__ = ["CSR", "normalized_bipartite", "normalized_bipartite_reference"]


@dataclass(eq=False)
class CSR:
    """An (n_rows, n_cols) sparse matrix in CSR form, validated once at construction.

    Attributes:
        rowptr: (n_rows + 1,) offsets; col: (nnz,) column ids (sorted within a row); both int64,
            or both int32. val: (nnz,) float weights or None (unit weights); symmetric: whether
            A == Aᵀ.
        validate: check offsets and column ranges (one pass over the indices); code that builds a
            valid CSR itself (``from_coo``, ``select_rows``, ``apply``, the graph builders) passes
            False.

    Build one with :meth:`from_coo` (or :func:`normalized_bipartite` for the model graph) and take
    a subset of rows with :meth:`select_rows`; nothing else assembles CSR arrays by hand.
    """

    rowptr: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor | None
    n_cols: int
    symmetric: bool = False
    _transpose: tuple | None = field(default=None, repr=False)
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool):
        ops._common.check_csr("CSR", self.rowptr, self.col, self.val, self.n_cols,
                              validate_values=validate)
        if self.symmetric and self.n_rows != self.n_cols:
            raise InputError(f"a symmetric CSR must be square, got {self.n_rows}x{self.n_cols}")

    @property
    def n_rows(self) -> int:
        return self.rowptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.col.device

    @classmethod
    def from_coo(cls, rows, cols, vals, n_rows: int, n_cols: int, symmetric: bool = False, *,
                 duplicates: str = "error", index_dtype: torch.dtype = torch.int64) -> "CSR":
        """Build from COO triplets in any order, sorting by (row, col): the one CSR builder.

        Args:
            rows, cols: (nnz,) integer ids (tensors, arrays or lists) in ``[0, n_rows)`` and
                ``[0, n_cols)``; e.g. ``pairs[:, 0], pairs[:, 1]`` of [user, item] interactions.
            vals: (nnz,) values or None (unit weights), reordered with the indices.
            n_rows, n_cols: the matrix shape; symmetric: see the class.
            duplicates: ``"error"`` rejects a repeated (row, col); ``"drop"`` keeps its first
                occurrence (for sets, such as a user's known items).
            index_dtype: ``torch.int64`` or ``torch.int32`` for ``rowptr`` and ``col``.

        Returns:
            A CSR on the CPU (``.to(device)`` moves it), columns ascending within every row.

        Raises:
            InputError: rows and cols differ in length or are not integers, an id is out of
                range, or (``duplicates="error"``) a (row, col) repeats.
        """
        rows, cols = torch.as_tensor(rows).reshape(-1), torch.as_tensor(cols).reshape(-1)
        if rows.numel() != cols.numel():
            raise InputError(f"CSR.from_coo: rows ({rows.numel()}) and cols ({cols.numel()}) "
                             "must have one entry per nonzero")
        if any(t.is_floating_point() or t.is_complex() or t.dtype == torch.bool
               for t in (rows, cols)):
            raise InputError(f"CSR.from_coo: rows and cols must hold integer ids, got "
                             f"{rows.dtype} and {cols.dtype}")
        if duplicates not in ("error", "drop"):
            raise InputError(f"CSR.from_coo: duplicates must be 'error' or 'drop', got "
                             f"{duplicates!r}")
        if index_dtype not in (torch.int32, torch.int64):
            raise InputError(f"CSR.from_coo: index_dtype must be torch.int32 or torch.int64, got "
                             f"{index_dtype}")
        rows, cols = rows.long(), cols.long()
        for name, ids, bound in (("row", rows, n_rows), ("column", cols, n_cols)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= bound):
                raise InputError(f"CSR.from_coo: {name} ids must lie in [0, {bound}), found range "
                                 f"[{int(ids.min())}, {int(ids.max())}]")
        # one stable sort of the (row, col) keys: "first occurrence" means first in the input
        keys, order = torch.sort(rows * max(n_cols, 1) + cols, stable=True)
        repeated = keys[1:] == keys[:-1]
        n_repeated = int(repeated.sum())
        if n_repeated and duplicates == "error":
            raise InputError(f"CSR.from_coo: {n_repeated} repeated (row, col) entries; drop them "
                             "first (duplicates='drop' keeps the first of each)")
        if n_repeated:
            order = order[torch.cat([torch.ones(1, dtype=torch.bool), ~repeated])]
        rows, cols = rows[order], cols[order]
        rowptr = torch.zeros(n_rows + 1, dtype=torch.long)
        rowptr[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
        val = None if vals is None else torch.as_tensor(vals).reshape(-1)[order].contiguous()
        return cls(rowptr.to(index_dtype), cols.to(index_dtype).contiguous(), val, n_cols,
                   symmetric, validate=False)

    def apply(self, fn) -> "CSR":
        """A copy with ``fn`` applied to every tensor (indices, values, the cached transpose), as
        ``nn.Module._apply`` applies it to buffers: how a model's graphs follow ``model.to(...)``
        (see ``models.base.Recommender``)."""
        val = None if self.val is None else fn(self.val)
        transpose = None if self._transpose is None else tuple(map(fn, self._transpose))
        return CSR(fn(self.rowptr), fn(self.col), val, self.n_cols, self.symmetric, transpose,
                   validate=False)

    def to(self, device=None, dtype=None) -> "CSR":
        """Move the graph (indices keep their dtype; ``dtype`` casts the values)."""
        return self.apply(lambda t: t.to(device, dtype if t.is_floating_point() else None))

    def select_rows(self, rows: torch.Tensor) -> "CSR":
        """The (len(rows), n_cols) sub-matrix of the given rows, in their order (repeats allowed).

        ``rows``: (k,) int64 row ids in ``[0, n_rows)`` on the graph's device (not checked). The
        result lives on that device (one host sync: its nnz) and has no values when A has none.
        """
        starts = self.rowptr[rows]
        counts = self.rowptr[rows + 1] - starts
        rowptr = torch.zeros(rows.numel() + 1, dtype=self.rowptr.dtype, device=self.device)
        rowptr[1:] = counts.cumsum(0)
        # the k-th entry of the result, in its row r, is entry starts[r] + k - rowptr[r] of A
        offsets = torch.arange(int(rowptr[-1]), device=self.device) \
            - torch.repeat_interleave(rowptr[:-1] - starts, counts)
        val = None if self.val is None else self.val[offsets]
        return CSR(rowptr, self.col[offsets], val, self.n_cols, validate=False)

    def transpose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t_rowptr, t_col, t_perm) of Aᵀ, computed once and cached."""
        if self._transpose is None:
            self._transpose = ops.csr_transpose(self.rowptr, self.col, self.n_cols)
        return self._transpose

    def propagate(self, x: torch.Tensor, n_layers: int, *, out: torch.Tensor | None = None,
                  scratch=()) -> torch.Tensor:
        """Mean of ``x, A x, ..., A^L x`` (A must be symmetric); ``out``, ``scratch``: reused
        buffers (``ops.propagate``'s, not differentiable)."""
        if not self.symmetric:
            raise InputError("propagate needs a symmetric graph (CSR.symmetric=True)")
        return ops.propagate(self.rowptr, self.col, self.val, x, n_layers, validate=False,
                             out=out, scratch=scratch)


def normalized_bipartite_reference(n_users: int, n_items: int, pairs) -> CSR:
    """Symmetric D^-1/2 A D^-1/2 of the user–item graph, nodes = users then items.

    ``pairs`` is an (n, 2) array of distinct [user, item] training interactions. Isolated nodes get
    empty rows (weight 0, never NaN). This is the reference the compiled builder is tested against.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n = n_users + n_items
    u, i = pairs[:, 0], pairs[:, 1] + n_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.zeros(n)
    inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    vals = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    return CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(vals),
                        n, n, symmetric=True)


def _check_pairs(n_users: int, n_items: int, pairs) -> np.ndarray:
    """Shape and dtype of ``pairs`` as a contiguous (n, 2) int64 array (ids are checked apart)."""
    if n_users < 0 or n_items < 0:
        raise InputError(f"normalized_bipartite: n_users ({n_users}) and n_items ({n_items}) "
                         "must be >= 0")
    if isinstance(pairs, torch.Tensor):
        pairs = pairs.detach().cpu().numpy()
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise InputError(f"normalized_bipartite: pairs must have shape (n, 2) [user, item], got "
                         f"{pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise InputError(f"normalized_bipartite: pairs must hold integer ids, got {pairs.dtype}")
    return np.ascontiguousarray(pairs, dtype=np.int64)


def _check_ids(n_users: int, n_items: int, pairs: np.ndarray) -> None:
    if not len(pairs):
        return
    for k, (name, bound) in enumerate((("user", n_users), ("item", n_items))):
        lo, hi = int(pairs[:, k].min()), int(pairs[:, k].max())
        if lo < 0 or hi >= bound:
            raise InputError(f"normalized_bipartite: {name} ids must lie in [0, {bound}), found "
                             f"range [{lo}, {hi}]; pass the {name} count that covers every id")


def normalized_bipartite(n_users: int, n_items: int, pairs, device=None) -> CSR:
    """Symmetric D^-1/2 A D^-1/2 of the user–item graph as a CSR, built in C++ when available.

    Nodes are users ``[0, n_users)`` then items ``[n_users, n_users + n_items)``; row u holds
    ``n_users + i`` for each training pair (u, i) and row ``n_users + i`` holds u, with weight
    ``1 / sqrt(deg(u) * deg(i))`` (float32, computed in float64 and rounded once). Isolated nodes
    get empty rows (never NaN). Indices are int64 and sorted within every row, the result is
    deterministic and equal to :func:`normalized_bipartite_reference` (which it replaces on the hot
    path; the reference serves when the extension is missing or under
    ``SGFD_FAST_BACKEND=bipartite_adj=reference``, the op's name in ``python -m sgfd_fast.info``).
    The graph is built on the host for either device. Pairs grouped by user (any order within a
    user) build fastest.

    Args:
        n_users, n_items: node counts (ids in ``pairs`` must be below them).
        pairs: (n, 2) integer array or tensor of distinct [user, item] interactions.
        device: where the returned graph lives (default CPU).

    Raises:
        InputError: wrong shape or dtype, ids out of range, or duplicate pairs.
    """
    pairs = _check_pairs(n_users, n_items, pairs)
    graph = _backend.implementation("bipartite_adj", "cpu")(n_users, n_items, pairs)
    return graph if device is None else graph.to(device)


def _bipartite_adj_numpy(n_users: int, n_items: int, pairs: np.ndarray) -> CSR:
    """The ``reference`` backend: the checks, then :func:`normalized_bipartite_reference`."""
    _check_ids(n_users, n_items, pairs)
    keys = pairs[:, 0] * max(n_items, 1) + pairs[:, 1]
    _check_duplicates(keys.size - np.unique(keys).size)
    return normalized_bipartite_reference(n_users, n_items, pairs)


def _bipartite_adj_cpp(n_users: int, n_items: int, pairs: np.ndarray) -> CSR:
    n, nnz = n_users + n_items, 2 * pairs.shape[0]
    rowptr = torch.empty(n + 1, dtype=torch.int64)
    col = torch.empty(nnz, dtype=torch.int64)
    val = torch.empty(nnz, dtype=torch.float32)
    # The kernel checks the ids as it counts (-1: one is out of range; say which).
    duplicates = _ext.cpu.bipartite_adj(pairs=pairs.ctypes.data, n_pairs=pairs.shape[0],
                                        n_users=n_users, n_items=n_items,
                                        rowptr=rowptr.data_ptr(), col=col.data_ptr(),
                                        val=val.data_ptr(), dtype="float32")
    if duplicates < 0:
        _check_ids(n_users, n_items, pairs)
    _check_duplicates(duplicates)
    return CSR(rowptr, col, val, n, symmetric=True, validate=False)


def _check_duplicates(duplicates: int) -> None:
    if duplicates:
        raise InputError(f"normalized_bipartite: pairs contain {duplicates} duplicate "
                         "[user, item] row(s); drop them first (e.g. np.unique(pairs, axis=0))")


# A host op: graphs for either device are built on the CPU, then moved.
_backend.declare("bipartite_adj", _bipartite_adj_numpy, host=True)
_backend.register("bipartite_adj", "cpu", "cpp", _bipartite_adj_cpp)
