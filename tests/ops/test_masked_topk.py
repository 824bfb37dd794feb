import importlib.util
import subprocess
import sys

import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.ops import masked_topk, masked_topk_reference
from sgfd_fast.testing import random_csr

HAS_TRITON = importlib.util.find_spec("triton") is not None
NEG_INF = float("-inf")

if HAS_TRITON:  # the packed top-k key of the Triton kernels, on scores loaded from memory
    import triton
    import triton.language as tl

    from sgfd_fast.kernels.masked_topk import _topk_keys

    @triton.jit
    def _keys_kernel(s_ptr, out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        s = tl.load(s_ptr + offs)
        key = _topk_keys(s, offs.to(tl.int64), s != s)
        tl.store(out_ptr + offs, key.to(tl.int64, bitcast=True))


def brute_force(users, items, rowptr, col, k, mask_value):
    """Explicit loops: rank every candidate by (-score, id)."""
    values, indices = [], []
    for u in range(users.shape[0]):
        masked = set(col[rowptr[u]:rowptr[u + 1]].tolist())
        cands = []
        for i in range(items.shape[0]):
            s = float(torch.dot(users[u].double(), items[i].double()))
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


def _case(n_users, n_items, d, seed, dtype=torch.float32, index_dtype=torch.int64, integer=False,
          hub=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: every backend computes the same exact scores, ties abound
        users = torch.randint(-2, 3, (n_users, d), generator=g).to(dtype)
        items = torch.randint(-2, 3, (n_items, d), generator=g).to(dtype)
    else:
        users = torch.randn(n_users, d, generator=g, dtype=dtype)
        items = torch.randn(n_items, d, generator=g, dtype=dtype)
    mask = random_csr(n_users, n_items, avg_degree=5, hub_degree=hub, seed=seed,
                      index_dtype=index_dtype)
    return users.to(device), items.to(device), mask.rowptr.to(device), mask.col.to(device)


@pytest.mark.parametrize("mask_value", [None, 1e-5])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_reference_matches_brute_force(k, mask_value):
    users, items, rowptr, col = _case(9, 31, 5, seed=k, integer=True, hub=25)
    want = brute_force(users, items, rowptr, col, k, mask_value)
    got = masked_topk_reference(users, items, rowptr, col, k, mask_value)
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[0], want[0])


def _check(device, backend, users, items, rowptr, col, k, mask_value, exact):
    want = masked_topk_reference(users, items, rowptr, col, k, mask_value)
    with sgfd_fast.use_backend(backend):
        assert _backend.serving("masked_topk", device) == backend
        got = masked_topk(users, items, rowptr, col, k, mask_value)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    assert got[0].shape == got[1].shape == (users.shape[0], k)
    if exact:
        assert torch.equal(got[1], want[1]), f"backend {backend}"
        assert torch.equal(got[0], want[0]), f"backend {backend}"
    else:  # random scores: values agree to rounding; indices wherever the gap is clear
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        gap = (want[0][:, :-1] - want[0][:, 1:]).abs()
        clear = torch.ones_like(want[1], dtype=torch.bool)
        clear[:, 1:] &= gap > 1e-4
        clear[:, :-1] &= gap > 1e-4
        assert torch.equal(got[1][clear], want[1][clear]), f"backend {backend}"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mask_value", [None, 1e-5])
def test_backends_match_reference_with_ties(device, dtype, index_dtype, mask_value):
    # 20 users (one program of 16 and a partial one), 45 items (tiles of 16, the last partial),
    # width 5 (not a multiple of 16), a hub user with 40 of 45 items masked, empty rows.
    users, items, rowptr, col = _case(20, 45, 5, seed=1, dtype=dtype, index_dtype=index_dtype,
                                      integer=True, hub=40, device=device)
    for backend in backends(device):
        _check(device, backend, users, items, rowptr, col, 10, mask_value, exact=True)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_backends_match_reference_random(device, k):
    # k=50 > 45 - |mask row| for the hub user and > 45 for everyone: trailing -1 / -inf slots.
    users, items, rowptr, col = _case(18, 45, 33, seed=k, hub=30, device=device)
    for backend in backends(device):
        _check(device, backend, users, items, rowptr, col, k, None, exact=False)


@pytest.mark.parametrize("k", [1, 3])
def test_cpp_small_k_many_ties(k):
    # Small k over 1300 tied-heavy items: the per-user buffer (3k + 64 entries) is cut back to k
    # dozens of times per user, and every cut must keep the lower id among equal scores.
    users, items, rowptr, col = _case(40, 1300, 3, seed=k, integer=True, hub=1000)
    with sgfd_fast.use_backend("cpp"):
        got = masked_topk(users, items, rowptr, col, k)
    want = masked_topk_reference(users, items, rowptr, col, k)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_signed_zeros_and_infinities_tie_by_id(device):
    # A masked item scored mask_value = -0.0 ties with the items scoring +0.0 (the lower id wins
    # either way) and +inf ranks first; the C++ kernel packs (score, id) into one integer key,
    # where the two zeros must not differ.
    users = torch.tensor([[1.0], [-1.0], [0.0]], device=device)
    items = torch.tensor([[0.0], [0.0], [1.0], [0.0], [float("inf")], [0.0], [-1.0]],
                         device=device)
    rowptr = torch.tensor([0, 1, 3, 3], device=device)
    col = torch.tensor([0, 1, 3], device=device)
    for k in (1, 2, 3, 7):
        want = brute_force(users.cpu(), items.cpu(), rowptr.cpu(), col.cpu(), k, -0.0)
        for backend in backends(device):
            with sgfd_fast.use_backend(backend):
                got = masked_topk(users, items, rowptr, col, k, mask_value=-0.0)
            assert torch.equal(got[1].cpu(), want[1]), (backend, k)
            assert torch.equal(got[0].cpu(), want[0]), (backend, k)


@pytest.mark.skipif(_ext.cpu is None, reason="C++ extension not built")
@pytest.mark.parametrize("op", ["masked_topk", "attentive_distance_topk"])
def test_cpp_refuses_item_ids_beyond_32_bits(op):
    # The C++ top-k packs item ids into 32 bits (the public ops refuse more items first); the
    # check runs before any pointer is read.
    args = dict(users=0, items=0, rowptr=0, col=0, n_users=0, n_items=2**32, d=1, k=1,
                has_mask_value=False, mask_value=0.0, out_values=0, out_indices=0,
                index_dtype="int64", dtype="float32")
    if op == "attentive_distance_topk":
        args.update(p=0, q=0, user_sq=0, item_sq=0, b1=0, w2t=0, b2=0, hidden=1)
    for extra in [{"precision": "fp32"}, {"precision": "bf16"}]:
        with pytest.raises(ValueError, match="2\\^32"):
            getattr(_ext.cpu, op)(**args, **extra)


def test_cpp_large_tiles_and_blocks():
    # Several user blocks and item tiles of the C++ kernel, and k = 100.
    users, items, rowptr, col = _case(150, 1300, 64, seed=3, integer=True, hub=1200)
    with sgfd_fast.use_backend("cpp"):
        got = masked_topk(users, items, rowptr, col, 100)
        assert torch.equal(got[1], masked_topk(users, items, rowptr, col, 100)[1])
    want = masked_topk_reference(users, items, rowptr, col, 100)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_all_items_masked_and_degenerate_shapes(device):
    users = torch.randn(3, 4, device=device)
    items = torch.randn(5, 4, device=device)
    rowptr = torch.tensor([0, 5, 5, 7], device=device)
    col = torch.tensor([0, 1, 2, 3, 4, 1, 3], device=device)
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            values, indices = masked_topk(users, items, rowptr, col, 4)
            assert indices[0].tolist() == [-1] * 4 and values[0].tolist() == [NEG_INF] * 4
            assert sorted(indices[2, :3].tolist()) == [0, 2, 4] and indices[2, 3] == -1
            # legacy protocol: masked items take part with the given score
            values, indices = masked_topk(users, items, rowptr, col, 5, mask_value=1e-5)
            assert sorted(indices[0].tolist()) == [0, 1, 2, 3, 4]
            # one user, one item; k = 0; no items
            one = masked_topk(users[:1], items[:1], rowptr[:2].clamp(max=0), col[:0], 2)
            assert one[1].tolist() == [[0, -1]]
            empty = masked_topk(users, items, rowptr, col, 0)
            assert empty[0].shape == (3, 0)
            none = masked_topk(users, items[:0], torch.zeros_like(rowptr), col[:0], 2)
            assert none[1].tolist() == [[-1, -1]] * 3


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    users, items, rowptr, col = _case(6, 11, 4, seed=2)
    with sgfd_fast.use_backend(backend):
        for mask_value in (None, 1e-5):
            torch.library.opcheck(torch.ops.sgfd_fast.masked_topk.default,
                                  (users, items, rowptr, col, 3, mask_value))


def test_torch_compile_smoke():
    users, items, rowptr, col = _case(6, 11, 4, seed=2)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(users):
        return masked_topk(users * 2, items, rowptr, col, 3, validate=False)

    got = f(users)
    want = masked_topk_reference(users * 2, items, rowptr, col, 3)
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("make, message", [
    (lambda u, i, r, c: (u[:, 0], i, r, c, 2), "must be 2-D"),
    (lambda u, i, r, c: (u, i.double(), r, c, 2), "share float32 or float64"),
    (lambda u, i, r, c: (u, i[:, :2], r, c, 2), "same width"),
    (lambda u, i, r, c: (u, i, r, c, -1), "non-negative int"),
    (lambda u, i, r, c: (u[:3], i, r, c, 2), "U \\+ 1"),
    (lambda u, i, r, c: (u, i[:2], r, c, 2), "column indices must lie in"),
    (lambda u, i, r, c: (u, i, r, c.flip(0), 2), "sorted ascending within each row"),
    (lambda u, i, r, c: (u, i, r, c, 2, 1e39), "mask_value must be None or a number"),
    (lambda u, i, r, c: (u, i, r, c, 2, "x"), "mask_value must be None or a number"),
    (lambda u, i, r, c: (u, i, r, c, True), "non-negative int"),
    (lambda u, i, r, c: (u[:, :0], torch.empty(2**32, 0), r, c, 2),
     "at most 2\\^32 - 1 items"),
])
def test_bad_input_is_one_clear_error(make, message):
    users = torch.randn(4, 3)
    items = torch.randn(6, 3)
    rowptr = torch.tensor([0, 3, 3, 5, 5])
    col = torch.tensor([1, 3, 5, 2, 4])
    with pytest.raises(InputError, match=message):
        masked_topk(*make(users, items, rowptr, col))


def test_cpu_default_backend():
    assert _backend.serving("masked_topk", "cpu") == ("cpp" if _ext.cpu is not None
                                                     else "reference")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_nan_scores_are_never_returned(device):
    """NaN counts as -inf: an item scoring NaN (or -inf) is absent on every backend, and never
    displaces a valid item (the rule evaluation and api.recommend follow on every path)."""
    users, items, rowptr, col = _case(7, 23, 4, seed=3, integer=True, device=device)
    items[5] = float("nan")                  # NaN for every user
    users[2, 0] = float("nan")               # user 2: NaN everywhere, nothing to return
    items[9] = 0.0
    items[9, 0] = float("-inf")              # -inf or NaN, depending on the user's sign
    for k in (1, 5, 23):
        want = brute_force(users.cpu(), items.cpu(), rowptr.cpu(), col.cpu(), k, None)
        assert torch.equal(masked_topk_reference(users, items, rowptr, col, k)[1].cpu(), want[1])
        for backend in backends(device):
            with sgfd_fast.use_backend(backend):
                got = masked_topk(users, items, rowptr, col, k)
            assert torch.equal(got[1].cpu(), want[1]), (backend, k)
            assert torch.equal(got[0].cpu(), want[0]), (backend, k)


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_triton_keys_tie_signed_zeros():
    # The packed key of -0.0 equals that of +0.0 but for the id (lower id ranks first). The
    # interpreter turns a mask_value of -0.0 into +0.0, so the kernels' shared key helper is
    # tested on scores loaded from memory, where -0.0 stays -0.0 (a GPU keeps it everywhere).
    scores = torch.tensor([-0.0, 0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), -2.0])
    out = torch.empty(8, dtype=torch.int64)
    _keys_kernel[(1,)](scores, out, N=8)
    keys = [k % 2**64 for k in out.tolist()]  # the uint64 keys
    assert keys[0] > keys[1] > keys[2]  # equal scores: the lower id first
    assert keys[6] > keys[3] > keys[0] and keys[2] > keys[4] > keys[7] > keys[5] == 0


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_triton_item_offsets_past_2_to_the_31():
    # Item 16 of a view with row stride 2^27 starts at element 2^31: int32 offsets would wrap
    # (and read outside the buffer). 8.6 GB of address space, 2 pages of it touched; run in a
    # subprocess so that a wrapped read fails this test alone.
    script = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from sgfd_fast.kernels.masked_topk import masked_topk_triton
