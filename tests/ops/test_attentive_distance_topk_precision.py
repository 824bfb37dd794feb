"""attentive_distance_topk(..., precision="bf16"): the bf16 filter returns the fp32 path's top-k
bit for bit.

The exactness rests on two facts, each tested here: the bracket holds (the fp32 path's distance
d32 lies in [k3 d̂ - k4 y - λ, k1 d̂ + k2 y + λ] for every pair, d̂ emulated in float64 from
bf16 operands) and the C++ kernel's fp32 scores are row independent (a pair scores the same
whatever other rows the call holds). Then every adversarial case: near-ties, exact ties, huge
and tiny norms, every item a candidate, k >= items, masked, fully masked and empty rows, NaN/inf
inputs and mask values, odd widths, trained-like weights; each asserts which path served (the
kernel reports the pairs its filter re-scored, -1 where the fp32 path ran), so on a CPU without
AVX512-BF16 the same tests check the fallback.
"""

import importlib
import math

import pytest
import torch

import sgfd_fast
from sgfd_fast import _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import _bf16_filter, attentive_distance_topk
from sgfd_fast.testing import random_csr

needs_cpp = pytest.mark.skipif(_ext.cpu is None, reason="C++ extension not built")
op_module = importlib.import_module("sgfd_fast.ops.attentive_distance_topk")
HAS_ISA = "avx512_bf16" in _bf16_filter._cpu_flags()


def _mask(n_users, n_items, seed, index_dtype=torch.int64, hub=0):
    m = random_csr(n_users, n_items, avg_degree=5, hub_degree=hub, seed=seed,
                   index_dtype=index_dtype)
    return m.rowptr, m.col


def _clip(x, norm=1.0):
    return x * (norm / x.norm(dim=1, keepdim=True).clamp(min=norm))


def _maml_like(n_users, n_items, d, g, hidden=None, w2_scale=1.0, directions=3):
    """MAML's scales (synthetic): rows clipped to norm 1 with a few dominant directions like
    trained embeddings, glorot-uniform attention weights, small biases."""
    hidden = hidden or 5 * d

    def rows(n):
        basis = torch.randn(min(directions, d), d, generator=g)
        x = torch.randn(n, basis.shape[0], generator=g) @ basis + 0.5 * torch.randn(n, d,
                                                                                   generator=g)
        return _clip(x / d ** 0.5 * 2)

    def glorot(n_out, n_in):
        lim = (6 / (n_in + n_out)) ** 0.5
        return (torch.rand(n_out, n_in, generator=g) * 2 - 1) * lim

    return (rows(n_users), rows(n_items), rows(n_items), glorot(hidden, 3 * d),
            0.1 * torch.randn(hidden, generator=g), w2_scale * glorot(d, hidden),
            0.1 * torch.randn(d, generator=g))


def _zmax(w2, b2):
    """The bracket's bound on |z_o| (the kernel's, up to margins far below the tests' values)."""
    return float(((1 + 2.0 ** -7) * w2.double().norm(dim=1) + b2.double().abs()).max())


def _filters(args, k):
    """Whether the kernel's filter must serve this call (else the fp32 path)."""
    users, items, _, _, _, w2, b2 = args
    norms = torch.cat([users.double().norm(dim=1), items.double().norm(dim=1)])
    return (HAS_ISA and users.dtype == torch.float32 and 0 < k < items.shape[0]
            and users.shape[0] > 0 and bool((norms <= 2.0 ** 20).all())
            and bool(torch.isfinite(w2).all() and torch.isfinite(b2).all())
            and _zmax(w2, b2) <= 16)


