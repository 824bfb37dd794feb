"""sample_negatives: one epoch of negatives — 4 per training pair (MAML's count; GRCN draws 1),
uniform over the items that are not the user's training positives.

Workloads: the train pairs of office (small), toysgames-synthetic (paper), the generated graph
(large). Providers: ``reference`` (the vectorised NumPy stream, ``sample_negatives_reference``)
and ``sgfd_fast`` (``sgfd_fast.sampling.sample_negatives``: C++/OpenMP or CUDA). There is no
``compiled`` provider: the reference is NumPy, which ``torch.compile`` does not trace. The check is
exact: every backend draws the same counter-based stream, so the arrays must be identical.
"""

import pytest
import torch

from benchlib import Case

from sgfd_fast import _backend
from sgfd_fast.sampling import positives_csr, sample_negatives, sample_negatives_reference

N_NEG = 4
SEED = 2023
PROVIDERS = ("reference", "sgfd_fast")


@pytest.fixture(scope="module")
def case(size_graph, device):
    g = size_graph
    rowptr, items = positives_csr(g.n_users, g.n_items, g.pairs)
    users = torch.as_tensor(g.pairs[:, 0]).to(device)
    rowptr_d, items_d = rowptr.to(device), items.to(device)
    moved = 8 * (users.numel() * (1 + N_NEG) + rowptr.numel() + items.numel())
    case = Case(op="sample_negatives", workload=g.label, inputs=[users],
                reference=lambda u: sample_negatives_reference(u, g.n_items, rowptr, items,
                                                               N_NEG, SEED),
                sizes={"users": users.numel(), "n_items": g.n_items, "n_neg": N_NEG,
                       "positives": items.numel()},
                traffic={"forward": (moved, None)}, rtol=0, atol=0)
    case.providers = {
        "reference": lambda u: sample_negatives_reference(u, g.n_items, rowptr, items, N_NEG,
                                                          SEED).to(u.device),
        "sgfd_fast": lambda u: sample_negatives(u, g.n_items, rowptr_d, items_d, N_NEG, SEED,
                                                validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sample_negatives(bench, case, provider):
    backend = _backend.serving("sample_negatives", bench.device.type) \
        if provider == "sgfd_fast" else None
    bench.run(case, provider, "forward", case.providers[provider], backend=backend)
