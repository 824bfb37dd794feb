import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext, graph
from sgfd_fast.errors import InputError
from sgfd_fast.graph import CSR, normalized_bipartite, normalized_bipartite_reference
from sgfd_fast.testing import random_bipartite, threads


def dense_normalized(n_users, n_items, pairs):
    """D^-1/2 A D^-1/2 from first principles (float64)."""
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in pairs:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
    return a * inv[:, None] * inv[None, :]


def to_dense(g):
    a = np.zeros((g.n_rows, g.n_cols))
    rows = np.repeat(np.arange(g.n_rows), g.rowptr.diff().numpy())
    a[rows, g.col.numpy()] = g.val.double().numpy()
    return a


@pytest.mark.parametrize("build", [normalized_bipartite, normalized_bipartite_reference])
def test_matches_first_principles(build):
    pairs = random_bipartite(30, 25, 150, isolated=3, seed=1)
    g = build(30, 25, pairs)
    assert g.symmetric and g.n_rows == g.n_cols == 55 and g.nnz == 2 * len(pairs)
    np.testing.assert_allclose(to_dense(g), dense_normalized(30, 25, pairs), rtol=1e-6)
    assert torch.isfinite(g.val).all()
    for node in (27, 28, 29, 30 + 22, 30 + 24):  # isolated users and items: empty rows
        assert int(g.rowptr[node + 1] - g.rowptr[node]) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpp_equals_reference_exactly(seed):
    pairs = random_bipartite(500, 300, 4000, power=1.2, seed=seed)
    pairs = pairs[np.random.default_rng(seed).permutation(len(pairs))]  # any input order
    got = normalized_bipartite(500, 300, pairs)
    want = normalized_bipartite_reference(500, 300, pairs)
    assert torch.equal(got.rowptr, want.rowptr)
    assert torch.equal(got.col, want.col)
    assert got.val.dtype == want.val.dtype == torch.float32
    torch.testing.assert_close(got.val, want.val, rtol=2e-7, atol=0)
    # columns are sorted within every row
    rows = torch.repeat_interleave(torch.arange(got.n_rows), got.rowptr.diff())
    key = rows * got.n_cols + got.col
    assert bool((key[1:] > key[:-1]).all())


def _in_order(pairs, order, seed=0):
    """``pairs`` (sorted) as "sorted", "grouped" by user with items shuffled, or "scattered"."""
    rng = np.random.default_rng(seed)
    if order == "grouped":
        return pairs[np.lexsort((rng.random(len(pairs)), pairs[:, 0]))]
    return pairs[rng.permutation(len(pairs))] if order == "scattered" else pairs


@pytest.mark.parametrize("order", ["sorted", "grouped", "scattered"])
def test_cpp_equals_reference_with_a_thread_team(order):
    # Enough pairs per thread for the builder to split the work (its kPairsPerThread is 8192).
    pairs = _in_order(random_bipartite(3000, 2000, 90_000, power=1.1, seed=5), order)
    want = normalized_bipartite_reference(3000, 2000, pairs)
    for n in (1, 2, 3):
        with threads(n):
            got = normalized_bipartite(3000, 2000, pairs)
        assert torch.equal(got.rowptr, want.rowptr) and torch.equal(got.col, want.col), n
        torch.testing.assert_close(got.val, want.val, rtol=2e-7, atol=0)


@pytest.mark.parametrize("order", ["grouped", "scattered"])
def test_bad_pairs_found_by_every_thread(order):
    pairs = _in_order(random_bipartite(3000, 2000, 90_000, seed=6), order)
    late = len(pairs) - 10  # in the last thread's chunk
    duplicated = np.concatenate([pairs, pairs[late:late + 1]])
    out_of_range = pairs.copy()
    out_of_range[late, 1] = 2000
    for n in (1, 2, 3):
        with threads(n), pytest.raises(InputError, match="1 duplicate"):
            normalized_bipartite(3000, 2000, duplicated)
        with threads(n), pytest.raises(InputError, match=r"item ids must lie in \[0, 2000\), "
                                                         r"found range \[0, 2000\]"):
            normalized_bipartite(3000, 2000, out_of_range)


def test_hub_user_and_tensor_input():
    pairs = np.stack([np.zeros(10_000, np.int64), np.arange(10_000)], 1)
    pairs = np.concatenate([pairs, [[1, 5], [2, 5]]])
    g = normalized_bipartite(3, 10_000, torch.from_numpy(pairs))
    want = normalized_bipartite_reference(3, 10_000, pairs)
    assert torch.equal(g.col, want.col)
    torch.testing.assert_close(g.val, want.val, rtol=2e-7, atol=0)
    assert int(g.rowptr[1]) == 10_000


def test_empty_and_all_isolated():
    g = normalized_bipartite(4, 3, np.zeros((0, 2), np.int64))
    assert g.nnz == 0 and g.n_rows == 7 and torch.equal(g.rowptr, torch.zeros(8, dtype=torch.long))
    out = g.propagate(torch.ones(7, 2), 2)
    torch.testing.assert_close(out, torch.full((7, 2), 1 / 3))


def test_reference_backend_switch_gives_same_graph():
    pairs = random_bipartite(40, 30, 200, seed=4)
    with sgfd_fast.use_backend("reference"):
        ref = normalized_bipartite(40, 30, pairs)
    got = normalized_bipartite(40, 30, pairs)
    assert torch.equal(ref.col, got.col)
    torch.testing.assert_close(ref.val, got.val, rtol=2e-7, atol=0)


@pytest.mark.parametrize("spec", ["reference", "bipartite_adj=reference"])
def test_backend_switch_routes_through_the_backend_table(monkeypatch, spec):
    calls = []

    def counted(*args):
        calls.append(args)
        return normalized_bipartite_reference(*args)

    monkeypatch.setattr(graph, "normalized_bipartite_reference", counted)
    pairs = random_bipartite(40, 30, 200, seed=4)
    compiled = _ext.cpu is not None
    # Built on the host: the CPU backend serves graphs for either device.
    for device in ("cpu", "cuda"):
        assert _backend.serving("bipartite_adj", device) == ("cpp" if compiled else "reference")
    auto = normalized_bipartite(40, 30, pairs)
    assert len(calls) == (0 if compiled else 1)
    with sgfd_fast.use_backend(spec):
        assert _backend.serving("bipartite_adj", "cpu") == "reference"
        ref = normalized_bipartite(40, 30, pairs)
    assert len(calls) == (1 if compiled else 2)
    assert torch.equal(ref.rowptr, auto.rowptr) and torch.equal(ref.col, auto.col)
    torch.testing.assert_close(ref.val, auto.val, rtol=2e-7, atol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("pairs, message", [
    (np.array([[0, 1], [0, 1]]), "duplicate"),
    (np.array([[0, 1], [5, 1]]), r"user ids must lie in \[0, 5\)"),
    (np.array([[0, -1]]), "item ids must lie in"),
    (np.array([0, 1, 2]), "shape"),
    (np.array([[0.5, 1.0]]), "integer"),
])
def test_bad_pairs(backend, pairs, message):
    with sgfd_fast.use_backend(backend), pytest.raises(InputError, match=message):
        normalized_bipartite(5, 4, pairs)


def test_device_argument_and_csr_dtype():
    g = normalized_bipartite(5, 4, np.array([[0, 1], [3, 2]]), device="cpu")
    assert isinstance(g, CSR) and g.rowptr.dtype == g.col.dtype == torch.int64
