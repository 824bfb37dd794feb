"""sddmm_csr: per-edge dot products <a[row e], b[col e]> (d = 64) on the normalized user–item graph
of the ``--bench-size`` — the edge-weight gradient of spmm_csr (GRCN's weighted propagation).

Providers: ``reference`` (two index_selects, a product and a row sum: what a user would write),
``compiled`` (``torch.compile`` of it), ``sgfd_fast`` (``sgfd_fast.ops.sddmm_csr``, automatic
backend, with the graph's cached transpose for b's gradient). Differentiable in a and b, so all
three modes run.
"""

import pytest
import torch

from benchlib import MODES, Case, randn

from sgfd_fast import _backend
from sgfd_fast.ops import sddmm_csr, sddmm_csr_reference

WIDTH = 64
PROVIDERS = ("reference", "compiled", "sgfd_fast")


@pytest.fixture(scope="module")
def case(size_graph, device):
    g = size_graph.csr.to(device)
    rowptr, col = g.rowptr, g.col
    a = randn(g.n_rows, WIDTH, seed=0, device=device)
    b = randn(g.n_cols, WIDTH, seed=1, device=device)
    # both dense operands gathered once per edge, indices read once, one value written per edge
    moved = col.element_size() * (g.n_rows + 1 + g.nnz) + 4 * (2 * g.nnz * WIDTH + g.nnz)
    case = Case(op="sddmm_csr", workload=size_graph.label, inputs=[a, b], grad_inputs=(0, 1),
                reference=lambda a, b: sddmm_csr_reference(rowptr, col, a, b),
                sizes={"n_rows": g.n_rows, "n_cols": g.n_cols, "nnz": g.nnz, "d": WIDTH},
                traffic={"forward": (moved, 2 * g.nnz * WIDTH)})
    compiled = torch.compile(sddmm_csr_reference)
    case.providers = {
        "reference": lambda a, b: sddmm_csr_reference(rowptr, col, a, b),
        "compiled": lambda a, b: compiled(rowptr, col, a, b),
        "sgfd_fast": lambda a, b: sddmm_csr(rowptr, col, a, b, transpose=g.transpose(),
                                            validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_sddmm_csr(bench, case, provider, mode):
    backend = _backend.serving("sddmm_csr", bench.device.type) if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
