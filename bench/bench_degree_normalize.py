"""degree_normalize: D^-1/2 A D^-1/2 with D the row sums of A, on LATTICE's learned item–item
graph — a kNN pattern (k = 10, the item's real text-feature neighbours at ``small``, office;
toysgames-synthetic's at ``paper``; a random pattern of 100,000 items at ``large``) with
positive cosine-like values, differentiable in the values (LATTICE rebuilds it every epoch).

Providers: ``reference`` (index_add degrees and gathers, autograd through them),
``compiled`` (``torch.compile`` of it), ``dense`` (MMRec's ``compute_normalized_laplacian`` on
the n×n matrix, at ``small`` only: n² memory), ``sgfd_fast`` (``sgfd_fast.ops.degree_normalize``,
its own backward op). All three modes run.
"""

import pytest
import torch

from benchlib import MODES, Case, dataset

from sgfd_fast import _backend
from sgfd_fast.ops import degree_normalize, degree_normalize_reference, knn_graph

K = 10
DATASET = {"small": "office", "paper": "toysgames-synthetic"}
PROVIDERS = ("reference", "compiled", "dense", "sgfd_fast")


def dense_laplacian(rowptr, col, val, n):
    """MMRec's dense formula, gathered back onto the pattern."""
    row = torch.repeat_interleave(torch.arange(n, device=val.device), rowptr.diff())
    adj = torch.zeros(n, n, dtype=val.dtype, device=val.device).index_put((row, col), val)
    d = adj.sum(-1).pow(-0.5)
    d = torch.where(torch.isinf(d), 0.0, d)
    return (d[:, None] * adj * d[None, :])[row, col]


@pytest.fixture(scope="module")
def case(bench_size, device):
    if bench_size in DATASET:
        x = torch.as_tensor(dataset(DATASET[bench_size]).features["text"], dtype=torch.float32)
        col = knn_graph(x, K)[0]
        label = DATASET[bench_size]
    else:
        g = torch.Generator().manual_seed(0)
        col = torch.randint(0, 100_000, (100_000, K), generator=g)
        label = "large"
    n = col.shape[0]
    rowptr = torch.arange(0, n * K + 1, K, device=device)
    col = col.reshape(-1).to(device)
    val = (torch.rand(n * K, generator=torch.Generator().manual_seed(1)) + 0.05).to(device)
    case = Case(op="degree_normalize", workload=label, inputs=[val], grad_inputs=(0,),
                reference=lambda v: degree_normalize_reference(rowptr, col, v, "sym"),
                sizes={"n": n, "nnz": n * K},
                traffic={"forward": (8 * (n + 1 + n * K) + 8 * n * K, 3 * n * K)})
    compiled = torch.compile(degree_normalize_reference)
    case.providers = {
        "reference": lambda v: degree_normalize_reference(rowptr, col, v, "sym"),
        "compiled": lambda v: compiled(rowptr, col, v, "sym"),
        "dense": lambda v: dense_laplacian(rowptr, col, v, n),
        "sgfd_fast": lambda v: degree_normalize(rowptr, col, v, "sym", validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_degree_normalize(bench, case, provider, mode):
    if provider == "dense" and case.sizes["n"] > 5000:
        pytest.skip("the dense n×n formula is run at small only")
    backend = _backend.serving("degree_normalize", bench.device.type) \
        if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
