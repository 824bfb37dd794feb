import importlib.util

import pytest
import torch
import torch.nn.functional as F

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import attentive_distance_topk, attentive_distance_topk_reference
from sgfd_fast.testing import random_csr

HAS_TRITON = importlib.util.find_spec("triton") is not None
NEG_INF = float("-inf")
OP = "attentive_distance_topk"


def first_principles_scores(users, items, feats, w1, b1, w2, b2):
    """MAML's distance pair by pair from the concatenation [u; v; f] (float64), as the model
    defines it: a = D softmax(relu(W2 l2n(tanh(W1 l2n([u; v; f]) + b1)) + b2))."""
    users, items, feats, w1, b1, w2, b2 = (x.double() for x in (users, items, feats, w1, b1, w2,
                                                                 b2))
    out = torch.empty(users.shape[0], items.shape[0], dtype=torch.float64)
    for u in range(users.shape[0]):
        for i in range(items.shape[0]):
            x = F.normalize(torch.cat([users[u], items[i], feats[i]]), dim=0)
            t = F.normalize(torch.tanh(w1 @ x + b1), dim=0)
            a = users.shape[1] * torch.softmax(torch.relu(w2 @ t + b2), dim=0)
            out[u, i] = -((a * users[u] - a * items[i]) ** 2).sum()
    return out


def brute_force(scores, rowptr, col, k, mask_value):
    """Explicit loops: rank every candidate by (-score as float32, id)."""
    values, indices = [], []
    for u in range(scores.shape[0]):
        masked = set(col[rowptr[u]:rowptr[u + 1]].tolist())
        cands = []
        for i in range(scores.shape[1]):
            s = float(scores[u, i])
            if i in masked:
                if mask_value is None:
                    continue
                s = mask_value
            s = float(torch.tensor(s, dtype=torch.float32))
            if s != s or s == NEG_INF:
                continue
            cands.append((-s, i))
        cands.sort()
        cands = cands[:k] + [(float("inf"), -1)] * (k - min(k, len(cands)))
        values.append([-c[0] for c in cands])
        indices.append([c[1] for c in cands])
    return (torch.tensor(values, dtype=torch.float32).view(-1, k),
            torch.tensor(indices, dtype=torch.int64).view(-1, k))


def backends(device):
    names = ["cpp"] if device == "cpu" else []
    if HAS_TRITON:
        names.append("triton")
    return names


def _case(n_users, n_items, d, hidden, seed, dtype=torch.float32, index_dtype=torch.int64, hub=0,
          device="cpu", duplicates=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale)  # noqa: E731
    items, feats = r(n_items, d), r(n_items, d)
    if duplicates:  # every odd item repeats its even neighbour: exact score ties
        items[1::2], feats[1::2] = items[0::2][:n_items // 2], feats[0::2][:n_items // 2]
    args = (r(n_users, d), items, feats, r(hidden, 3 * d, scale=0.5), r(hidden, scale=0.5),
            r(d, hidden, scale=3.0 / hidden ** 0.5), r(d))
    mask = random_csr(n_users, n_items, avg_degree=5, hub_degree=hub, seed=seed,
                      index_dtype=index_dtype)
    return tuple(x.to(device) for x in args + (mask.rowptr, mask.col))


def _clear(values, tol):
    """Slots whose score is at least ``tol`` away from both neighbours' (ids must agree there)."""
    gap = (values[:, :-1] - values[:, 1:]).abs()
    clear = torch.ones_like(values, dtype=torch.bool)
    clear[:, 1:] &= gap > tol
    clear[:, :-1] &= gap > tol
    return clear


@pytest.mark.parametrize("mask_value", [None, -0.5])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_reference_matches_first_principles(k, mask_value):
    case = _case(6, 29, 5, 11, seed=k, dtype=torch.float64, hub=20)
    want = brute_force(first_principles_scores(*case[:7]), *case[7:], k, mask_value)
    got = attentive_distance_topk_reference(*case, k, mask_value)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)


def _check(device, backend, case, k, mask_value, tol):
    want = attentive_distance_topk_reference(*case, k, mask_value)
    with sgfd_fast.use_backend(backend):
        assert _backend.serving(OP, device) == backend
        got = attentive_distance_topk(*case, k, mask_value)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    assert got[0].shape == got[1].shape == (case[0].shape[0], k)
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol)
    # ids agree wherever scores are apart; where they are not, each id's reference score is the
    # returned one (a near tie may come out in either order)
    clear = _clear(want[0], 10 * tol)
    assert torch.equal(got[1][clear], want[1][clear]), f"backend {backend}"
    assert torch.equal(got[1] == -1, want[1] == -1), f"backend {backend}"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mask_value", [None, -0.5])
