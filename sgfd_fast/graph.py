"""Graph objects: a CSR matrix that owns its index/value tensors and caches its transpose.

Ops take plain dense tensors (rowptr, col, val), never torch sparse tensors: views into a
sparse tensor break ``torch.compile``'s fake-tensor tracing (../shared/docs/build-notes.md).
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
        rowptr: (n_rows + 1,) int64 offsets; col: (nnz,) int64 column ids (sorted within a row);
        val: (nnz,) float weights or None (unit weights); symmetric: whether A == Aᵀ.
        validate: check offsets and column ranges (one pass over the indices); code that builds a
            valid CSR itself (the graph builders, ``to``) passes False.
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
    def from_coo(cls, rows, cols, vals, n_rows: int, n_cols: int, symmetric: bool = False):
        """Build from COO triplets (any order, no duplicates), sorting by (row, col)."""
        rows, cols = torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
            raise InputError(f"row ids must lie in [0, {n_rows})")
        order = torch.argsort(rows * max(n_cols, 1) + cols)
        rows, cols = rows[order], cols[order]
        rowptr = torch.zeros(n_rows + 1, dtype=torch.long)
        rowptr[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
        val = None if vals is None else torch.as_tensor(vals)[order].contiguous()
        return cls(rowptr, cols.contiguous(), val, n_cols, symmetric)

    def to(self, device=None, dtype=None) -> "CSR":
        """Move the graph (indices keep their dtype; ``dtype`` casts the values)."""
        val = None if self.val is None else self.val.to(device=device, dtype=dtype)
        return CSR(self.rowptr.to(device), self.col.to(device), val, self.n_cols, self.symmetric,
                   validate=False)

    def transpose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t_rowptr, t_col, t_perm) of Aᵀ, computed once and cached."""
        if self._transpose is None:
            self._transpose = ops.csr_transpose(self.rowptr, self.col, self.n_cols)
        return self._transpose

    def spmm(self, x: torch.Tensor) -> torch.Tensor:
        """``A @ x``, differentiable in x and in val."""
        transpose = (self.rowptr, self.col, torch.arange(self.nnz, device=self.device)) \
            if self.symmetric else self.transpose()
        return ops.spmm_csr(self.rowptr, self.col, self.val, x, transpose=transpose,
                            validate=False)

    def propagate(self, x: torch.Tensor, n_layers: int) -> torch.Tensor:
        """Mean of ``x, A x, ..., A^L x`` (A must be symmetric)."""
        if not self.symmetric:
            raise InputError("propagate needs a symmetric graph (CSR.symmetric=True)")
        return ops.propagate(self.rowptr, self.col, self.val, x, n_layers, validate=False)


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
