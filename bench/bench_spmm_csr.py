"""spmm_csr: CSR × dense (d = 64) on the normalized user–item graph of the ``--bench-size``.

Providers: ``reference`` (index_select + index_add, what a user would write), ``compiled``
(``torch.compile`` of it), ``csr`` (``torch.sparse.mm`` on a torch CSR tensor), ``sgfd_fast``
(``sgfd_fast.ops.spmm_csr`` with its cached transpose, automatic backend).
"""

import pytest
import torch

from benchlib import MODES, Case, randn, spmm_traffic

from sgfd_fast import _backend
from sgfd_fast.ops import spmm_csr, spmm_csr_reference

WIDTH = 64
PROVIDERS = ("reference", "compiled", "csr", "sgfd_fast")


@pytest.fixture(scope="module")
def case(size_graph, device):
    g = size_graph.csr.to(device)
    rowptr, col, val = g.rowptr, g.col, g.val
    x = randn(g.n_cols, WIDTH, seed=0, device=device)
    traffic = spmm_traffic(g.n_rows, g.n_cols, g.nnz, WIDTH, index_bytes=col.element_size(),
                           value_bytes=val.element_size())
    case = Case(op="spmm_csr", workload=size_graph.label, inputs=[x], grad_inputs=(0,),
                reference=lambda x: spmm_csr_reference(rowptr, col, val.double(), x),
                sizes={"n_rows": g.n_rows, "n_cols": g.n_cols, "nnz": g.nnz, "d": WIDTH,
                       "index_dtype": str(col.dtype)},
                traffic={"forward": traffic, "backward": traffic})
    transpose = g.transpose()
    torch_csr = torch.sparse_csr_tensor(rowptr, col, val, (g.n_rows, g.n_cols))
    compiled = torch.compile(spmm_csr_reference)
    case.providers = {
        "reference": lambda x: spmm_csr_reference(rowptr, col, val, x),
        "compiled": lambda x: compiled(rowptr, col, val, x),
        "csr": lambda x: torch.sparse.mm(torch_csr, x),
        "sgfd_fast": lambda x: spmm_csr(rowptr, col, val, x, transpose=transpose, validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_spmm_csr(bench, case, provider, mode):
    backend = _backend.serving("spmm_csr", bench.device.type) if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
