"""propagate: LightGCN-style propagation, 2 layers, layer mean, width 64, on the real train graph
(office at ``small``, toysgames-synthetic at ``paper``) or the generated one (``large``).

Providers:
- ``reference``: sgfd_fast's pure-PyTorch reference (index_select + index_add per layer);
- ``compiled``: ``torch.compile`` of it;
- ``coo``: the released SGFD-BM3 code's path — ``torch.sparse.mm`` per layer on a COO tensor built
  once, never coalesced (row-major indices, as scipy's ``D·A·D`` returns them), then
  ``torch.stack(...).mean(1)``;
- ``csr``: the same loop on a torch CSR tensor;
- ``sgfd_fast``: ``sgfd_fast.ops.propagate`` (automatic backend; the backward is the same op).
"""

import pytest
import torch

from benchlib import MODES, Case, randn, spmm_traffic

from sgfd_fast import _backend
from sgfd_fast.ops import propagate, propagate_reference

WIDTH = 64
LAYERS = 2
PROVIDERS = ("reference", "compiled", "coo", "csr", "sgfd_fast")


def layer_loop(adj, x, n_layers):
    """BM3.forward's propagation, as released: sparse mm per layer, stack, mean."""
    layers = [x]
    for _ in range(n_layers):
        layers.append(torch.sparse.mm(adj, layers[-1]))
    return torch.stack(layers, dim=1).mean(dim=1)


@pytest.fixture(scope="module")
def case(size_graph, device):
    g = size_graph.csr.to(device)
    rowptr, col, val = g.rowptr, g.col, g.val
    n = g.n_rows
    x = randn(n, WIDTH, seed=0, device=device)
    one_layer = spmm_traffic(n, n, g.nnz, WIDTH, index_bytes=col.element_size(),
                             value_bytes=val.element_size())
    traffic = (LAYERS * one_layer[0], LAYERS * one_layer[1])
    case = Case(op="propagate", workload=size_graph.label, inputs=[x], grad_inputs=(0,),
                reference=lambda x: propagate_reference(rowptr, col, val.double(), x, LAYERS),
                sizes={"n_nodes": n, "n_users": size_graph.n_users, "n_items": size_graph.n_items,
                       "nnz": g.nnz, "d": WIDTH, "n_layers": LAYERS,
                       "index_dtype": str(col.dtype)},
                traffic={"forward": traffic, "backward": traffic})
    row = torch.repeat_interleave(torch.arange(n, device=device), rowptr.diff())
    coo = torch.sparse_coo_tensor(torch.stack([row, col.long()]), val, (n, n))
    assert not coo.is_coalesced()  # the released code never coalesces its adjacency
    torch_csr = torch.sparse_csr_tensor(rowptr, col, val, (n, n))
    compiled = torch.compile(propagate_reference)
    case.providers = {
        "reference": lambda x: propagate_reference(rowptr, col, val, x, LAYERS),
        "compiled": lambda x: compiled(rowptr, col, val, x, LAYERS),
        "coo": lambda x: layer_loop(coo, x, LAYERS),
        "csr": lambda x: layer_loop(torch_csr, x, LAYERS),
        "sgfd_fast": lambda x: propagate(rowptr, col, val, x, LAYERS, validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_propagate(bench, case, provider, mode):
    backend = _backend.serving("propagate", bench.device.type) if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
