import pytest
import torch

import sgfd_fast
from sgfd_fast.errors import InputError
from sgfd_fast.ops import propagate, propagate_reference
from sgfd_fast.testing import random_normalized_graph


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
