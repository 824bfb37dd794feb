import importlib.util

import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import csr_transpose, edge_softmax_aggregate, edge_softmax_aggregate_reference
from sgfd_fast.ops.edge_softmax_aggregate import edge_softmax_aggregate_backward_reference
from sgfd_fast.testing import random_csr

needs_cpp = pytest.mark.skipif(_ext.cpu is None, reason="CPU extension not built")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton not installed")
# every backend that serves CPU tensors here (Triton in its interpreter, as tests/conftest.py sets)
BACKENDS = ["reference", pytest.param("cpp", marks=needs_cpp),
            pytest.param("triton", marks=needs_triton)]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _loop_ref(rowptr, col, query, key, value):
    """First principles: one Python softmax per row."""
    out = torch.zeros(rowptr.numel() - 1, value.shape[1], dtype=torch.float64)
    alpha = torch.zeros(col.numel(), dtype=torch.float64)
    for r in range(rowptr.numel() - 1):
        lo, hi = int(rowptr[r]), int(rowptr[r + 1])
        if lo == hi:
            continue
        cols = col[lo:hi].long()
        a = torch.softmax(key[cols].double() @ query[r].double(), 0)
        alpha[lo:hi] = a
        out[r] = a @ value[cols].double()
    return out, alpha


def _case(n_rows=40, n_cols=30, d=5, dv=3, hub=25, seed=0, dtype=torch.float64,
          index_dtype=torch.int64):
    csr = random_csr(n_rows, n_cols, hub_degree=hub, seed=seed, index_dtype=index_dtype)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_rows, d, generator=g, dtype=dtype)
    k = torch.randn(n_cols, d, generator=g, dtype=dtype)
    v = torch.randn(n_cols, dv, generator=g, dtype=dtype)
    return csr, q, k, v