def test_backends_match_reference(device, dtype, index_dtype, mask_value):
    # 11 users (C++ blocks of 8, the last partial), 70 items (tiles of 32 / 64, the last partial),
    # odd widths D = 5, H = 37, a hub user with 60 of 70 items masked, empty mask rows, and
    # k = 64 > 70 - 60 (trailing -1 / -inf slots for the hub user).
    case = _case(11, 70, 5, 37, seed=1, dtype=dtype, index_dtype=index_dtype, hub=60,
                 device=device)
    tol = 1e-5 if dtype == torch.float32 else 1e-6
    for backend in backends(device):
        for k in (3, 64):
            _check(device, backend, case, k, mask_value, tol)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_ties_go_to_the_lower_id(device):
    case = _case(9, 40, 6, 16, seed=4, hub=30, device=device, duplicates=True)
    want = attentive_distance_topk_reference(*case, 40)
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            got = attentive_distance_topk(*case, 40)
        assert torch.equal(got[1], want[1]), f"backend {backend}"


def test_cpp_many_blocks_and_tiles():
    # Several thread tasks and item tiles, D = 130 (two output panels, the second nearly empty),
    # k = 100; the result repeats run to run.
    case = _case(40, 300, 130, 45, seed=3, hub=250)
    with sgfd_fast.use_backend("cpp"):
        got = attentive_distance_topk(*case, 100)
        again = attentive_distance_topk(*case, 100)
    assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1])
    want = attentive_distance_topk_reference(*case, 100)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    clear = _clear(want[0], 1e-4)
    assert torch.equal(got[1][clear], want[1][clear])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_all_items_masked_nan_and_degenerate_shapes(device):
    users, items, feats, w1, b1, w2, b2, _, _ = _case(3, 5, 4, 8, seed=2, device=device)
    rowptr = torch.tensor([0, 5, 5, 7], device=device)
    col = torch.tensor([0, 1, 2, 3, 4, 1, 3], device=device)
    nan_items = items.clone()
    nan_items[2] = float("nan")
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            run = lambda *a, **kw: attentive_distance_topk(*a, **kw)  # noqa: E731
            values, indices = run(users, items, feats, w1, b1, w2, b2, rowptr, col, 4)
            assert indices[0].tolist() == [-1] * 4 and values[0].tolist() == [NEG_INF] * 4
            assert sorted(indices[2, :3].tolist()) == [0, 2, 4] and indices[2, 3] == -1
            # masked items take part with the given score
            values, indices = run(users, items, feats, w1, b1, w2, b2, rowptr, col, 5,
                                  mask_value=1.0)
            assert sorted(indices[0].tolist()) == [0, 1, 2, 3, 4]
            # a NaN score is absent
            _, indices = run(users, nan_items, feats, w1, b1, w2, b2, rowptr, col, 5)
            assert 2 not in indices.tolist()[1] and indices[1, 4] == -1
            # k = 0; no items
            assert run(users, items, feats, w1, b1, w2, b2, rowptr, col, 0)[0].shape == (3, 0)
            none = run(users, items[:0], feats[:0], w1, b1, w2, b2, torch.zeros_like(rowptr),
                       col[:0], 2)
            assert none[1].tolist() == [[-1, -1]] * 3


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    case = _case(6, 11, 4, 9, seed=2)
    with sgfd_fast.use_backend(backend):
        for mask_value in (None, 1e-5):
            torch.library.opcheck(torch.ops.sgfd_fast.attentive_distance_topk.default,
                                  case + (3, mask_value))


