"""masked_topk(..., precision="bf16"): the bf16 filter returns the fp32 path's top-k bit for bit.

The exactness rests on two facts, each tested here: the error bound holds (|ŝ - s32| <= E for every
pair, ŝ emulated as the kernel computes it), and the C++ kernel's fp32 scores are row independent
(a pair scores the same whatever other rows the call holds). Then every adversarial case:
near-ties, exact ties, huge and tiny norms, all items candidates, k >= items, masked and empty
rows, NaN/inf inputs and mask values, odd widths; each asserts which path served (the kernel
reports the pairs its filter re-scored, -1 where the fp32 path ran), so on a CPU without
AVX512-BF16 the same tests check the fallback.
"""

import importlib
import math

import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast import _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import _bf16_filter, masked_topk, masked_topk_reference
from sgfd_fast.testing import random_csr

needs_cpp = pytest.mark.skipif(_ext.cpu is None, reason="C++ extension not built")
op_module = importlib.import_module("sgfd_fast.ops.masked_topk")
HAS_ISA = "avx512_bf16" in _bf16_filter._cpu_flags()


def _mask(n_users, n_items, seed, index_dtype=torch.int64, hub=0):
    m = random_csr(n_users, n_items, avg_degree=5, hub_degree=hub, seed=seed,
                   index_dtype=index_dtype)
    return m.rowptr, m.col


def _dominant(n, d, g, directions=3, scale=4.0):
    """Rows with a few dominant directions, like trained embeddings (synthetic)."""
    basis = torch.randn(directions, d, generator=g)
    return torch.randn(n, directions, generator=g) * scale @ basis + torch.randn(n, d, generator=g)


def _filters(users, items, k):
    """Whether the kernel's filter must serve this call (else the fp32 path)."""
    norms = torch.cat([users.double().norm(dim=1), items.double().norm(dim=1)])
    return (HAS_ISA and users.dtype == torch.float32 and 0 < k < items.shape[0] <= 2 ** 18
            and users.shape[0] > 0 and bool((norms <= 2.0 ** 60).all()))


def _assert_same(users, items, rowptr, col, k, mask_value=None):
    with sgfd_fast.use_backend("cpp"):
        want = masked_topk(users, items, rowptr, col, k, mask_value, precision="fp32")
        got = masked_topk(users, items, rowptr, col, k, mask_value, precision="bf16")
    assert torch.equal(got[1], want[1]), "ids differ"
    # bitwise, including the sign of zero and -inf slots
    assert torch.equal(got[0].view(torch.int32), want[0].view(torch.int32)), "scores differ"
    # which path served: the kernel's report of the pairs its filter re-scored
    *again, rescored = op_module._cpp_call(users, items, rowptr.contiguous(), col.contiguous(),
                                           k, mask_value, "bf16")
    assert torch.equal(again[1], want[1])
    assert (rescored >= 0) == _filters(users, items, k), rescored
    assert rescored <= users.shape[0] * items.shape[0]
    return rescored


def _all_scores(users, items, k=None):
    """Every pair's fp32-path score, (U, I), from one full ranking (k = I unless given)."""
    n_items = items.shape[0]
    rowptr = torch.zeros(users.shape[0] + 1, dtype=torch.int64, device=users.device)
    col = torch.zeros(0, dtype=torch.int64, device=users.device)
    values, indices = masked_topk(users, items, rowptr, col, k or n_items, precision="fp32")
    dense = torch.full((users.shape[0], n_items), float("nan"), device=users.device)
    rows = torch.arange(users.shape[0], device=users.device)[:, None].expand_as(indices)
    ok = indices >= 0
    dense[rows[ok], indices[ok]] = values[ok]
    return dense


