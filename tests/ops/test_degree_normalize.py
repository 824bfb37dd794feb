import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import degree_normalize, degree_normalize_reference
from sgfd_fast.testing import random_csr

NORMS = ["sym", "rw"]


def dense_formula(rowptr, col, val, n, normalization, eps):
    """MMRec's dense compute_normalized_laplacian / get_dense_laplacian on the scattered matrix
    (float64; row-sum degrees on both sides, inf -> 0)."""
    a = torch.zeros(n, n, dtype=torch.float64)
    row = torch.repeat_interleave(torch.arange(n), rowptr.diff().long())
    a[row, col.long()] = val.double()
    deg = a.sum(-1) + eps
    d = deg.pow(-0.5 if normalization == "sym" else -1.0)
    d[torch.isinf(d)] = 0.0
    out = torch.diagflat(d) @ a @ (torch.diagflat(d) if normalization == "sym"
                                       else torch.eye(n, dtype=torch.float64))
    return out[row, col.long()]


def _graph(n, seed, dtype=torch.float64, index_dtype=torch.int64, hub=0, positive=True):
    g = random_csr(n, n, avg_degree=4, hub_degree=hub, seed=seed, dtype=dtype,
                   index_dtype=index_dtype)
    val = g.val.abs() + 0.1 if positive else g.val
    return g.rowptr, g.col, val.to(dtype)


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("eps", [0.0, 1e-7])
def test_reference_matches_mmrec_dense_formula(normalization, eps):
    rowptr, col, val = _graph(30, seed=1, hub=25)
    want = dense_formula(rowptr, col, val, 30, normalization, eps)
    got = degree_normalize_reference(rowptr, col, val, normalization, eps)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # FREEDOM's kNN graph: a pattern of ones, k per row, eps = 1e-7 -> values 1/(k + 1e-7)
    rowptr = torch.arange(0, 6 * 3 + 1, 3)
    col = torch.randint(0, 6, (18,), generator=torch.Generator().manual_seed(0))
    ones = torch.ones(18, dtype=torch.float64)
    torch.testing.assert_close(degree_normalize_reference(rowptr, col, ones, "sym", 1e-7),
                               torch.full((18,), 1 / (3 + 1e-7), dtype=torch.float64))


def _backends():
    return ["cpp"] if _ext.cpu is not None else []


@pytest.mark.parametrize("normalization", NORMS)
def test_zero_and_negative_degrees(normalization):
    # Row 0: values that cancel (degree 0: scaled by 0, never inf); row 1 empty (degree 0);
    # row 2 negative ('sym': NaN, as torch.pow gives MMRec, on its row and column; 'rw': 1/deg).
    rowptr = torch.tensor([0, 2, 2, 3, 4])
    col = torch.tensor([1, 3, 0, 1])
    val = torch.tensor([0.5, -0.5, -2.0, 1.0], dtype=torch.float64)
    want = [0.0, 0.0, float("nan"), 0.0] if normalization == "sym" else [0.0, 0.0, 1.0, 1.0]
    for backend in ["reference", *_backends()]:
        with sgfd_fast.use_backend(backend):
            out = degree_normalize(rowptr, col, val, normalization)
        torch.testing.assert_close(out, torch.tensor(want, dtype=torch.float64), equal_nan=True)


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_backends_match_reference(normalization, dtype, index_dtype):
    # Empty rows (middle, last), a hub row of 60 edges, isolated columns; gradients too.
    rowptr, col, val = _graph(67, seed=3, dtype=dtype, index_dtype=index_dtype, hub=60)
    grad = torch.randn(val.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    v = val.clone().requires_grad_()
    want = degree_normalize_reference(rowptr, col, v, normalization, 1e-7)
    (want_grad,) = torch.autograd.grad(want, v, grad)
    for backend in _backends():
        with sgfd_fast.use_backend(backend):
            assert _backend.serving("degree_normalize", "cpu") == backend
            got = degree_normalize(rowptr, col, v, normalization, 1e-7)
            (got_grad,) = torch.autograd.grad(got, v, grad)
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(got_grad, want_grad, **tol)
        assert got.dtype == dtype


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck(normalization, backend):
    # The backward formula (a custom op of its own) against finite differences; values of both
    # signs, positive degrees, empty rows.
    rowptr, col, val = _graph(15, seed=4, hub=12)
    with sgfd_fast.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda v: degree_normalize(rowptr, col, v, normalization, 0.5),
            (val.clone().requires_grad_(),))


def test_poisoned_outputs_are_all_written():
    # conftest sets SGFD_FAST_POISON=1: any edge left unwritten stays NaN.
    rowptr, col, val = _graph(40, seed=5, hub=30)
    for backend in _backends():
        with sgfd_fast.use_backend(backend):
            out = degree_normalize(rowptr, col, val.requires_grad_(), "sym")
            (g,) = torch.autograd.grad(out.sum(), val)
        assert bool(out.isfinite().all()) and bool(g.isfinite().all())


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    rowptr, col, val = _graph(12, seed=6)
    with sgfd_fast.use_backend(backend):
        for normalization in NORMS:
            torch.library.opcheck(torch.ops.sgfd_fast.degree_normalize.default,
                                  (rowptr, col, val.requires_grad_(), normalization, 1e-7))


def test_torch_compile_smoke():
    rowptr, col, val = _graph(12, seed=6)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(v):
        return degree_normalize(rowptr, col, v * 2, "sym", validate=False).sum()

    v = val.clone().requires_grad_()
    f(v).backward()
    w = val.clone().requires_grad_()
    degree_normalize_reference(rowptr, col, w * 2, "sym").sum().backward()
    torch.testing.assert_close(v.grad, w.grad)


@pytest.mark.parametrize("make, message", [
    (lambda r, c, v: (r, c, v.long()), "float32 or float64"),
    (lambda r, c, v: (r, c, v, "row"), "normalization must be one of sym, rw"),
    (lambda r, c, v: (r, c, v, "sym", float("inf")), "eps must be a finite number"),
    (lambda r, c, v: (r, c, v, "sym", "0"), "eps must be a finite number"),
    (lambda r, c, v: (r, c, v[:-1]), "one entry per column index"),
    (lambda r, c, v: (r, c.int(), v), "share an int32 or int64"),
    (lambda r, c, v: (r, c + 10, v), "column indices must lie in \\[0, 4\\)"),
    (lambda r, c, v: (r.flip(0), c, v), "rowptr must start at 0"),
])
def test_bad_input_is_one_clear_error(make, message):
    rowptr = torch.tensor([0, 2, 2, 3, 5])
    col = torch.tensor([1, 3, 0, 2, 3])
    val = torch.rand(5, dtype=torch.float64)
    with pytest.raises(InputError, match=message):
        degree_normalize(*make(rowptr, col, val))
    # 'rw' accepts a rectangular graph (columns beyond the row count)
    assert degree_normalize(rowptr, col + 10, val, "rw").shape == (5,)
