"""Graph objects: a CSR matrix that owns its index/value tensors and caches its transpose.

Ops take plain dense tensors (rowptr, col, val), never torch sparse tensors: views into a
sparse tensor break ``torch.compile``'s fake-tensor tracing (../shared/docs/build-notes.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import ops
from .errors import InputError

__all__ = ["CSR", "normalized_bipartite_reference"]


@dataclass(eq=False)
class CSR:
    """An (n_rows, n_cols) sparse matrix in CSR form, validated once at construction.

    Attributes:
        rowptr: (n_rows + 1,) int64 offsets; col: (nnz,) int64 column ids (sorted within a row);
        val: (nnz,) float weights or None (unit weights); symmetric: whether A == Aᵀ.
    """

    rowptr: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor | None
    n_cols: int
    symmetric: bool = False
    _transpose: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        ops._common.check_csr("CSR", self.rowptr, self.col, self.val, self.n_cols,
                              validate_values=True)
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
        return CSR(self.rowptr.to(device), self.col.to(device), val, self.n_cols, self.symmetric)

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
