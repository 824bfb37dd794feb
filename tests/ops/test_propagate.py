import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend
from sgfd_fast.errors import InputError
from sgfd_fast.graph import normalized_bipartite
from sgfd_fast.ops import propagate, propagate_reference
from sgfd_fast.testing import random_normalized_graph, threads


def dense_adj(g):
    a = torch.zeros(g.n_rows, g.n_cols, dtype=torch.float64)
    row = torch.repeat_interleave(torch.arange(g.n_rows), g.rowptr.diff())
    a[row, g.col] = g.val.double()
    return a


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_reference_matches_dense_powers(n_layers):
    g = random_normalized_graph(20, 15, 60, seed=n_layers)
    a = dense_adj(g)
    torch.testing.assert_close(a, a.t())
    x = torch.randn(35, 6, dtype=torch.float64)
    want, layer = x.clone(), x
    for _ in range(n_layers):
        layer = a @ layer
        want += layer
    got = propagate_reference(g.rowptr, g.col, g.val.double(), x, n_layers)
    torch.testing.assert_close(got, want / (n_layers + 1))


def test_isolated_nodes_keep_only_layer_zero():
    g = random_normalized_graph(10, 8, 20, seed=1)  # last 2 users and items are isolated
    x = torch.randn(18, 4)
    out = g.propagate(x, 2)
    for node in (8, 9, 16, 17):
        torch.testing.assert_close(out[node], x[node] / 3)
    assert torch.isfinite(out).all()


def test_gradcheck_and_symmetric_backward():
    g = random_normalized_graph(9, 7, 25, seed=2).to(dtype=torch.float64)
    x = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: g.propagate(x, 2), (x,))


def test_opcheck():
    g = random_normalized_graph(9, 7, 25, seed=3)
    for requires_grad in (False, True):
        x = torch.randn(16, 5, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.sgfd_fast.propagate.default,
                              (g.rowptr, g.col, g.val, x, 2))


def test_torch_compile_smoke():
    g = random_normalized_graph(9, 7, 25, seed=4)
    x = torch.randn(16, 8, requires_grad=True)
    f = torch.compile(lambda x: g.propagate(x, 2).square().sum(), fullgraph=True,
                      backend="aot_eager")
    f(x).backward()
    x2 = x.detach().clone().requires_grad_()
    propagate_reference(g.rowptr, g.col, g.val, x2, 2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_bad_input():
    g = random_normalized_graph(9, 7, 25, seed=5)
    with pytest.raises(InputError, match="must be square"):
        propagate(g.rowptr, g.col, g.val, torch.randn(5, 3), 1)
    with pytest.raises(InputError, match="n_layers must be >= 0"):
        propagate(g.rowptr, g.col, g.val, torch.randn(16, 3), -1)
    with pytest.raises(InputError, match="symmetric"):
        sgfd_fast.graph.CSR(g.rowptr, g.col, g.val, 16).propagate(torch.randn(16, 3), 1)


# ---- compiled backends --------------------------------------------------------------------------

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def compiled(device):
    return "cpp" if device == "cpu" else "cuda"


def _graph(device, dtype, index_dtype, seed=0, n_users=120, n_items=90, n_edges=700):
    g = random_normalized_graph(n_users, n_items, n_edges, seed=seed)
    return sgfd_fast.graph.CSR(g.rowptr.to(index_dtype).to(device),
                               g.col.to(index_dtype).to(device),
                               g.val.to(dtype=dtype, device=device), g.n_cols, symmetric=True)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("width", [1, 3, 64, 128])
def test_backend_matches_reference(device, dtype, index_dtype, width):
    g = _graph(device, dtype, index_dtype, seed=width)
    x = torch.randn(g.n_rows, width, dtype=dtype, device=device)
    for n_layers in (0, 1, 2, 3, 4):
        want = propagate_reference(g.rowptr, g.col, g.val, x, n_layers)
        with sgfd_fast.use_backend(compiled(device)):
            assert _backend.serving("propagate", device) == compiled(device)
            got = g.propagate(x, n_layers)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"L={n_layers}")