def _assert_same(args, rowptr, col, k, mask_value=None):
    with sgfd_fast.use_backend("cpp"):
        want = attentive_distance_topk(*args, rowptr, col, k, mask_value, precision="fp32")
        got = attentive_distance_topk(*args, rowptr, col, k, mask_value, precision="bf16")
    assert torch.equal(got[1], want[1]), "ids differ"
    # bitwise, including the sign of zero and -inf slots
    assert torch.equal(got[0].view(torch.int32), want[0].view(torch.int32)), "scores differ"
    # which path served: the kernel's report of the pairs its filter re-scored
    *again, rescored = op_module._cpp_call(*args, rowptr.contiguous(), col.contiguous(), k,
                                           mask_value, "bf16")
    assert torch.equal(again[1], want[1])
    assert (rescored >= 0) == _filters(args, k), rescored
    assert rescored <= args[0].shape[0] * args[1].shape[0]
    return rescored


def _all_scores(args, k=None):
    """Every pair's fp32-path score, (U, I), from one full ranking (k = I unless given)."""
    users, items = args[0], args[1]
    rowptr = torch.zeros(users.shape[0] + 1, dtype=torch.int64)
    col = torch.zeros(0, dtype=torch.int64)
    with sgfd_fast.use_backend("cpp"):
        values, indices = attentive_distance_topk(*args, rowptr, col, k or items.shape[0],
                                                  precision="fp32")
    dense = torch.full((users.shape[0], items.shape[0]), float("nan"))
    rows = torch.arange(users.shape[0])[:, None].expand_as(indices)
    ok = indices >= 0
    dense[rows[ok], indices[ok]] = values[ok]
    return dense


def _kernel_scores(users, items, p, q, user_sq, item_sq, b1, w2, b2):
    """Every pair's fp32-path score from the C++ kernel given the first layer's projections
    (what the op computes once per call and both of the filter's passes share)."""
    n_users, n_items = users.shape[0], items.shape[0]
    values = torch.empty(n_users, n_items)
    indices = torch.empty(n_users, n_items, dtype=torch.int64)
    rowptr = torch.zeros(n_users + 1, dtype=torch.int64)
    col = torch.zeros(0, dtype=torch.int64)
    w2t = w2.T.contiguous()
    _ext.cpu.attentive_distance_topk(
        users=users.data_ptr(), items=items.data_ptr(), p=p.data_ptr(), q=q.data_ptr(),
        user_sq=user_sq.data_ptr(), item_sq=item_sq.data_ptr(), b1=b1.data_ptr(),
        w2t=w2t.data_ptr(), b2=b2.data_ptr(), rowptr=rowptr.data_ptr(), col=col.data_ptr(),
        n_users=n_users, n_items=n_items, d=users.shape[1], hidden=w2.shape[1], k=n_items,
        has_mask_value=False, mask_value=0.0, out_values=values.data_ptr(),
        out_indices=indices.data_ptr(), index_dtype="int64", dtype="float32", precision="fp32")
    dense = torch.full((n_users, n_items), float("nan"))
    dense.scatter_(1, indices, values)
    return dense


