"""edge_softmax_aggregate: GRCN's graph attention — for every node, a softmax over its edges of
``<query[r], key[c]>`` and the attention-weighted sum of ``value[c]`` — on the user–item graph of
the ``--bench-size`` (both directions, as GRCN's last GAT layer), d = 64. Both outputs (the
aggregate and the per-edge attention) are differentiable; gradients flow to query, key and value.

Providers: ``reference`` (gathers, scatter max/sum, index_add), ``compiled`` (``torch.compile``
of it), ``sgfd_fast`` (``sgfd_fast.ops.edge_softmax_aggregate`` with the graph's cached
transpose; automatic backend: cpp on CPU, triton on CUDA, the only compiled backend there;
``extra_info.backend`` records which).
"""

import pytest
import torch

from benchlib import MODES, Case, randn

from sgfd_fast import _backend
from sgfd_fast.ops import edge_softmax_aggregate, edge_softmax_aggregate_reference

WIDTH = 64
PROVIDERS = ("reference", "compiled", "sgfd_fast")


@pytest.fixture(scope="module")
def case(size_graph, device):
    g = size_graph.csr.to(device)
    rowptr, col = g.rowptr, g.col
    n, nnz = g.n_rows, g.nnz
    q, k, v = (randn(n, WIDTH, seed=s, device=device, scale=0.3) for s in (0, 1, 2))
    idx = col.element_size() * (n + 1 + nnz)
    forward = (idx + 4 * (4 * n * WIDTH + nnz), 4 * nnz * WIDTH)
    backward = (2 * idx + 4 * (7 * n * WIDTH + 2 * nnz), 8 * nnz * WIDTH)
    case = Case(op="edge_softmax_aggregate", workload=size_graph.label, inputs=[q, k, v],
                grad_inputs=(0, 1, 2),
                reference=lambda q, k, v: edge_softmax_aggregate_reference(rowptr, col, q, k, v),
                sizes={"n_nodes": n, "nnz": nnz, "d": WIDTH, "index_dtype": str(col.dtype)},
                traffic={"forward": forward, "backward": backward}, norm_rtol=1e-4)
    transpose = g.transpose()
    compiled = torch.compile(edge_softmax_aggregate_reference)
    case.providers = {
        "reference": lambda q, k, v: edge_softmax_aggregate_reference(rowptr, col, q, k, v),
        "compiled": lambda q, k, v: compiled(rowptr, col, q, k, v),
        "sgfd_fast": lambda q, k, v: edge_softmax_aggregate(rowptr, col, q, k, v,
                                                            transpose=transpose, validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_edge_softmax_aggregate(bench, case, provider, mode):
    backend = _backend.serving("edge_softmax_aggregate", bench.device.type) \
        if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