stride = 2**27
items = torch.empty(16 * stride + 8).as_strided((17, 8), (stride, 1))
items.copy_(torch.zeros(17, 8))
items[16] = 1.0
v, i = masked_topk_triton(torch.ones(3, 8), items, torch.zeros(4, dtype=torch.int64),
                          torch.zeros(0, dtype=torch.int64), 2, None)
print(i[:, 0].tolist(), v[:, 0].tolist())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "[16, 16, 16] [8.0, 8.0, 8.0]" in run.stdout, run.stderr[-2000:]


@pytest.mark.cuda
def test_item_offsets_past_2_to_the_31_cuda():
    d = 64
    n_items = 2**31 // d + 40
    items = torch.zeros(n_items, d, device="cuda")
    items[-1] = 1.0
    rowptr = torch.zeros(17, dtype=torch.int64, device="cuda")
    with sgfd_fast.use_backend("triton"):
        values, indices = masked_topk(torch.ones(16, d, device="cuda"), items, rowptr,
                                      rowptr[:0], 1, validate=False)
    assert indices[:, 0].tolist() == [n_items - 1] * 16 and values[:, 0].tolist() == [64.0] * 16


@pytest.mark.parametrize("k, d", [(257, 4), (3, 129)])
@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_triton_beyond_its_bounds_serves_the_reference(k, d):
    users, items, rowptr, col = _case(5, 300, d, seed=9)
    want = masked_topk_reference(users, items, rowptr, col, k)
    with sgfd_fast.use_backend("triton"):
        got = masked_topk(users, items, rowptr, col, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