@needs_cpp
@pytest.mark.parametrize("shape", [(13, 97, 5, 11), (20, 300, 16, 80), (9, 70, 33, 40)])
def test_fp32_scores_are_row_independent(shape):
    """The premise of the rescoring: a pair's fp32 score (C++ kernel) does not depend on the
    call's other rows (here: the other items of its tile), given the shared projections."""
    n_users, n_items, d, hidden = shape
    g = torch.Generator().manual_seed(n_items)
    users, items, feats, w1, b1, w2, b2 = _maml_like(n_users, n_items, d, g, hidden)
    p, q, user_sq, item_sq = (x.contiguous() for x in op_module._projections(users, items,
                                                                             feats, w1))
    full = _kernel_scores(users, items, p, q, user_sq, item_sq, b1, w2, b2)
    for sub in [torch.randperm(n_items, generator=g)[: n_items // 5].sort().values,
                torch.arange(3, 20), torch.tensor([n_items - 1])]:
        part = _kernel_scores(users, items[sub], p, q[sub], user_sq, item_sq[sub], b1, w2, b2)
        assert torch.equal(full[:, sub], part)


def _to_bf16(x):
    """The kernel's operand rounding: bf16 to nearest even, |x| < 2^-126 flushed to zero."""
    return torch.where(x.abs() < 2.0 ** -126, 0.0, x).bfloat16().double()


def _bracket(d, hidden, w2, b2):
    """(e0, e1, θ', λ) of ops._bf16_filter's docstring, transcribed (without the float32
    margins): E = e0 + e1 rδ per pair."""
    u, eta = 2.0 ** -24, 2.0 ** -126

    def gamma(n, w):
        return n * w / (1 - n * w)

    g1, g2 = gamma(hidden, u), gamma(hidden, 2 * u)
    c = (1 + g2) * (1 + 2.0 ** -8) ** 2 - 1 + g1
    rho = (1 + 3 * u) / (1 - g1)
    w2 = w2.double()
    wn, bo = w2.norm(dim=1), b2.double().abs()
    wh = _to_bf16(w2.float())
    whn, dwn = wh.norm(dim=1), (wh - w2).norm(dim=1)
    sh = math.sqrt(hidden)
    under = rho * 2.0 ** 30 * ((4 * hidden + 2) * eta + 2 * eta * sh * (wn + whn + 2 * sh))
    e0 = float((rho * (dwn + g2 * whn + g1 * wn) + under
                + 2 * (2.01 * u * (rho * (1 + 2 * c) * wn + bo) + 2 * eta)).max())
    e1 = float((whn * (1 + g2)).max())
    alpha = (1 + 2.0 ** -18) * (1 + u) ** 2 / ((1 - 2.0 ** -18) * (1 - gamma(d, u))) - 1
    beta = alpha + 2.01 * u * (1 + alpha)
    theta = (gamma(d, u) + beta * (2 + beta) * (1 + gamma(d, u))) * (1 + alpha) ** 2
    return e0, e1, theta, 2 * (d * d * 2.0 ** -100 + d * 2.0 ** -125)


def _filter_distances(args):
    """(d̂, scale, rδ) per pair, float64, as the filter computes them from bf16 t and W2 (t
    rounded to float32, the epilogue and the sums exact: the kernel's differ by float32
    rounding, ~1e-6 relative); rδ = |t̂ - t| / |t|."""
    users, items, feats, w1, b1, w2, b2 = (x.double() for x in args)
    d = users.shape[1]
    p, q, user_sq, item_sq = op_module._projections(users, items, feats, w1)
    norm = (user_sq[:, None] + item_sq[None]).sqrt()
    t = torch.tanh((p[:, None] + q[None]) / norm[..., None] + b1).float().double()
    tb = _to_bf16(t.float())
    s = tb @ _to_bf16(w2.float()).T
    w = torch.relu(s / t.norm(dim=-1, keepdim=True) + b2)
    a = d * torch.softmax(w, dim=-1)
    return (((a * users[:, None] - a * items[None]) ** 2).sum(-1), a.max(-1).values,
            (tb - t).norm(dim=-1) / t.norm(dim=-1))


@needs_cpp
@pytest.mark.parametrize("w2_scale", [1.0, 4.0])
def test_bracket_holds(w2_scale):
    """down d̂ - θ'(1 + up) y - λ <= d32 <= up d̂ + 2θ' up y + λ for every pair (up = 1 + x +
    x², down = 1 - x, x = 4 (e0 + e1 rδ), y = scale² (|u| + |v|)²), d32 the C++ fp32 path's
    distance, d̂ the filter's emulated; and the bracket's half-width is at most 50 times the
    worst error seen (a worst case of aligned roundings; it still filters)."""
    g = torch.Generator().manual_seed(3)
    args = _maml_like(30, 400, 24, g, w2_scale=w2_scale)
    d32 = -_all_scores(args).double()
    dh, scale, rdelta = _filter_distances(args)
    e0, e1, theta, lam = _bracket(24, 120, args[5], args[6])
    x = 4 * (e0 + e1 * rdelta)
    assert bool((x <= 0.5).all())
    up, down = 1 + x + x * x, 1 - x
    g2 = (args[0].double().norm(dim=1)[:, None] + args[1].double().norm(dim=1)[None]) ** 2
    y = scale ** 2 * g2
    # the emulation's own distance from the kernel's d̂: its t differs from the kernel's by
    # float32 rounding, which can flip a bf16 rounding
    slack = 2e-3 * dh
    assert bool((d32 <= up * dh + 2 * theta * up * y + lam + slack).all())
    assert bool((d32 >= down * dh - theta * (1 + up) * y - lam - slack).all())
    worst = float(((d32 - dh).abs() / (dh * (up - 1) + 2 * theta * up * y)).max())
    assert 0.02 < worst <= 1


def _near_ties(g):
    """Items a few ulps apart along one direction, features equal: near-equal distances."""
    users, items, feats, *w = _maml_like(20, 300, 16, g)
    base = items[:1].repeat(300, 1) * (1 + torch.randint(-8, 9, (300, 1), generator=g)
                                       * 2.0 ** -23)
    return (users, base, feats[:1].repeat(300, 1), *w), _mask(20, 300, seed=2)


def _duplicates(g):
    users, items, feats, *w = _maml_like(20, 100, 16, g)
    return (users, items.repeat(3, 1), feats.repeat(3, 1), *w), _mask(20, 300, seed=3)


def _many_candidates(g):
    """Every item within the bracket of every other: all are candidates."""
    users, items, feats, *w = _maml_like(15, 200, 16, g)
    items = items[:1] + 1e-5 * torch.randn(200, 16, generator=g)
    return (users, items, feats[:1].repeat(200, 1), *w), _mask(15, 200, seed=4)


def _scaled(users_scale, items_scale, w2_scale=1.0):
    def build(g):
        users, items, feats, w1, b1, w2, b2 = _maml_like(20, 250, 12, g, w2_scale=w2_scale)
        return ((users * users_scale, items * items_scale, feats, w1, b1, w2, b2),
                _mask(20, 250, seed=5))
    return build


CASES = {
    "trained_like": lambda g: (_maml_like(40, 600, 32, g), _mask(40, 600, seed=1, hub=500)),
    "gaussian": lambda g: (tuple(torch.randn(*s, generator=g) * c for s, c in [
        ((23, 8), 1), ((301, 8), 1), ((301, 8), 1), ((40, 24), 0.3), ((40,), 0.3),
        ((8, 40), 0.2), ((8,), 0.3)]), _mask(23, 301, seed=6)),
    "near_ties": _near_ties,
    "duplicated_items": _duplicates,
    "many_candidates": _many_candidates,
    "tiny_norms": _scaled(1e-20, 1e-20),
    "large_norms": _scaled(1e5, 1e3),
    "huge_norms": _scaled(1e7, 1.0),          # beyond 2^20: handed to the fp32 path
    "large_w2": _scaled(1.0, 1.0, w2_scale=5.0),
    "huge_w2": _scaled(1.0, 1.0, w2_scale=40.0),  # |z| may pass 16: the fp32 path
}


@needs_cpp
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("mask_value", [None, -0.25])
def test_filter_equals_fp32_path(case, k, mask_value):
    args, (rowptr, col) = CASES[case](torch.Generator().manual_seed(k))
    _assert_same(args, rowptr, col, k, mask_value)


@needs_cpp
@pytest.mark.parametrize("mask_value", [None, 0.5, float("inf"), float("-inf"), float("nan")])
def test_edge_cases(mask_value):
    g = torch.Generator().manual_seed(5)
    args = _maml_like(30, 90, 16, g)
    rowptr, col = _mask(30, 90, seed=2, hub=85, index_dtype=torch.int32)
    for k in (0, 1, 5, 89, 90, 95):            # k >= items: the fp32 path itself
        _assert_same(args, rowptr, col, k, mask_value)
    empty = torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    _assert_same((args[0][:0],) + args[1:], *empty, 5, mask_value)      # no users
    # a user with every item masked, one with fewer than k unmasked, one with none masked
    full = torch.cat([torch.arange(90), torch.arange(0, 90, 2)]).to(torch.int32)
    three = torch.tensor([0, 90, 135, 135], dtype=torch.int32)
    _assert_same((args[0][:3],) + args[1:], three, full, 50, mask_value)
    # NaN and inf in the inputs: the fp32 path's answer (NaN scores are never ranked)
    for where, at in [(0, (3, 2)), (1, (7, 0)), (2, (8, 1)), (3, (5, 5)), (5, (2, 3))]:
        for bad in (float("nan"), float("inf")):
            x = [a.clone() for a in args]
            x[where][at] = bad
            _assert_same(tuple(x), rowptr, col, 10, mask_value)


@needs_cpp
def test_float64_inputs_run_the_fp32_path():
    g = torch.Generator().manual_seed(8)
    args = tuple(a.double() for a in _maml_like(20, 150, 8, g))
    assert _assert_same(args, *_mask(20, 150, seed=3), 20) == -1


@needs_cpp
@pytest.mark.parametrize("d, hidden", [(1, 1), (2, 3), (3, 17), (17, 33), (33, 31), (40, 200)])
def test_odd_widths(d, hidden):
    g = torch.Generator().manual_seed(d)
    args = _maml_like(19, 333, d, g, hidden)
    for k in (1, 7, 40):
        _assert_same(args, *_mask(19, 333, seed=d, hub=300), k)


@needs_cpp
def test_the_filter_filters():
    """On MAML-like weights the filter re-scores a small share of the pairs (where it runs): a
    bracket or a τ too loose would still be exact but slow."""
    g = torch.Generator().manual_seed(11)
    args = _maml_like(64, 2000, 32, g)
    rescored = _assert_same(args, *_mask(64, 2000, seed=4), 20)
    if HAS_ISA:
        assert 0 < rescored < 0.25 * 64 * 2000


def test_bad_precision_is_one_clear_error():
    args = _maml_like(2, 5, 3, torch.Generator().manual_seed(0))
    rowptr, col = _mask(2, 5, seed=0)
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16"):
        attentive_distance_topk(*args, rowptr, col, 2, precision="fp16")


@pytest.mark.parametrize("n_items, k, filtered", [(100, 10, True), (100, 11, False),
                                                  (100, 0, False)])
def test_auto_takes_the_filter_where_it_pays(n_items, k, filtered, monkeypatch):
    """precision="auto" (the default) is "bf16" for k <= items / 10, else "fp32"; either way
    the fp32 path's result."""
    seen = []
    reference = op_module.attentive_distance_topk_reference
    monkeypatch.setattr(op_module, "_attentive_distance_topk",
                        lambda *a: seen.append(a[-1]) or reference(*a))
    args = _maml_like(5, n_items, 4, torch.Generator().manual_seed(1))
    rowptr, col = _mask(5, n_items, seed=1)
    got = attentive_distance_topk(*args, rowptr, col, k)
    want = reference(*args, rowptr, col, k)
    assert seen == ["bf16" if filtered else "fp32"]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_where_the_filter_serves(monkeypatch):
    monkeypatch.setattr(_bf16_filter, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    op = "attentive_distance_topk"
    assert _bf16_filter.serves("cpu", op) == (_ext.cpu is not None)
    with sgfd_fast.use_backend("reference"):     # the reference is the fp32 path itself
        assert not _bf16_filter.serves("cpu", op)
    monkeypatch.setattr(_bf16_filter, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert not _bf16_filter.serves("cpu", op)
