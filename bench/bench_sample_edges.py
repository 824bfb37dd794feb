"""sample_edges: FREEDOM's per-epoch degree-sensitive edge pruning — keep 20 % of the training
pairs (``dropout: 0.8``, the first of MMRec's grid) drawn without replacement with probability
∝ 1/sqrt(d_u·d_i).

Workloads: the train pairs of office (small), toysgames-synthetic (paper), the generated graph
(large). Providers: ``reference`` (``sample_edges_reference``: PyTorch hash, log, stable sort),
``multinomial`` (what MMRec does: ``torch.multinomial(weight, n_keep)`` from the global RNG:
another draw of the same distribution, so it is checked for size and distinct ids only),
``sgfd_fast`` (``sgfd_fast.ops.sample_edges``: C++/OpenMP). No ``compiled`` provider: the
reference ends in a sort of a host tensor. The check of ``sgfd_fast`` is exact (the same
counter-based draw).
"""

import dataclasses

import pytest
import torch

from benchlib import Case

from sgfd_fast import _backend
from sgfd_fast.ops import sample_edges, sample_edges_reference

DROPOUT = 0.8
KEY = 2023
PROVIDERS = ("reference", "multinomial", "sgfd_fast")


def check_multinomial(n_keep):
    def check(got, want, mode):
        if got.numel() != n_keep or got.unique().numel() != n_keep:
            pytest.fail(f"sample_edges: multinomial returned {got.numel()} ids, "
                        f"{got.unique().numel()} distinct, expected {n_keep}")
    return check


@pytest.fixture(scope="module")
def case(size_graph):
    g = size_graph
    pairs = torch.as_tensor(g.pairs)
    d_u = torch.bincount(pairs[:, 0], minlength=g.n_users).double() + 1e-7
    d_i = torch.bincount(pairs[:, 1], minlength=g.n_items).double() + 1e-7
    weight = (d_u[pairs[:, 0]].pow(-0.5) * d_i[pairs[:, 1]].pow(-0.5)).float()
    n_keep = int(weight.numel() * (1.0 - DROPOUT))
    case = Case(op="sample_edges", workload=g.label, inputs=[weight],
                reference=lambda w: sample_edges_reference(w, n_keep, KEY),
                sizes={"nnz": weight.numel(), "n_keep": n_keep},
                traffic={"forward": (4 * weight.numel() + 8 * n_keep, None)}, rtol=0, atol=0)
    case.providers = {
        "reference": lambda w: sample_edges_reference(w, n_keep, KEY),
        "multinomial": lambda w: torch.multinomial(w, n_keep),
        "sgfd_fast": lambda w: sample_edges(w, n_keep, KEY),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sample_edges(bench, case, provider):
    backend = _backend.serving("sample_edges", "cpu") if provider == "sgfd_fast" else None
    fn = case.providers[provider]
    if provider == "multinomial":
        case = dataclasses.replace(case, check=check_multinomial(case.sizes["n_keep"]))
    bench.run(case, provider, "forward", fn, backend=backend)
