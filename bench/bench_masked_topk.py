"""masked_topk: full ranking of one evaluation batch — the top 50 of all items for the first
4,096 users (1,024 at ``small``), d = 64, each user's training items masked.

Workloads: office (small), toysgames-synthetic (paper): the real train interactions as the mask;
large: the generated graph (100,000 items).

Providers: ``reference`` (dense scores, mask, stable sort: the op's exact tie rule),
``compiled`` (``torch.compile`` of it), ``dense_topk`` (what MMRec's evaluation does: dense
scores, masked to -inf, ``torch.topk``), ``sgfd_fast`` (``sgfd_fast.ops.masked_topk`` as called,
``precision="auto"``: no score matrix), ``sgfd_fast_fp32`` (``precision="fp32"``: every pair scored
in float32), ``sgfd_fast_bf16`` (``precision="bf16"``: bf16 scores and their error bounds filter the
items inside the C++ kernel, its fp32 micro-kernel re-scores the candidates; on a CPU without
AVX512-BF16 this is the fp32 path). Forward only (not differentiable).

Check (before timing): the returned values equal the float64 reference's top-k values, every
returned index scores its returned value, no masked item and no duplicate is returned. Indices
are not compared one to one: float32 rounding may reorder near-ties. ``sgfd_fast`` and
``sgfd_fast_bf16`` must also equal ``sgfd_fast_fp32``'s result exactly, ids and scores.
"""

import numpy as np
import pytest
import torch

from benchlib import Case, GRAPH_FOR_SIZE, graph, randn

from sgfd_fast import _backend
from sgfd_fast.ops import _bf16_filter, masked_topk, masked_topk_reference

WIDTH = 64
K = 50
EVAL_USERS = {"small": 1024, "paper": 4096, "large": 4096}  # eval_batch_size is 4096
PROVIDERS = ("reference", "compiled", "dense_topk", "sgfd_fast", "sgfd_fast_fp32",
             "sgfd_fast_bf16")


def dense_topk(users, items, mask_rowptr, mask_col, k):
    """MMRec's full-sort evaluation: score everything, mask, torch.topk."""
    scores = users @ items.T
    row = torch.repeat_interleave(torch.arange(users.shape[0], device=users.device),
                                  mask_rowptr.diff(), output_size=mask_col.numel())
    scores[row, mask_col] = float("-inf")
    return torch.topk(scores, k, dim=1)


def check_topk(users, items, mask_rowptr, mask_col, *, rtol=1e-5, atol=1e-4):
    """check(got, want, mode) for (values, indices) pairs; see the module docstring."""
    def check(got, want, mode):
        values, indices = (t.detach().cpu() for t in got)
        want_values = want[0].cpu().float()
        where = "masked_topk"
        if values.shape != want_values.shape or indices.shape != want_values.shape:
            pytest.fail(f"{where}: shapes {tuple(values.shape)}, {tuple(indices.shape)}, "
                        f"expected {tuple(want_values.shape)}")
        torch.testing.assert_close(values.float(), want_values, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{where}: top-k values differ: {m}")
        idx = indices.long()
        if bool((idx < 0).any()):
            pytest.fail(f"{where}: a slot is empty (-1) although every row has enough items")
        exact = (users.double().cpu().unsqueeze(1) * items.double().cpu()[idx]).sum(-1)
        torch.testing.assert_close(values.double(), exact, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{where}: an index does not score its value: {m}")
        if bool((idx.sort(1).values.diff(dim=1) == 0).any()):
            pytest.fail(f"{where}: an item is returned twice for one user")
        rowptr, col = mask_rowptr.cpu(), mask_col.cpu()
        for u in range(idx.shape[0]):
            masked = col[rowptr[u]:rowptr[u + 1]]
            if masked.numel() and bool(torch.isin(idx[u], masked).any()):
                pytest.fail(f"{where}: user {u} gets a masked (training) item")
    return check


@pytest.fixture(scope="module")
def case(bench_size, device):
    g = graph(GRAPH_FOR_SIZE[bench_size])
    n_users = min(g.n_users, EVAL_USERS[bench_size])
    pairs = np.asarray(g.pairs)
    pairs = pairs[pairs[:, 0] < n_users]
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # rows by user, items ascending
    mask_rowptr = torch.zeros(n_users + 1, dtype=torch.long)
    mask_rowptr[1:] = torch.from_numpy(np.bincount(pairs[:, 0], minlength=n_users)).cumsum(0)
    mask_rowptr, mask_col = mask_rowptr.to(device), torch.from_numpy(pairs[:, 1]).to(device)
    users = randn(n_users, WIDTH, seed=0, device=device)
    items = randn(g.n_items, WIDTH, seed=1, device=device)
    n_scores = n_users * g.n_items
    moved = 4 * WIDTH * (n_users + g.n_items) + 8 * (n_users + 1 + mask_col.numel()) \
        + 12 * n_users * K
    case = Case(op="masked_topk", workload=g.label, inputs=[users, items],
                reference=lambda u, i: masked_topk_reference(u, i, mask_rowptr, mask_col, K),
                sizes={"n_users": n_users, "n_items": g.n_items, "d": WIDTH, "k": K,
                       "masked": int(mask_col.numel())},
                traffic={"forward": (moved, 2 * n_scores * WIDTH)},
                check=check_topk(users, items, mask_rowptr, mask_col))
    compiled = torch.compile(masked_topk_reference)
    case.providers = {
        "reference": lambda u, i: masked_topk_reference(u, i, mask_rowptr, mask_col, K),
        "compiled": lambda u, i: compiled(u, i, mask_rowptr, mask_col, K),
        "dense_topk": lambda u, i: dense_topk(u, i, mask_rowptr, mask_col, K),
        "sgfd_fast": lambda u, i: masked_topk(u, i, mask_rowptr, mask_col, K, validate=False),
        "sgfd_fast_fp32": lambda u, i: masked_topk(u, i, mask_rowptr, mask_col, K,
                                                   validate=False, precision="fp32"),
        "sgfd_fast_bf16": lambda u, i: masked_topk(u, i, mask_rowptr, mask_col, K,
                                                   validate=False, precision="bf16"),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
def test_masked_topk(bench, case, provider):
    backend = _backend.serving("masked_topk", bench.device.type) \
        if provider.startswith("sgfd_fast") else None
    if provider in ("sgfd_fast", "sgfd_fast_bf16"):
        fp32, got = (case.providers[p](*case.inputs) for p in ("sgfd_fast_fp32", provider))
        assert torch.equal(got[1], fp32[1]) and torch.equal(got[0], fp32[0]), \
            f"masked_topk: {provider}'s top-k differs from the fp32 path's"
        bf16 = provider == "sgfd_fast_bf16" or _bf16_filter.pays(case.sizes["n_items"], K)
        if bf16:
            backend += ("+bf16 filter" if _bf16_filter.serves(bench.device)
                        else " (fp32 path: no AVX512-BF16 C++ kernel here)")
    bench.run(case, provider, "forward", case.providers[provider], backend=backend)
