"""knn_graph: the item–item kNN graph of FREEDOM, LATTICE and MGCN — every item's 10 nearest
items by cosine of its text features (384 wide, real at ``small``: office's 2,406 items;
toysgames-synthetic's 11,673 items at ``paper``; no ``large`` workload).

Providers: ``reference`` (row blocks of 1,024 scores and a stable sort: the op's exact tie rule),
``compiled`` (``torch.compile`` of it), ``dense_topk`` (what MMRec does: ``build_sim``'s n×n
cosine matrix and ``torch.topk``), ``sgfd_fast`` (``sgfd_fast.ops.knn_graph``: no score matrix).
Forward only (not differentiable).

Check (before timing): the returned cosines equal the float64 reference's top-k cosines, every
returned id scores its returned cosine, no id is returned twice in a row. Ids are not compared
one to one: float32 rounding may reorder near-ties.
"""

import pytest
import torch

from benchlib import Case, dataset

from sgfd_fast import _backend
from sgfd_fast.ops import knn_graph, knn_graph_reference

K = 10
DATASET = {"small": "office", "paper": "toysgames-synthetic"}
PROVIDERS = ("reference", "compiled", "dense_topk", "sgfd_fast")


def dense_topk(x, k):
    """MMRec's build_sim + topk: the whole n×n cosine matrix."""
    unit = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    val, col = torch.topk(unit @ unit.T, k, dim=-1)
    return col, val


def check_knn(x, *, rtol=1e-5, atol=1e-4):
    def check(got, want, mode):
        col, val = (t.detach().cpu() for t in got)
        where = "knn_graph"
        want_val = want[1].cpu().float()
        if col.shape != want_val.shape or val.shape != want_val.shape:
            pytest.fail(f"{where}: shapes {tuple(col.shape)}, {tuple(val.shape)}, expected "
                        f"{tuple(want_val.shape)}")
        torch.testing.assert_close(val.float(), want_val, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{where}: top-k cosines differ: {m}")
        unit = torch.nn.functional.normalize(x.double().cpu(), dim=1)
        exact = (unit.unsqueeze(1) * unit[col.long()]).sum(-1)
        torch.testing.assert_close(val.double(), exact, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{where}: an id does not score its cosine: {m}")
        if bool((col.sort(1).values.diff(dim=1) == 0).any()):
            pytest.fail(f"{where}: a neighbour is returned twice for one item")
    return check


@pytest.fixture(scope="module")
def case(bench_size, device):
    if bench_size not in DATASET:
        pytest.skip("knn_graph has no large workload (n² scores of 100k items)")
    ds = dataset(DATASET[bench_size])
    x = torch.as_tensor(ds.features["text"], dtype=torch.float32).to(device)
    n, d = x.shape
    case = Case(op="knn_graph", workload=ds.name, inputs=[x],
                reference=lambda x: knn_graph_reference(x, K),
                sizes={"n_items": n, "d": d, "k": K},
                traffic={"forward": (4 * n * d + 12 * n * K, 2 * n * n * d)},
                check=check_knn(x))
    compiled = torch.compile(knn_graph_reference)
    case.providers = {
        "reference": lambda x: knn_graph_reference(x, K),
        "compiled": lambda x: compiled(x, K),
        "dense_topk": lambda x: dense_topk(x, K),
        "sgfd_fast": lambda x: knn_graph(x, K, validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
def test_knn_graph(bench, case, provider):
    backend = _backend.serving("knn_graph", bench.device.type) if provider == "sgfd_fast" else None
    bench.run(case, provider, "forward", case.providers[provider], backend=backend)
