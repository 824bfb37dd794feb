import importlib.util

import pytest
import torch
import torch.nn.functional as F

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import knn_graph, knn_graph_reference, sddmm_csr

HAS_TRITON = importlib.util.find_spec("triton") is not None
NEG_INF = float("-inf")


def brute_force(x, k):
    """Explicit loops: cosine in float64 (a zero row stays zero), ranked as float32 by (-s, id)."""
    n = x.shape[0]
    unit = [x[i].double() / max(float(x[i].double().norm()), 1e-12) for i in range(n)]
    col, val = [], []
    for i in range(n):
        cands = []
        for j in range(n):
            s = float(torch.tensor(float(unit[i] @ unit[j]), dtype=torch.float32))
            if s == s and s != NEG_INF:
                cands.append((-s, j))
        cands.sort()
        cands = cands[:k] + [(float("inf"), -1)] * (k - min(k, len(cands)))
        val.append([-c[0] for c in cands])
        col.append([c[1] for c in cands])
    return (torch.tensor(col, dtype=torch.int64).view(-1, k),
            torch.tensor(val, dtype=torch.float32).view(-1, k))


def backends(device):
    names = ["cpp"] if device == "cpu" else []
    if HAS_TRITON:
        names.append("triton")
    return names


def _features(n, d, seed, dtype=torch.float32, integer=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if integer:  # small non-negative integers with repeated rows: exact ties (duplicates), and
        # disjoint rows score an exact +0 whatever the summation order
        x = torch.randint(0, 4, (n, d), generator=g).to(dtype)
        x[n // 2:n // 2 + 3] = x[1]  # duplicates of row 1 tie with it (cosine 1)
    else:
        x = torch.randn(n, d, generator=g, dtype=dtype)
    x[n // 3] = 0.0  # a zero row: cosine 0 with everything
    x[n // 4] *= 1e3  # a hub: scale does not change a cosine
    return x.to(device)


@pytest.mark.parametrize("k", [1, 4, 10, 40])
def test_reference_matches_brute_force(k):
    # float64 features: the cosines the loops compute, rounded once to float32
    x = _features(29, 5, seed=k, dtype=torch.float64, integer=True)
    want = brute_force(x, k)
    got = knn_graph_reference(x, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_reference_matches_mmrec_dense_topk_without_ties():
    # MMRec's build_sim + torch.topk on distinct cosines (the tie rule aside): the same graph,
    # and the item itself comes first.
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    val, col = torch.topk(unit @ unit.T, 10, dim=-1)
    got = knn_graph_reference(x, 10)
    assert torch.equal(got[0], col)
    assert torch.equal(got[0][:, 0], torch.arange(50))
    torch.testing.assert_close(got[1], val.float())


def _check(device, backend, x, k, exact):
    want = knn_graph_reference(x, k)
    with sgfd_fast.use_backend(backend):
        assert _backend.serving("knn_graph", device) == backend
        got = knn_graph(x, k)
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.float32
    assert got[0].shape == got[1].shape == (x.shape[0], k)
    if exact:
        assert torch.equal(got[0], want[0]), backend
        assert torch.equal(got[1], want[1]), backend
    else:  # random cosines: values agree to rounding; ids wherever the gap is clear
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        gap = (want[1][:, :-1] - want[1][:, 1:]).abs()
        clear = torch.ones_like(want[0], dtype=torch.bool)
        clear[:, 1:] &= gap > 1e-4
        clear[:, :-1] &= gap > 1e-4
        assert torch.equal(got[0][clear], want[0][clear]), backend


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_backends_match_reference_with_ties(device, dtype, k):
    # 37 rows (two Triton programs of 16 and a partial one; tiles of 16, the last partial),
    # width 5, duplicate rows (exact ties), a zero row, a hub row; k = 50 > n: -1 / -inf slots.
    # Integer features give cosines that every backend rounds alike.
    x = _features(37, 5, seed=k, dtype=dtype, integer=True, device=device)
    for backend in backends(device):
        _check(device, backend, x, k, exact=dtype == torch.float64)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("d", [3, 70])
def test_backends_match_reference_random(device, d):
    # d = 70: the Triton kernel walks the width in chunks of 64 (the last one partial).
    x = _features(45, d, seed=d, device=device)
    for backend in backends(device):
        _check(device, backend, x, 10, exact=False)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_signed_zeros_nan_rows_and_degenerate_shapes(device):
    # Orthogonal rows: every cosine off the diagonal is +0.0 or -0.0, one score (ties by id).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]],
                     device=device)
    want = brute_force(x.cpu(), 3)
    assert torch.equal(want[0][1], torch.tensor([1, 0, 2]))  # +0 and -0 tie: lower id
    for backend in ["reference", *backends(device)]:
        with sgfd_fast.use_backend(backend):
            got = knn_graph(x, 3)
            assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
            # a NaN row (validate=False): absent from every row, and its own row is empty
            bad = x.clone()
            bad[2, 0] = float("nan")
            col, val = knn_graph(bad, 5, validate=False)
            assert col[2].tolist() == [-1] * 5 and val[2].cpu().tolist() == [NEG_INF] * 5
            assert not bool((col == 2).any())
            assert col[0].tolist() == [0, 1, 3, 4, -1]
            assert knn_graph(x[:0], 3)[0].shape == (0, 3)
            assert knn_graph(x, 0)[1].shape == (5, 0)
            assert knn_graph(x[:1], 2)[0].tolist() == [[0, -1]]


def test_values_on_the_pattern_are_differentiable_cosines():
    # LATTICE's learned graph: the values on the kNN pattern are the cosines gathered edge by
    # edge (sddmm_csr of the unit rows), equal to val and differentiable in the features.
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    col, val = knn_graph(x, 3)
    rowptr = torch.arange(0, 9 * 3 + 1, 3)

    def values(x):
        unit = F.normalize(x, dim=1)
        return sddmm_csr(rowptr, col.view(-1), unit, unit)

    torch.testing.assert_close(values(x).float(), val.view(-1))
    dense = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    torch.testing.assert_close(values(x), dense.gather(1, col).view(-1))
    assert torch.autograd.gradcheck(values, (x.requires_grad_(),))


@pytest.mark.skipif(_ext.cpu is None, reason="C++ extension not built")
def test_cpp_is_reproducible_over_many_tiles():
    # More rows than one C++ user block and item tile: bitwise the same on a rerun.
    x = _features(700, 9, seed=5, integer=True)
    with sgfd_fast.use_backend("cpp"):
        got = knn_graph(x, 10)
        again = knn_graph(x, 10)
    assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1])
    want = knn_graph_reference(x, 10)
    assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    x = _features(12, 4, seed=2)
    with sgfd_fast.use_backend(backend):
        torch.library.opcheck(torch.ops.sgfd_fast.knn_graph.default, (x, 3))


def test_torch_compile_smoke():
    x = _features(12, 4, seed=2)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return knn_graph(x * 2, 3, validate=False)

    assert torch.equal(f(x)[0], knn_graph_reference(x, 3)[0])


@pytest.mark.parametrize("make, message", [
    (lambda x: (x[:, 0], 2), "must be an \\(n, d\\) float32 or float64"),
    (lambda x: (x.long(), 2), "must be an \\(n, d\\) float32 or float64"),
    (lambda x: ([[1.0]], 2), "must be an \\(n, d\\) float32 or float64"),
    (lambda x: (x, -1), "non-negative int"),
    (lambda x: (x, 2.0), "non-negative int"),
    (lambda x: (x, True), "non-negative int"),
    (lambda x: (x.index_fill(0, torch.tensor([3]), float("nan")), 2), "NaN or infinite .* row 3"),
    (lambda x: (x.index_fill(0, torch.tensor([1]), float("inf")), 2), "NaN or infinite .* row 1"),
])
def test_bad_input_is_one_clear_error(make, message):
    x = torch.randn(6, 3)
    with pytest.raises(InputError, match=message):
        knn_graph(*make(x))


def test_cpu_default_backend_and_info():
    assert _backend.serving("knn_graph", "cpu") == ("cpp" if _ext.cpu is not None
                                                   else "reference")
    assert "knn_graph" in _backend.ops()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
@pytest.mark.parametrize("dtype, k", [(torch.float32, 65), (torch.float64, 17)])
def test_triton_beyond_its_bounds_serves_the_reference(monkeypatch, dtype, k):
    """A k whose tiles would spill on sm_90 (tests/aot_sm90.py) never reaches the kernel."""
    from sgfd_fast.kernels import knn_graph as kernel

    x = torch.randn(70, 9, generator=torch.Generator().manual_seed(3), dtype=dtype)
    want = knn_graph_reference(x, k)
    monkeypatch.setattr(kernel, "knn_graph_triton",
                        lambda *a: pytest.fail("the kernel was launched beyond its bounds"))
    with sgfd_fast.use_backend("triton"):
        got = knn_graph(x, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        with pytest.raises(pytest.fail.Exception, match="beyond its bounds"):
            knn_graph(x, k - 1)  # within the bounds: the kernel
