import importlib.util

import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import csr_transpose, spmm_csr, spmm_csr_reference
from sgfd_fast.testing import random_csr

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def dense_of(csr):
    a = torch.zeros(csr.n_rows, csr.n_cols, dtype=torch.float64)
    row = torch.repeat_interleave(torch.arange(csr.n_rows), csr.rowptr.diff().long())
    a[row, csr.col.long()] = csr.val.double()
    return a


def backends(device):
    names = ["cpp"] if device == "cpu" else ["cuda"]
    if HAS_TRITON:
        names.append("triton")
    return names


@pytest.mark.parametrize("width", [1, 3, 64])
def test_reference_matches_dense_matmul(width):
    csr = random_csr(37, 29, hub_degree=20, seed=width, dtype=torch.float64)
    x = torch.randn(29, width, dtype=torch.float64)
    got = spmm_csr_reference(csr.rowptr, csr.col, csr.val, x)
    torch.testing.assert_close(got, dense_of(csr) @ x)


def test_reference_unit_weights():
    csr = random_csr(12, 9, seed=3, dtype=torch.float64)
    x = torch.randn(9, 5, dtype=torch.float64)
    ones = torch.ones_like(csr.val)
    torch.testing.assert_close(spmm_csr_reference(csr.rowptr, csr.col, None, x),
                               spmm_csr_reference(csr.rowptr, csr.col, ones, x))