@pytest.mark.parametrize("width", [5, 40, 200])  # tails of the register chunks, two chunks
def test_cpp_odd_widths_and_strided_input(width):
    g = _graph("cpu", torch.float32, torch.int64, seed=3)
    x = torch.randn(width, g.n_rows).t()  # a transposed view is copied once
    with sgfd_fast.use_backend("cpp"):
        got = g.propagate(x, 2)
    torch.testing.assert_close(got, propagate_reference(g.rowptr, g.col, g.val, x, 2),
                               **TOL[x.dtype])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_hub_row_isolated_nodes_and_empty_graph(device):
    # User 0 has 10^4 items (a hub row and 10^4 rows pointing back at it); 3 isolated users.
    pairs = np.concatenate([np.stack([np.zeros(10_000, np.int64), np.arange(10_000)], 1),
                            np.stack([np.arange(1, 50), np.arange(49)], 1)])
    g = normalized_bipartite(53, 10_000, pairs, device=device)
    x = torch.randn(g.n_rows, 64, device=device)
    with sgfd_fast.use_backend(compiled(device)):
        got = g.propagate(x, 3)
    torch.testing.assert_close(got, propagate_reference(g.rowptr, g.col, g.val, x, 3),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[50:53], x[50:53] / 4)
    empty = normalized_bipartite(4, 3, np.zeros((0, 2), np.int64), device=device)
    with sgfd_fast.use_backend(compiled(device)):
        assert torch.equal(empty.propagate(torch.ones(7, 5, device=device), 2),
                           torch.full((7, 5), 1 / 3, device=device))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_bitwise_deterministic(device):
    g = _graph(device, torch.float32, torch.int64, n_users=1500, n_items=1000, n_edges=20000)
    x = torch.randn(g.n_rows, 64, device=device)
    with sgfd_fast.use_backend(compiled(device)):
        first = g.propagate(x, 3)
        for _ in range(3):
            assert torch.equal(first, g.propagate(x, 3))


def test_cpp_independent_of_thread_count():
    g = random_normalized_graph(700, 500, 9000, seed=1)
    x = torch.randn(1200, 37)
    outs = []
    for n in (1, 2, 3):
        with threads(n), sgfd_fast.use_backend("cpp"):
            outs.append(g.propagate(x, 2))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_backend_gradients_match_reference(device):
    g = _graph(device, torch.float32, torch.int32, seed=7)
    x = torch.randn(g.n_rows, 33, device=device)
    weight = torch.linspace(-1, 1, x.numel(), device=device).view_as(x)
    grads = {}
    for backend in ("reference", compiled(device)):
        xx = x.clone().requires_grad_()
        with sgfd_fast.use_backend(backend):
            (g.propagate(xx, 2) * weight).sum().backward()
        grads[backend] = xx.grad
    torch.testing.assert_close(grads[compiled(device)], grads["reference"], atol=1e-5, rtol=1e-5)


