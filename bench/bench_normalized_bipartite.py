"""normalized_bipartite: building the symmetric D^-1/2 A D^-1/2 user–item graph (CSR) from the
training pairs — done once per model, on the host.

Workloads: the train pairs of office (small), toysgames-synthetic (paper), the generated graph
(large). Providers: ``reference`` (``normalized_bipartite_reference``: NumPy, then a sort into
CSR) and ``sgfd_fast`` (``sgfd_fast.graph.normalized_bipartite``: the C++ builder). There is no
``compiled`` provider (the reference is NumPy). The check: identical ``rowptr`` and ``col``, and
``val`` within float32 rounding. Runs on the CPU whatever the device (``extra_info.device`` says
so).
"""

import numpy as np
import pytest
import torch

from benchlib import Case, device_name

from sgfd_fast import _backend
from sgfd_fast.graph import normalized_bipartite, normalized_bipartite_reference

PROVIDERS = ("reference", "sgfd_fast")


def _triple(csr):
    return csr.rowptr, csr.col, csr.val


@pytest.fixture(scope="module")
def case(size_graph):
    g = size_graph
    pairs = torch.from_numpy(np.ascontiguousarray(g.pairs, dtype=np.int64))
    n, nnz = g.n_nodes, 2 * pairs.shape[0]
    moved = 16 * pairs.shape[0] + 8 * (n + 1) + 12 * nnz  # pairs in; rowptr, col, val out
    case = Case(op="normalized_bipartite", workload=g.label, inputs=[pairs],
                reference=lambda p: _triple(normalized_bipartite_reference(
                    g.n_users, g.n_items, p.numpy())),
                sizes={"n_users": g.n_users, "n_items": g.n_items, "pairs": pairs.shape[0]},
                traffic={"forward": (moved, None)}, rtol=1e-6, atol=0)
    case.providers = {
        "reference": lambda p: _triple(normalized_bipartite_reference(g.n_users, g.n_items,
                                                                      p.numpy())),
        "sgfd_fast": lambda p: _triple(normalized_bipartite(g.n_users, g.n_items, p.numpy())),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
def test_normalized_bipartite(bench, case, provider):
    backend = _backend.serving("bipartite_adj", "cpu") if provider == "sgfd_fast" else None
    bench.run(case, provider, "forward", case.providers[provider], backend=backend,
              extra={"device": device_name("cpu"), "device_type": "cpu"})