@pytest.mark.parametrize("d,dv", [(1, 1), (3, 7), (64, 64), (128, 128)])
def test_reference_matches_row_loop(d, dv):
    csr, q, k, v = _case(d=d, dv=dv, seed=d)
    out, alpha = edge_softmax_aggregate_reference(csr.rowptr, csr.col, q, k, v)
    want_out, want_alpha = _loop_ref(csr.rowptr, csr.col, q, k, v)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(alpha, want_alpha)
    empty = csr.rowptr.diff() == 0
    assert bool(empty.any()) and torch.equal(out[empty], torch.zeros_like(out[empty]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("d,dv", [(1, 1), (3, 4), (64, 64), (128, 7), (130, 200)])
def test_backends_match_reference(backend, dtype, index_dtype, d, dv):
    csr, q, k, v = _case(dtype=dtype, index_dtype=index_dtype, d=d, dv=dv, seed=d + dv)
    want_out, want_alpha = edge_softmax_aggregate_reference(csr.rowptr, csr.col, q, k, v)
    with sgfd_fast.use_backend(backend):
        assert _backend.serving("edge_softmax_aggregate", "cpu") == backend
        out, alpha = edge_softmax_aggregate(csr.rowptr, csr.col, q, k, v)
    torch.testing.assert_close(out, want_out, **TOL[dtype])
    torch.testing.assert_close(alpha, want_alpha, **TOL[dtype])
    assert out.dtype == alpha.dtype == dtype


@needs_cpp
def test_cpp_is_bitwise_deterministic():
    csr, q, k, v = _case(n_rows=1500, n_cols=1500, d=64, dv=64, hub=1000, dtype=torch.float32)
    with sgfd_fast.use_backend("cpp"):
        first = edge_softmax_aggregate(csr.rowptr, csr.col, q, k, v)
        for _ in range(2):
            again = edge_softmax_aggregate(csr.rowptr, csr.col, q, k, v)
            assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_scores_hub_row_and_all_empty(backend):
    # scores of ~1e4 would overflow exp without the row maximum; one row of 10^4 neighbours
    csr, q, k, v = _case(n_rows=20, n_cols=12000, d=4, dv=2, hub=10000, dtype=torch.float32)
    with sgfd_fast.use_backend(backend):
        out, alpha = edge_softmax_aggregate(csr.rowptr, csr.col, q * 100, k * 100, v)
    assert torch.isfinite(out).all() and torch.isfinite(alpha).all()
    want_out, want_alpha = edge_softmax_aggregate_reference(csr.rowptr, csr.col, q * 100,
                                                            k * 100, v)
    torch.testing.assert_close(out, want_out, atol=1e-4, rtol=1e-4)
    row_sums = torch.zeros(20).index_add_(0, torch.repeat_interleave(
        torch.arange(20), csr.rowptr.diff()), alpha)
    nonempty = csr.rowptr.diff() > 0
    torch.testing.assert_close(row_sums[nonempty], torch.ones(int(nonempty.sum())))
    empty = random_csr(6, 5, empty_fraction=1.0, seed=1)
    with sgfd_fast.use_backend(backend):
        out, alpha = edge_softmax_aggregate(empty.rowptr, empty.col, torch.randn(6, 3),
                                            torch.randn(5, 3), torch.randn(5, 2))
    assert torch.equal(out, torch.zeros(6, 2)) and alpha.numel() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cached_transpose", [False, True])
def test_gradcheck_both_outputs(backend, cached_transpose):
    csr, q, k, v = _case(n_rows=12, n_cols=9, d=3, dv=2, hub=8, seed=2)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    transpose = csr_transpose(csr.rowptr, csr.col, csr.n_cols) if cached_transpose else None
    w = torch.randn(csr.nnz, dtype=torch.float64)

    def f(q, k, v):
        out, alpha = edge_softmax_aggregate(csr.rowptr, csr.col, q, k, v, transpose=transpose)
        return out, alpha * w  # the alpha output feeds a loss too (GRCN's edge weights)

    with sgfd_fast.use_backend(backend):
        assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_shared_node_matrix(backend):
    # GRCN passes one node matrix as query, key and value on a square graph
    csr = random_csr(10, 10, hub_degree=7, seed=3)
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    with sgfd_fast.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda x: edge_softmax_aggregate(csr.rowptr, csr.col, x, x, x), (x,), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_autograd_of_reference(backend):
    csr, q, k, v = _case(d=6, dv=5, seed=4, dtype=torch.float32, index_dtype=torch.int32)
    grads = []
    for fn in (edge_softmax_aggregate, edge_softmax_aggregate_reference):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        with sgfd_fast.use_backend(backend):
            out, alpha = fn(csr.rowptr, csr.col, qq, kk, vv)
            (out.sin().sum() + (alpha * torch.linspace(-1, 1, alpha.numel())).sum()).backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp),
                                     pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("d,dv", [(5, 3), (130, 200)])
def test_backward_op_backends_agree(backend, d, dv):
    csr, q, k, v = _case(d=d, dv=dv, seed=7)
    out, alpha = edge_softmax_aggregate_reference(csr.rowptr, csr.col, q, k, v)
    grad_out = torch.randn_like(out)
    op = torch.ops.sgfd_fast.edge_softmax_aggregate_backward
    for grad_alpha in (None, torch.randn_like(alpha)):
        want = edge_softmax_aggregate_backward_reference(csr.rowptr, csr.col, k, v, alpha,
                                                         grad_out, grad_alpha)
        with sgfd_fast.use_backend(backend):
            assert _backend.serving("edge_softmax_aggregate_backward", "cpu") == backend
            got = op(csr.rowptr, csr.col, k, v, alpha, grad_out, grad_alpha)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    csr, q, k, v = _case(n_rows=10, n_cols=8, d=3, dv=2, hub=6, seed=5, dtype=torch.float32)
    t_rowptr, t_col, t_perm = csr_transpose(csr.rowptr, csr.col, csr.n_cols)
    with sgfd_fast.use_backend(backend):
        for requires_grad in (False, True):
            args = [t.clone().requires_grad_(requires_grad) for t in (q, k, v)]
            torch.library.opcheck(torch.ops.sgfd_fast.edge_softmax_aggregate.default,
                                  (csr.rowptr, csr.col, *args, t_rowptr, t_col, t_perm))
        out, alpha = edge_softmax_aggregate_reference(csr.rowptr, csr.col, q, k, v)
        torch.library.opcheck(torch.ops.sgfd_fast.edge_softmax_aggregate_backward.default,
                              (csr.rowptr, csr.col, k, v, alpha, torch.randn_like(out), None))


def test_torch_compile_smoke():
    csr, q, k, v = _case(d=4, dv=4, seed=6, dtype=torch.float32)
    q.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q):
        out, alpha = edge_softmax_aggregate(csr.rowptr, csr.col, q, k, v, validate=False)
        return out.sum() + alpha.pow(2).sum()

    loss = f(q)
    loss.backward()
    q2 = q.detach().clone().requires_grad_()
    out, alpha = edge_softmax_aggregate_reference(csr.rowptr, csr.col, q2, k, v)
    want = out.sum() + alpha.pow(2).sum()
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(q.grad, q2.grad)


