"""Generated graphs and inputs for tests and benchmarks (all synthetic, seeded)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .graph import CSR, normalized_bipartite_reference


@contextlib.contextmanager
def threads(n: int):
    """Run the block with ``n`` torch threads — also the OpenMP team size of the C++ kernels,
    which share torch's OpenMP runtime."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def products():
    """Record the output shape of every matrix product (``aten.mm``/``addmm``/``bmm``) torch
    runs inside the block: ``with products() as shapes: ...`` then ``shapes`` lists them. Tests
    use it to check that no gradient is formed for an input that does not require one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    wanted = {aten.mm.default, aten.addmm.default, aten.bmm.default}
    shapes: list[tuple[int, ...]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in wanted:
                shapes.append(tuple(out.shape))
            return out

    with Record():
        yield shapes


def random_csr(n_rows: int, n_cols: int, *, avg_degree: float = 4.0, hub_degree: int = 0,
               empty_fraction: float = 0.2, seed: int = 0, dtype=torch.float32,
               index_dtype=torch.int64) -> CSR:
    """A random weighted CSR with empty rows (``empty_fraction`` of them, including the middle
    and the last row) and optionally one hub row with ``hub_degree`` distinct neighbours."""
    rng = np.random.default_rng(seed)
    degrees = rng.poisson(avg_degree, n_rows)
    degrees[rng.random(n_rows) < empty_fraction] = 0
    if n_rows:
        degrees[n_rows // 2] = 0
        degrees[-1] = 0
    if hub_degree and n_rows > 1:
        degrees[1] = hub_degree
    degrees = np.minimum(degrees, n_cols)
    rows = np.repeat(np.arange(n_rows), degrees)
    cols = np.concatenate([rng.choice(n_cols, k, replace=False) for k in degrees]) \
        if n_rows else np.zeros(0, np.int64)
    vals = rng.standard_normal(rows.size)
    return CSR.from_coo(rows, cols, torch.from_numpy(vals).to(dtype), n_rows, n_cols,
                        index_dtype=index_dtype)


def random_bipartite(n_users: int, n_items: int, n_edges: int, *, isolated: int = 2,
                     power: float = 1.0, seed: int = 0) -> np.ndarray:
    """Distinct (user, item) pairs with power-law item popularity; the last ``isolated`` users
    and items get no edge (isolated nodes)."""
    rng = np.random.default_rng(seed)
    users = n_users - isolated
    items = n_items - isolated
    pop = (np.arange(1, items + 1) ** -power)
    pop /= pop.sum()
    u = rng.integers(0, users, n_edges)
    i = rng.choice(items, n_edges, p=pop)
    return np.unique(np.stack([u, i], 1), axis=0)


def random_normalized_graph(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> CSR:
    """Symmetric normalized bipartite adjacency of a generated interaction set."""
    return normalized_bipartite_reference(n_users, n_items,
                                          random_bipartite(n_users, n_items, n_edges, seed=seed))