def test_cpp_gradcheck_and_opcheck():
    g = random_normalized_graph(9, 7, 25, seed=2).to(dtype=torch.float64)
    x = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    with sgfd_fast.use_backend("cpp"):
        assert torch.autograd.gradcheck(lambda x: g.propagate(x, 3), (x,))
        x = torch.randn(16, 5, requires_grad=True)
        torch.library.opcheck(torch.ops.sgfd_fast.propagate.default,
                              (g.rowptr, g.col, g.val.float(), x, 2))


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float32, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.float64, marks=pytest.mark.cuda),
])
def test_triton_matches_reference(device, dtype):
    # Under the interpreter on CPU: 20 rows x 1-2 column blocks per launch, a handful of launches.
    if not _backend.triton_usable(device):
        pytest.skip("Triton is not usable here")
    g = _graph(device, dtype, torch.int32, seed=11, n_users=12, n_items=8, n_edges=40)
    for width, n_layers in ((3, 3), (130, 1)):
        x = torch.randn(g.n_rows, width, dtype=dtype, device=device)
        with sgfd_fast.use_backend("triton"):
            assert _backend.serving("propagate", device) == "triton"
            got = g.propagate(x, n_layers)
        torch.testing.assert_close(got, propagate_reference(g.rowptr, g.col, g.val, x, n_layers),
                                   **TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("n_layers", [2, 3])
def test_cuda_triton_float64_mean_is_exact(n_layers):
    # The mean's 1/(L+1) must be taken in float64 (a Python float reaches a GPU kernel as fp32:
    # ~1e-8 relative off); tests/aot_sm90.py checks the kind on every push.
    g = _graph("cuda", torch.float64, torch.int64, seed=7)
    x = torch.randn(g.n_rows, 64, dtype=torch.float64, device="cuda")
    want = propagate_reference(g.rowptr, g.col, g.val, x, n_layers)
    with sgfd_fast.use_backend("triton"):
        got = g.propagate(x, n_layers)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


# ---- out=: a caller's reused buffer ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_out_buffer_equals_the_functional_result(backend):
    # out= starts poisoned (NaN): every element must be written, bitwise as without out=
    if backend == "triton" and not _backend.triton_usable("cpu"):
        pytest.skip("Triton is not usable here")
    small = backend == "triton"  # the interpreter: a handful of launches
    g = _graph("cpu", torch.float32, torch.int64, seed=4, **(
        dict(n_users=12, n_items=8, n_edges=40) if small else {}))
    x = torch.randn(g.n_rows, 5 if small else 37)
    with sgfd_fast.use_backend(backend):
        for n_layers in (0, 1, 2, 3):
            out = torch.full_like(x, float("nan"))
            got = g.propagate(x, n_layers, out=out)
            assert got is out
            assert torch.equal(out, g.propagate(x, n_layers)), f"L={n_layers}"
            for n_scratch in (1, 2):  # the layers kept between layers, in a caller's buffers
                scratch = [torch.full_like(x, float("nan")) for _ in range(n_scratch)]
                got = g.propagate(x, n_layers, out=out.fill_(float("nan")), scratch=scratch)
                assert torch.equal(got, g.propagate(x, n_layers)), f"L={n_layers}"
                if backend == "cpp" and n_layers >= 2:  # used, not allocated afresh
                    assert not scratch[0].isnan().any()
            with torch.no_grad():  # allowed for an x that needs a gradient, without grad mode
                xr = x.clone().requires_grad_()
                assert torch.equal(g.propagate(xr, n_layers, out=out.fill_(float("nan"))),
                                   g.propagate(x, n_layers))


@pytest.mark.cuda
def test_cuda_out_buffer_equals_the_functional_result():
    g = _graph("cuda", torch.float32, torch.int32, seed=6)
    x = torch.randn(g.n_rows, 37, device="cuda")
    with sgfd_fast.use_backend("cuda"):
        for n_layers in (0, 1, 3):
            out = torch.full_like(x, float("nan"))
            assert g.propagate(x, n_layers, out=out) is out
            assert torch.equal(out, g.propagate(x, n_layers)), f"L={n_layers}"


def test_out_buffer_bad_input():
    g = _graph("cpu", torch.float32, torch.int64, seed=5)
    x = torch.randn(g.n_rows, 8)
    with pytest.raises(InputError, match="not differentiable"):
        g.propagate(x.clone().requires_grad_(), 1, out=torch.empty_like(x))
    with pytest.raises(InputError, match="must be a contiguous"):
        g.propagate(x, 1, out=torch.empty(g.n_rows, 9))
    with pytest.raises(InputError, match="must be a contiguous"):
        g.propagate(x, 1, out=torch.empty(g.n_rows, 8, dtype=torch.float64))
    with pytest.raises(InputError, match="not contiguous"):
        g.propagate(x, 1, out=torch.empty(8, g.n_rows).t())
    with pytest.raises(InputError, match="out must not share memory with x"):
        g.propagate(x, 1, out=x)
    out = torch.empty_like(x)
    with pytest.raises(InputError, match="only used with out="):
        g.propagate(x, 2, scratch=[out])
    with pytest.raises(InputError, match="at most 2"):
        g.propagate(x, 2, out=out, scratch=[torch.empty_like(x) for _ in range(3)])
    with pytest.raises(InputError, match=r"scratch\[0\] must be a contiguous"):
        g.propagate(x, 2, out=out, scratch=[torch.empty(3, 8)])
    with pytest.raises(InputError, match=r"scratch\[1\] must not share memory with out"):
        g.propagate(x, 3, out=out, scratch=[torch.empty_like(x), out])
    with pytest.raises(InputError, match=r"scratch\[0\] must not share memory with x"):
        g.propagate(x, 3, out=out, scratch=[x])
    both = torch.randn(2 * g.n_rows, 8)  # disjoint halves of one storage are fine
    g.propagate(both[:g.n_rows], 1, out=both[g.n_rows:])