def test_backend_selection():
    assert {"edge_softmax_aggregate", "edge_softmax_aggregate_backward"} <= set(_backend.ops())
    with sgfd_fast.use_backend("reference"):
        assert _backend.serving("edge_softmax_aggregate", "cpu") == "reference"
    want = "cpp" if _ext.cpu is not None else "reference"
    assert _backend.serving("edge_softmax_aggregate", "cpu") == want
    assert _backend.serving("edge_softmax_aggregate_backward", "cpu") == want


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d,dv", [(3, 4), (64, 64), (130, 200)])
def test_cuda_triton_matches_reference(dtype, d, dv):
    assert _backend.serving("edge_softmax_aggregate", "cuda") == "triton"
    assert _backend.serving("edge_softmax_aggregate_backward", "cuda") == "triton"
    csr, q, k, v = _case(n_rows=300, n_cols=200, d=d, dv=dv, hub=150, seed=d, dtype=dtype)
    results = []
    for device, fn in (("cuda", edge_softmax_aggregate), ("cpu", edge_softmax_aggregate_reference)):
        g = csr.to(device)
        qq, kk, vv = (t.to(device).requires_grad_() for t in (q, k, v))
        out, alpha = fn(g.rowptr, g.col, qq, kk, vv)
        w = torch.linspace(-1, 1, alpha.numel(), dtype=dtype, device=device)
        (out.sin().sum() + (alpha * w).sum()).backward()
        results.append([t.detach().cpu() for t in (out, alpha, qq.grad, kk.grad, vv.grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("make, message", [
    (lambda c, q, k, v: (c.rowptr, c.col, q[:, 0], k, v), "query must be 2-D"),
    (lambda c, q, k, v: (c.rowptr, c.col, q.half(), k, v), "float32 or float64"),
    (lambda c, q, k, v: (c.rowptr, c.col, q, k.float(), v), "share a dtype"),
    (lambda c, q, k, v: (c.rowptr, c.col, q[:-1], k, v), "one row per CSR row"),
    (lambda c, q, k, v: (c.rowptr, c.col, q, k[:, :2], v), "must equal query width"),
    (lambda c, q, k, v: (c.rowptr, c.col, q, k, v[:-1]), "one row per key row"),
    (lambda c, q, k, v: (c.rowptr, c.col, q, k[:5], v[:5]), "column indices must lie in"),
    (lambda c, q, k, v: (c.rowptr, c.col.int(), q, k, v), "share an int32 or int64"),
])
def test_bad_input_is_one_clear_error(make, message):
    csr, q, k, v = _case()
    with pytest.raises(InputError, match=message):
        edge_softmax_aggregate(*make(csr, q, k, v))
