import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext, graph
from sgfd_fast.errors import InputError
from sgfd_fast.graph import CSR, normalized_bipartite, normalized_bipartite_reference
from sgfd_fast.testing import random_bipartite, random_csr, threads


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


# ---------------------------------------------------------------------------------------------
# CSR.from_coo (the one builder) and CSR.select_rows (the one row slicer)
# ---------------------------------------------------------------------------------------------


def _dense(g):
    a = torch.zeros(g.n_rows, g.n_cols, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(g.n_rows), g.rowptr.diff().long())
    a[rows, g.col.long()] = 1.0 if g.val is None else g.val.double()
    return a


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_from_coo_sorts_any_order_and_keeps_values_with_their_entries(index_dtype):
    rows, cols = np.array([2, 0, 2, 0, 3]), np.array([4, 3, 1, 0, 2])
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    g = CSR.from_coo(rows, cols, vals, 5, 6, index_dtype=index_dtype)
    assert g.rowptr.dtype == g.col.dtype == index_dtype
    assert g.rowptr.tolist() == [0, 2, 2, 4, 5, 5] and g.col.tolist() == [0, 3, 1, 4, 2]
    assert g.val.tolist() == [4.0, 2.0, 3.0, 1.0, 5.0]
    want = torch.zeros(5, 6, dtype=torch.float64)
    want[rows, cols] = vals.double()
    assert torch.equal(_dense(g), want)


def test_from_coo_duplicates_are_rejected_or_the_first_kept():
    rows, cols, vals = [1, 0, 1, 1], [2, 0, 2, 0], torch.tensor([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match=r"1 repeated \(row, col\)"):
        CSR.from_coo(rows, cols, vals, 2, 3)
    g = CSR.from_coo(rows, cols, vals, 2, 3, duplicates="drop")
    assert g.rowptr.tolist() == [0, 1, 3] and g.col.tolist() == [0, 0, 2]
    assert g.val.tolist() == [2.0, 4.0, 1.0]   # (1, 2) keeps its first value


def test_from_coo_empty():
    g = CSR.from_coo(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 3, 4)
    assert g.nnz == 0 and g.rowptr.tolist() == [0, 0, 0, 0] and g.val is None


@pytest.mark.parametrize("args, kwargs, message", [
    (([0, 3], [0, 1], None, 3, 2), {}, r"row ids must lie in \[0, 3\), found range \[0, 3\]"),
    (([0, 1], [0, -1], None, 3, 2), {}, r"column ids must lie in \[0, 2\), found range \[-1, 0\]"),
    (([0, 1], [0], None, 3, 2), {}, "one entry per nonzero"),
    (([0.0], [1.0], None, 3, 2), {}, "integer ids"),
    (([0], [1], None, 3, 2), {"duplicates": "sum"}, "'error' or 'drop'"),
    (([0], [1], None, 3, 2), {"index_dtype": torch.int16}, "int32 or torch.int64"),
])
def test_from_coo_bad_input(args, kwargs, message):
    with pytest.raises(InputError, match=message):
        CSR.from_coo(*args, **kwargs)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_select_rows_in_the_given_order_with_repeats_and_empty_rows(index_dtype):
    g = random_csr(12, 9, hub_degree=7, seed=2, index_dtype=index_dtype)
    pick = torch.tensor([5, 1, 11, 1, 0, 6])   # rows 6 and 11 are empty (middle and last)
    sub = g.select_rows(pick)
    assert sub.n_rows == 6 and sub.n_cols == 9 and sub.rowptr.dtype == index_dtype
    assert torch.equal(_dense(sub), _dense(g)[pick])
    assert g.select_rows(torch.zeros(0, dtype=torch.long)).nnz == 0


def test_to_and_apply_carry_the_cached_transpose():
    g = random_csr(10, 8, seed=1)
    t = g.transpose()
    moved = g.to(dtype=torch.float64)
    assert moved.val.dtype == torch.float64 and moved.col.dtype == torch.int64
    assert moved._transpose is not None and all(torch.equal(a, b)
                                                for a, b in zip(moved.transpose(), t))