def _case(device, dtype, index_dtype, width, seed=0, n_rows=150, n_cols=120, hub=100):
    csr = random_csr(n_rows, n_cols, hub_degree=hub, seed=seed, dtype=dtype,
                     index_dtype=index_dtype).to(device)
    x = torch.randn(n_cols, width, dtype=dtype, device=device)
    return csr, x


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("width", [1, 3, 64, 128])
def test_backends_match_reference(device, dtype, index_dtype, width):
    csr, x = _case(device, dtype, index_dtype, width, seed=width)
    want = spmm_csr_reference(csr.rowptr, csr.col, csr.val, x)
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            assert _backend.serving("spmm_csr", device) == backend
            got = spmm_csr(csr.rowptr, csr.col, csr.val, x)
            got_unit = spmm_csr(csr.rowptr, csr.col, None, x)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"backend {backend}")
        torch.testing.assert_close(got_unit, spmm_csr_reference(csr.rowptr, csr.col, None, x),
                                   **TOL[dtype], msg=f"backend {backend} (unit weights)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_hub_row_and_all_empty(device):
    # One row with 10^4 neighbours, and a graph whose rows are all empty.
    csr, x = _case(device, torch.float32, torch.int64, 64, n_rows=40, n_cols=12000, hub=10000)
    empty = random_csr(8, 5, empty_fraction=1.0, seed=1).to(device)
    xe = torch.randn(5, 7, device=device)
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            torch.testing.assert_close(spmm_csr(csr.rowptr, csr.col, csr.val, x),
                                       spmm_csr_reference(csr.rowptr, csr.col, csr.val, x),
                                       atol=1e-3, rtol=1e-4)  # 10^4-term fp32 sums
            assert torch.equal(spmm_csr(empty.rowptr, empty.col, empty.val, xe),
                               torch.zeros(8, 7, device=device))


def test_cpp_is_bitwise_deterministic():
    csr, x = _case("cpu", torch.float32, torch.int64, 64, n_rows=2000, n_cols=2000, hub=1500)
    with sgfd_fast.use_backend("cpp"):
        first = spmm_csr(csr.rowptr, csr.col, csr.val, x)
        for _ in range(3):
            assert torch.equal(first, spmm_csr(csr.rowptr, csr.col, csr.val, x))


def test_non_contiguous_x_is_handled():
    csr, _ = _case("cpu", torch.float32, torch.int64, 8)
    x = torch.randn(16, csr.n_cols).t()  # (n_cols, 16) transposed view
    assert not x.is_contiguous()
    torch.testing.assert_close(spmm_csr(csr.rowptr, csr.col, csr.val, x),
                               spmm_csr_reference(csr.rowptr, csr.col, csr.val, x.contiguous()))


def test_transpose_is_exact():
    csr = random_csr(23, 31, hub_degree=20, seed=5, dtype=torch.float64)
    t_rowptr, t_col, t_perm = csr_transpose(csr.rowptr, csr.col, csr.n_cols)
    x = torch.randn(23, 4, dtype=torch.float64)
    torch.testing.assert_close(spmm_csr_reference(t_rowptr, t_col, csr.val[t_perm], x),
                               dense_of(csr).t() @ x)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("cached_transpose", [False, True])
def test_gradcheck(backend, cached_transpose):
    csr = random_csr(14, 11, hub_degree=9, seed=2, dtype=torch.float64)
    val = csr.val.clone().requires_grad_()
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    transpose = csr.transpose() if cached_transpose else None
    with sgfd_fast.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda v, x: spmm_csr(csr.rowptr, csr.col, v, x, transpose=transpose), (val, x))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_backend_gradients_match_reference(device):
    csr, x = _case(device, torch.float32, torch.int32, 33)
    grads = {}
    for backend in ["reference"] + backends(device):
        val = csr.val.clone().requires_grad_()
        xx = x.clone().requires_grad_()
        with sgfd_fast.use_backend(backend):
            out = spmm_csr(csr.rowptr, csr.col, val, xx, transpose=csr.transpose())
            (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        grads[backend] = (val.grad, xx.grad)
    for backend in backends(device):
        for got, want in zip(grads[backend], grads["reference"]):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    csr = random_csr(10, 8, hub_degree=6, seed=4)
    t_rowptr, t_col, t_perm = csr.transpose()
    with sgfd_fast.use_backend(backend):
        for requires_grad in (False, True):
            x = torch.randn(8, 5, requires_grad=requires_grad)
            val = csr.val.clone().requires_grad_(requires_grad)
            torch.library.opcheck(torch.ops.sgfd_fast.spmm_csr.default,
                                  (csr.rowptr, csr.col, val, x, t_rowptr, t_col, t_perm))
            torch.library.opcheck(torch.ops.sgfd_fast.spmm_csr.default,
                                  (csr.rowptr, csr.col, None, x, None, None, None))


def test_torch_compile_smoke():
    csr = random_csr(30, 20, seed=6)
    x = torch.randn(20, 16, requires_grad=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return torch.relu(spmm_csr(csr.rowptr, csr.col, csr.val, x, validate=False)).sum()

    loss = f(x)
    loss.backward()
    x2 = x.detach().clone().requires_grad_()
    torch.relu(spmm_csr_reference(csr.rowptr, csr.col, csr.val, x2)).sum().backward()
    torch.testing.assert_close(loss, torch.relu(
        spmm_csr_reference(csr.rowptr, csr.col, csr.val, x.detach())).sum())
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("make, message", [
    (lambda c, x: (c.rowptr, c.col, c.val, x[:, 0]), "must be 2-D"),
    (lambda c, x: (c.rowptr, c.col, c.val, x.half()), "float32 or float64"),
    (lambda c, x: (c.rowptr, c.col.int(), c.val, x), "share an int32 or int64"),
    (lambda c, x: (c.rowptr, c.col, c.val[:-1], x), "one entry per column index"),
    (lambda c, x: (c.rowptr, c.col, c.val, x[:5]), "column indices must lie in"),
    (lambda c, x: (c.rowptr, c.col, c.val.double(), x), "must match x dtype"),
])
def test_bad_input_is_one_clear_error(make, message):
    csr = random_csr(12, 10, hub_degree=9, seed=7)
    x = torch.randn(10, 4)
    with pytest.raises(InputError, match=message):
        spmm_csr(*make(csr, x))


def test_reference_backend_env(monkeypatch):
    monkeypatch.setenv("SGFD_FAST_BACKEND", "reference")
    assert _backend.serving("spmm_csr", "cpu") == "reference"
    monkeypatch.setenv("SGFD_FAST_BACKEND", "spmm_csr=reference,propagate=cpp")
    assert _backend.serving("spmm_csr", "cpu") == "reference"
    monkeypatch.setenv("SGFD_FAST_BACKEND", "auto")
    assert _backend.serving("spmm_csr", "cpu") == ("cpp" if _ext.cpu is not None else "reference")