@needs_cpp
@pytest.mark.parametrize("shape", [(13, 97, 5), (50, 300, 64), (7, 1030, 33), (61, 700, 128)])
def test_fp32_scores_are_row_independent(shape):
    """The premise of the rescoring: a pair's fp32 score (C++ kernel) does not depend on the
    call's other rows."""
    n_users, n_items, d = shape
    g = torch.Generator().manual_seed(n_items)
    users, items = _dominant(n_users, d, g), _dominant(n_items, d, g)
    for sub_u, sub_i in [(torch.randperm(n_users, generator=g)[: max(1, n_users // 3)],
                          torch.randperm(n_items, generator=g)[: n_items // 5]),
                         (torch.arange(n_users - 1, n_users), torch.arange(3, 20))]:
        sub_u, sub_i = sub_u.sort().values, sub_i.sort().values
        with sgfd_fast.use_backend("cpp"):
            full = _all_scores(users, items)
            part = _all_scores(users[sub_u], items[sub_i], k=n_items)
        assert torch.equal(full[sub_u][:, sub_i], part)


def _to_bf16(x):
    """The kernel's operand rounding: bf16 to nearest even, |x| < 2^-126 flushed to zero."""
    return torch.where(x.abs() < 2.0 ** -126, 0.0, x).bfloat16().float()


def _bound(d, nu, ni):
    """E of ops._bf16_filter's docstring, transcribed (without the float32-evaluation margins)."""
    v, u, eta = 2.0 ** -8, 2.0 ** -24, 2.0 ** -126
    def gamma(w):
        return d * w / (1 - d * w)

    c = (1 + gamma(2 * u)) * (1 + v) ** 2 - 1 + gamma(u)
    a = ((1 + gamma(2 * u)) * (1 + v) + 1) * eta * math.sqrt(d)
    b = (4 * d + 2) * eta
    return c * nu[:, None] * ni[None, :] + a * (nu[:, None] + ni[None, :]) + b


@needs_cpp
@pytest.mark.parametrize("scale", [1.0, 1e-19, 1e-30, 1e15])
def test_error_bound_holds(scale):
    """|ŝ - s32| <= E for every pair, ŝ emulated as vdpbf16ps computes it (bf16 operands, exact
    products, float32 additions in feature order), on dominant-direction, tiny (subnormal
    products) and large inputs; the bound is within a small factor of the worst error seen (it
    filters)."""
    g = torch.Generator().manual_seed(3)
    d = 48
    users = _dominant(40, d, g) * scale
    items = torch.cat([_dominant(200, d, g), torch.randn(20, d, generator=g) * 1e-3]) * scale
    s32 = _all_scores(users, items)
    xb, yb = _to_bf16(users), _to_bf16(items)
    s = torch.zeros(users.shape[0], items.shape[0])
    for c in range(d):
        s = s + (xb[:, c, None].double() * yb[None, :, c].double()).float()
    nu, ni = users.double().norm(dim=1), items.double().norm(dim=1)
    bound = _bound(d, nu, ni)
    err = (s.double() - s32.double()).abs()
    assert bool((err <= bound).all())
    if scale == 1.0:
        assert float((err / bound).max()) > 0.05


def _rounding_adversary(g, d=16):
    """bf16 rounding reverses the order: item "down" has every component just below a bf16
    rounding midpoint (its bf16 score loses 2^-8 relative), items "up" have d - 1 components just
    above one (they gain 2^-8) and score slightly less in float32. A bound 3x too small keeps only
    the "up" items."""
    below, above = 1 + 2.0 ** -8 - 2.0 ** -18, 1 + 2.0 ** -8 + 2.0 ** -18
    users = torch.full((6, d), below) * torch.tensor([1.0, 2, 0.5, 4, 1, 1])[:, None]
    down = torch.full((3, d), below)
    up = torch.ones(12, d)
    up[:, 1:] = above
    for j in range(12):                  # a different component left at 1.0 per item
        up[j, 1:] = above
        up[j, j % d] = 1.0
    scale = 2.0 ** torch.randint(-2, 3, (15, 1), generator=g).float()
    return users, torch.cat([down, up]) * scale


CASES = {
    "rounding_adversary": _rounding_adversary,
    # name: (users, items) builders
    "gaussian": lambda g: (torch.randn(37, 19, generator=g), torch.randn(301, 19, generator=g)),
    "dominant": lambda g: (_dominant(41, 64, g), _dominant(523, 64, g)),
    # small integers: scores exact in every path, ties everywhere
    "exact_ties": lambda g: (torch.randint(-2, 3, (30, 6), generator=g).float(),
                             torch.randint(-2, 3, (200, 6), generator=g).float()),
    # near-ties: items a few ulps apart along the users' direction
    "near_ties": lambda g: (torch.ones(20, 16) + 1e-3 * torch.randn(20, 16, generator=g),
                            torch.ones(400, 16) * (1 + torch.randint(-8, 9, (400, 1), generator=g)
                                                    * 2.0 ** -23)),
    # all items within the bound of each other: every item is a candidate
    "many_candidates": lambda g: (torch.randn(25, 32, generator=g),
                                  torch.randn(1, 32, generator=g) + 1e-4 * torch.randn(
                                      300, 32, generator=g)),
    "duplicated_items": lambda g: (torch.randn(20, 24, generator=g),
                                   torch.randn(100, 24, generator=g).repeat(3, 1)),
    "tiny_norms": lambda g: (torch.randn(20, 24, generator=g) * 1e-21,
                             torch.randn(250, 24, generator=g) * 1e-21),
    "large_norms": lambda g: (torch.randn(20, 24, generator=g) * 1e12,
                              torch.randn(250, 24, generator=g) * 1e5),
    # beyond 2^60: handed to the fp32 path
    "huge_norms": lambda g: (torch.randn(20, 24, generator=g) * 1e30,
                             torch.randn(250, 24, generator=g)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("mask_value", [None, 1e-5])
def test_filter_equals_fp32_path_cpp(case, k, mask_value):
    if _ext.cpu is None:
        pytest.skip("C++ extension not built")
    users, items = CASES[case](torch.Generator().manual_seed(k))
    rowptr, col = _mask(users.shape[0], items.shape[0], seed=k, hub=items.shape[0] - 3)
    _assert_same(users, items, rowptr, col, k, mask_value)


@needs_cpp
@pytest.mark.parametrize("mask_value", [None, 0.5, float("inf"), float("-inf"), float("nan")])
def test_edge_cases(mask_value):
    g = torch.Generator().manual_seed(5)
    users, items = _dominant(30, 16, g), _dominant(90, 16, g)
    rowptr, col = _mask(30, 90, seed=2, hub=85, index_dtype=torch.int32)
    for k in (0, 1, 5, 89, 90, 95):            # k >= items: the fp32 path itself
        _assert_same(users, items, rowptr, col, k, mask_value)
    empty = torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    _assert_same(users[:0], items, *empty, 5, mask_value)      # no users
    # a user with every item masked, one with fewer than k unmasked
    full = torch.cat([torch.arange(90), torch.arange(0, 90, 2)]).to(torch.int32)
    two = torch.tensor([0, 90, 135], dtype=torch.int32)
    _assert_same(users[:2], items, two, full, 50, mask_value)
    # NaN and inf in the inputs: the fp32 path's answer (NaN scores are never ranked)
    bad_u, bad_i = users.clone(), items.clone()
    bad_u[3, 2], bad_i[7, 0], bad_i[8, 1] = float("nan"), float("inf"), float("-inf")
    _assert_same(bad_u, items, rowptr, col, 10, mask_value)
    _assert_same(users, bad_i, rowptr, col, 10, mask_value)


@needs_cpp
def test_float64_inputs():
    g = torch.Generator().manual_seed(8)
    users, items = _dominant(20, 24, g).double(), _dominant(150, 24, g).double()
    _assert_same(users, items, *_mask(20, 150, seed=3), 20)


@needs_cpp
def test_trained_like_office_embeddings():
    """Office's real interactions as the mask; embeddings derived from office's real item text
    (a fixed random projection to 64 dims; users = the mean of their training items), which
    gives the few dominant directions of trained models."""
    from sgfd_fast.data.builtin import builtin_parts

    parts = builtin_parts("office")
    train = parts["train"]
    train = train[np.lexsort((train[:, 1], train[:, 0]))]
    n_users = parts["n_users"]
    g = torch.Generator().manual_seed(0)
    items = torch.from_numpy(parts["features"]["text"]) @ torch.randn(
        parts["features"]["text"].shape[1], 64, generator=g)
    items += 0.1 * torch.randn(items.shape, generator=g)
    pairs = torch.from_numpy(train)
    users = torch.zeros(n_users, 64).index_add_(0, pairs[:, 0], items[pairs[:, 1]])
    users /= torch.bincount(pairs[:, 0], minlength=n_users).clamp(min=1)[:, None]
    users += 0.05 * torch.randn(users.shape, generator=g)
    rowptr = torch.zeros(n_users + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(pairs[:, 0], minlength=n_users).cumsum(0)
    _assert_same(users[:1500], items, rowptr[:1501], pairs[:int(rowptr[1500]), 1], 50)


def test_bf16_hardware_and_where_the_filter_serves(monkeypatch):
    monkeypatch.setattr(_bf16_filter, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert _bf16_filter.bf16_hardware("cpu") is None
    assert not _bf16_filter.serves("cpu")
    monkeypatch.setattr(_bf16_filter, "_cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert _bf16_filter.bf16_hardware("cpu") == "amx_bf16"
    assert _bf16_filter.serves(torch.device("cpu")) == (_ext.cpu is not None)
    assert not _bf16_filter.serves("meta")
    with sgfd_fast.use_backend("reference"):     # the reference is the fp32 path itself
        assert not _bf16_filter.serves(torch.device("cpu"))
        users, items = torch.randn(4, 3), torch.randn(9, 3)
        rowptr, col = _mask(4, 9, seed=0)
        want = masked_topk(users, items, rowptr, col, 3, precision="fp32")
        got = masked_topk(users, items, rowptr, col, 3, precision="bf16")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("n_items, k, filtered", [(100, 10, True), (100, 11, False),
                                                  (9, 1, False), (100, 0, False)])
def test_auto_takes_the_filter_where_it_pays(n_items, k, filtered, monkeypatch):
    """precision="auto" (the default) is "bf16" for k <= items / 10, else "fp32"; either way
    the fp32 path's result."""
    assert _bf16_filter.pays(n_items, k) == filtered
    seen = []
    monkeypatch.setattr(op_module, "_masked_topk",
                        lambda *args: seen.append(args[-1]) or op_module.masked_topk_reference(
                            *args))
    users, items = torch.randn(5, 4), torch.randn(n_items, 4)
    rowptr, col = _mask(5, n_items, seed=1)
    got = masked_topk(users, items, rowptr, col, k)
    want = masked_topk_reference(users, items, rowptr, col, k)
    assert seen == ["bf16" if filtered else "fp32"]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_cpp
@pytest.mark.parametrize("d", [1, 2, 3, 17, 65])
def test_odd_widths(d):
    g = torch.Generator().manual_seed(d)
    users, items = _dominant(55, d, g, directions=min(d, 3)), _dominant(333, d, g,
                                                                        directions=min(d, 3))
    for k in (1, 7, 40):
        _assert_same(users, items, *_mask(55, 333, seed=d, hub=300), k)


@needs_cpp
def test_the_filter_filters():
    """On inputs like trained embeddings the filter re-scores a few percent of the pairs (where
    it runs): a bound or a τ too loose would still be exact but slow."""
    g = torch.Generator().manual_seed(11)
    users, items = _dominant(200, 64, g), _dominant(2000, 64, g)
    rescored = _assert_same(users, items, *_mask(200, 2000, seed=4), 20)
    if HAS_ISA:
        assert 0 < rescored < 0.05 * 200 * 2000


def test_bad_precision_is_one_clear_error():
    rowptr, col = _mask(2, 5, seed=0)
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16"):
        masked_topk(torch.randn(2, 3), torch.randn(5, 3), rowptr, col, 2, precision="fp16")


@needs_cpp
def test_more_items_than_the_filter_holds_run_the_fp32_path():
    """Beyond 2^18 items (the filter's per-thread upper bounds would pass 48 MiB) the kernel
    reports the fp32 path."""
    g = torch.Generator().manual_seed(12)
    users, items = torch.randn(3, 2, generator=g), torch.randn(2 ** 18 + 1, 2, generator=g)
    assert _assert_same(users, items, *_mask(3, items.shape[0], seed=5), 5) == -1
