import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend
from sgfd_fast.errors import InputError
from sgfd_fast.ops import sddmm_csr, sddmm_csr_reference, spmm_csr
from sgfd_fast.testing import random_csr

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def compiled(device):
    return "cpp" if device == "cpu" else "cuda"


def test_reference_matches_first_principles():
    csr = random_csr(15, 12, hub_degree=10, seed=1, dtype=torch.float64)
    a, b = torch.randn(15, 4, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    row = torch.repeat_interleave(torch.arange(15), csr.rowptr.diff())
    want = torch.stack([a[r] @ b[c] for r, c in zip(row.tolist(), csr.col.tolist())])
    torch.testing.assert_close(sddmm_csr_reference(csr.rowptr, csr.col, a, b), want)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("width", [1, 3, 64, 128])
def test_backend_matches_reference(device, dtype, index_dtype, width):
    csr = random_csr(150, 120, hub_degree=100, seed=width, dtype=dtype,
                     index_dtype=index_dtype).to(device)
    a = torch.randn(150, width, dtype=dtype, device=device)
    b = torch.randn(120, width, dtype=dtype, device=device)
    with sgfd_fast.use_backend(compiled(device)):
        assert _backend.serving("sddmm_csr", device) == compiled(device)
        got = sddmm_csr(csr.rowptr, csr.col, a, b)
    torch.testing.assert_close(got, sddmm_csr_reference(csr.rowptr, csr.col, a, b), **TOL[dtype])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_hub_row_empty_graph_and_determinism(device):
    csr = random_csr(30, 12000, hub_degree=10000, seed=2).to(device)
    a, b = torch.randn(30, 64, device=device), torch.randn(12000, 64, device=device)
    empty = random_csr(6, 5, empty_fraction=1.0, seed=1).to(device)
    with sgfd_fast.use_backend(compiled(device)):
        first = sddmm_csr(csr.rowptr, csr.col, a, b)
        assert torch.equal(first, sddmm_csr(csr.rowptr, csr.col, a, b))
        assert sddmm_csr(empty.rowptr, empty.col, torch.ones(6, 3, device=device),
                         torch.ones(5, 3, device=device)).shape == (0,)
    torch.testing.assert_close(first, sddmm_csr_reference(csr.rowptr, csr.col, a, b),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck_and_spmm_val_gradient(backend):
    csr = random_csr(14, 11, hub_degree=9, seed=3, dtype=torch.float64)
    a = torch.randn(14, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    val = csr.val.clone().requires_grad_()
    with sgfd_fast.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: sddmm_csr(csr.rowptr, csr.col, a, b), (a, b))
        # a cached transpose of the pattern serves b's gradient
        assert torch.autograd.gradcheck(
            lambda a, b: sddmm_csr(csr.rowptr, csr.col, a, b, transpose=csr.transpose()), (a, b))
        # spmm_csr's edge-weight gradient goes through sddmm_csr; second order through both.
        assert torch.autograd.gradgradcheck(
            lambda v, x: spmm_csr(csr.rowptr, csr.col, v, x, transpose=csr.transpose()),
            (val, b))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    csr = random_csr(10, 8, hub_degree=6, seed=4)
    with sgfd_fast.use_backend(backend):
        a, b = torch.randn(10, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
        op = torch.ops.sgfd_fast.sddmm_csr.default
        torch.library.opcheck(op, (csr.rowptr, csr.col, a, b, None, None, None))
        torch.library.opcheck(op, (csr.rowptr, csr.col, a, b, *csr.transpose()))


def test_torch_compile_smoke():
    csr = random_csr(20, 16, seed=6)
    a = torch.randn(20, 8, requires_grad=True)
    b = torch.randn(16, 8)
    f = torch.compile(lambda a: sddmm_csr(csr.rowptr, csr.col, a, b, validate=False).square().sum(),
                      fullgraph=True, backend="aot_eager")
    f(a).backward()
    a2 = a.detach().clone().requires_grad_()
    sddmm_csr_reference(csr.rowptr, csr.col, a2, b).square().sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)


@pytest.mark.parametrize("make, message", [
    (lambda c, a, b: (c.rowptr, c.col, a[:, 0], b), "must be 2-D"),
    (lambda c, a, b: (c.rowptr, c.col, a, b.double()), "share float32 or float64"),
    (lambda c, a, b: (c.rowptr, c.col, a, b[:, :2]), "same width"),
    (lambda c, a, b: (c.rowptr, c.col, a[:5], b), "rows but a has"),
    (lambda c, a, b: (c.rowptr, c.col, a, b[:3]), "column indices must lie in"),
])
def test_bad_input(make, message):
    csr = random_csr(12, 10, hub_degree=9, seed=7)
    with pytest.raises(InputError, match=message):
        sddmm_csr(*make(csr, torch.randn(12, 4), torch.randn(10, 4)))