def test_torch_compile_smoke():
    users, *rest = _case(6, 11, 4, 9, seed=2)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(users):
        return attentive_distance_topk(users * 2, *rest, 3, validate=False)

    got = f(users)
    want = attentive_distance_topk_reference(users * 2, *rest, 3)
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("make, message", [
    (lambda a: (a[0][:, 0],) + a[1:], "must be 2-D"),
    (lambda a: (a[0], a[1].double()) + a[2:], "items must be float32 or float64 like users"),
    (lambda a: tuple(t.bfloat16() for t in a[:7]) + a[7:],
     "users must be float32 or float64, got torch.bfloat16"),
    (lambda a: (a[0], a[1][:, :2]) + a[2:], "items and item_features must be"),
    (lambda a: a[:3] + (a[3][:, :5],) + a[4:], "w1 must be"),
    (lambda a: a[:5] + (a[5][:2],) + a[6:], "b1, w2, b2 must be"),
    (lambda a: (a[0][:3],) + a[1:], "U \\+ 1"),
    (lambda a: a[:8] + (a[8] + 4,), "column indices must lie in"),
    (lambda a: a[:8] + (a[8].flip(0),), "sorted ascending within each row"),
])
def test_bad_input_is_one_clear_error(make, message):
    case = _case(4, 6, 3, 7, seed=0)
    rowptr, col = torch.tensor([0, 3, 3, 5, 5]), torch.tensor([1, 3, 5, 2, 4])
    with pytest.raises(InputError, match=message):
        attentive_distance_topk(*make(case[:7] + (rowptr, col)), 2)
    with pytest.raises(InputError, match="non-negative int"):
        attentive_distance_topk(*case[:7], rowptr, col, -1)


def test_cpu_default_backend():
    assert _backend.serving(OP, "cpu") == ("cpp" if _ext.cpu is not None else "reference")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_nan_item_features_are_absent(device):
    # NaN features reach the score only through the attention weights: a GPU max that drops NaN
    # (tl.maximum's default) would give that item a finite score.
    users, items, feats, w1, b1, w2, b2, _, _ = _case(3, 6, 4, 8, seed=5, device=device)
    feats[2] = float("nan")
    rowptr, col = torch.zeros(4, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64,
                                                                                  device=device)
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            values, indices = attentive_distance_topk(users, items, feats, w1, b1, w2, b2, rowptr,
                                                      col, 6)
        assert (indices[:, 5] == -1).all() and 2 not in indices.tolist(), backend
        assert values[:, :5].isfinite().all(), backend


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_zero_distance_ties_with_a_zero_mask_value(device):
    # An item equal to the user has distance 0, a score of -0.0; a masked item given the score
    # +0.0 ties with it, and the lower id ranks first (the packed keys must not tell -0.0 from
    # +0.0). Visible in the interpreter too: -(0 + 0) is -0.0 there as well. Triton only: the C++
    # kernel's a*u - a*v is contracted to an FMA, which leaves a distance of ~1e-14 for u = v.
    users, items, feats, w1, b1, w2, b2, _, _ = _case(1, 3, 4, 8, seed=6, device=device)
    items[0] = users[0]
    rowptr = torch.tensor([0, 1], device=device)
    col = torch.tensor([1], device=device)
    want = attentive_distance_topk_reference(users, items, feats, w1, b1, w2, b2, rowptr, col, 2,
                                             mask_value=0.0)
    assert want[1].tolist() == [[0, 1]]
    if not HAS_TRITON:
        pytest.skip("needs Triton")
    with sgfd_fast.use_backend("triton"):
        got = attentive_distance_topk(users, items, feats, w1, b1, w2, b2, rowptr, col, 2,
                                      mask_value=0.0)
    assert torch.equal(got[1], want[1])


@pytest.mark.cuda
def test_item_offsets_past_2_to_the_31():
    # n_items * hidden > 2^31: the kernel's item offsets must be int64. Items are zeros but the
    # last, which equals the user (distance 0, the best score); its row of q lies past 2^31.
    from sgfd_fast.kernels.attentive_distance_topk import attentive_distance_topk_triton

    hidden, d = 640, 4
    n_items = 2**31 // hidden + 64
    dev = "cuda"
    users = torch.ones(2, d, device=dev)
    items = torch.zeros(n_items, d, device=dev)
    items[-1] = 1.0
    q = torch.zeros(n_items, hidden, device=dev)
    args = (users, items, torch.zeros(2, hidden, device=dev), q, (users * users).sum(1),
            (items * items).sum(1), torch.zeros(hidden, device=dev),
            torch.randn(hidden, d, device=dev), torch.zeros(d, device=dev),
            torch.zeros(3, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.int64,
                                                                        device=dev))
    values, indices = attentive_distance_topk_triton(*args, 1, None)
    assert indices[:, 0].tolist() == [n_items - 1] * 2 and values[:, 0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("k, d", [(65, 4), (3, 129)])
def test_triton_beyond_its_bounds_serves_the_reference(k, d):
    if not HAS_TRITON:
        pytest.skip("needs Triton")
    case = _case(3, 80, d, 8, seed=9)
    want = attentive_distance_topk_reference(*case, k)
    with sgfd_fast.use_backend("triton"):
        got = attentive_distance_topk(*case, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
