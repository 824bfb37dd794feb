import importlib.util

import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast.errors import InputError
from sgfd_fast.ops import row_dropout, row_dropout_reference
from sgfd_fast.sampling import _mix64 as mix64_numpy

HAS_TRITON = importlib.util.find_spec("triton") is not None


def backends(device):
    names = ["cpp"] if device == "cpu" else []
    if HAS_TRITON:
        names.append("triton")
    return names


def first_principles(x, ids, p, key):
    """The formula in NumPy uint64 arithmetic (sampling's splitmix64 mixer)."""
    u64 = np.uint64
    with np.errstate(over="ignore"):
        row = mix64_numpy(u64(key % 2**64) + ids.numpy().astype(u64) * u64(0x9E3779B97F4A7C15))
        col = np.arange(x.shape[1], dtype=u64) * u64(0xD1B54A32D192ED03)
        h = mix64_numpy(row[:, None] + col[None, :])
    uniform = (h >> u64(40)).astype(np.float32) * np.float32(2.0**-24)
    keep = torch.from_numpy(uniform >= np.float32(p)).to(x.dtype)
    return x * keep / (1.0 - p)


def test_reference_matches_first_principles():
    x = torch.randn(40, 33, dtype=torch.float64)
    ids = torch.tensor([0, -1, 2**62, -(2**63)] + list(range(36)), dtype=torch.int64)
    for p, key in [(0.5, 0), (0.1, -7), (0.9, 2**63 - 1)]:
        assert torch.equal(row_dropout_reference(x, ids, p, key), first_principles(x, ids, p, key))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf·0, NaN
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [1, 5, 33, 128, 130])
def test_backends_match_reference(device, dtype, width):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(37, width, generator=g, dtype=dtype)
    x[3, 0], x[4, -1], x[5, 0] = float("nan"), float("inf"), -0.0  # NaN·0 stays NaN, as torch's
    ids = torch.randint(-2**40, 2**40, (37,), generator=g)
    ids[7] = ids[8]  # duplicates get the same mask
    x, ids = x.to(device), ids.to(device)
    for p, key in [(0.5, 123), (0.25, -(2**63)), (0.9, 2**63 - 1)]:
        want = row_dropout_reference(x, ids, p, key)
        for backend in backends(device):
            with sgfd_fast.use_backend(backend):
                got = row_dropout(x, ids, p, key)
            if device == "cpu":  # the mask and the division, bit for bit
                assert torch.equal(got.isnan(), want.isnan()), backend
                assert torch.equal(got.nan_to_num(), want.nan_to_num()), backend
            else:  # torch's CUDA division by a scalar goes through its reciprocal
                assert torch.equal(got == 0, want == 0), backend
                torch.testing.assert_close(got, want, equal_nan=True)
        dropped = (want == 0) & (x != 0)
        assert torch.equal(dropped[7], dropped[8])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_empty_rows_and_drop_rate(device):
    x = torch.ones(4000, 64, device=device)
    ids = torch.arange(4000, device=device)
    for backend in ["reference"] + backends(device):
        with sgfd_fast.use_backend(backend):
            assert row_dropout(x[:0], ids[:0], 0.5, 1).shape == (0, 64)
            for p in (0.1, 0.5, 0.9):
                out = row_dropout(x, ids, p, 99)
                kept = (out != 0).double().mean().item()
                assert abs(kept - (1 - p)) < 0.005, (backend, p, kept)  # 256,000 draws
                assert torch.equal(out.unique().cpu(), torch.tensor([0.0, 1 / (1 - p)]))


def test_keys_rows_and_columns_decorrelate():
    x = torch.ones(64, 64)
    ids = torch.arange(64)
    a, b = row_dropout(x, ids, 0.5, 5), row_dropout(x, ids, 0.5, 6)
    assert 0.4 < (a == b).double().mean() < 0.6  # another key: another mask
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[:, 0], a[:, 1])
    # a key is used mod 2^64 (the models add small offsets to a step's key)
    assert torch.equal(row_dropout(x, ids, 0.5, 2**63 - 1 + 2), row_dropout(x, ids, 0.5, -(2**63) + 1))


def test_zero_p_returns_x_itself():
    x = torch.randn(3, 4)
    assert row_dropout(x, torch.arange(3), 0.0, 1) is x


@pytest.mark.parametrize("backend", ["reference", "cpp"] + (["triton"] if HAS_TRITON else []))
def test_gradient_is_the_same_dropout(backend):
    x = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    ids = torch.arange(9) * 5
    with sgfd_fast.use_backend(backend):
        assert torch.autograd.gradcheck(lambda x: row_dropout(x, ids, 0.3, 17), (x,))
        g = torch.randn(9, 7, dtype=torch.float64)
        row_dropout(x, ids, 0.3, 17).backward(g)
    assert torch.equal(x.grad, row_dropout_reference(g, ids, 0.3, 17))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    with sgfd_fast.use_backend(backend):
        x = torch.randn(6, 5, requires_grad=True)
        for xx in (x, torch.randn(5, 6, requires_grad=True).t()):  # the fake's strides too
            torch.library.opcheck(torch.ops.sgfd_fast.row_dropout.default,
                                  (xx, torch.arange(6), 0.5, -3))


@pytest.mark.parametrize("backend", ["reference", "cpp"] + (["triton"] if HAS_TRITON else []))
def test_non_contiguous_x_gives_a_row_major_result(backend):
    x = torch.randn(30, 40)
    with sgfd_fast.use_backend(backend):
        got = row_dropout(x.t(), torch.arange(40), 0.3, 9)
    assert got.is_contiguous()
    assert torch.equal(got, row_dropout_reference(x.t().contiguous(), torch.arange(40), 0.3, 9))


def test_torch_compile_smoke():
    x = torch.randn(8, 6, requires_grad=True)
    ids = torch.arange(8)
    f = torch.compile(lambda x: row_dropout(x, ids, 0.5, 4).square().sum(), fullgraph=True,
                      backend="aot_eager")
    f(x).backward()
    x2 = x.detach().clone().requires_grad_()
    row_dropout_reference(x2, ids, 0.5, 4).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("make, message", [
    (lambda x, i: (x[0], i, 0.5, 1), r"x must be \(n, D\) float32 or float64"),
    (lambda x, i: (x.half(), i, 0.5, 1), r"x must be \(n, D\) float32 or float64"),
    (lambda x, i: (x, i[:3], 0.5, 1), r"ids must be \(4,\) int64"),
    (lambda x, i: (x, i.int(), 0.5, 1), r"ids must be \(4,\) int64"),
    (lambda x, i: (x, i, 1.0, 1), r"p must be a number in \[0, 1\)"),
    (lambda x, i: (x, i, -0.1, 1), r"p must be a number in \[0, 1\)"),
    (lambda x, i: (x, i, float("nan"), 1), r"p must be a number in \[0, 1\)"),
    (lambda x, i: (x, i, None, 1), r"p must be a number in \[0, 1\)"),
    (lambda x, i: (x, i, "0.5", 1), r"p must be a number in \[0, 1\)"),
    (lambda x, i: (x, i, torch.tensor([0.5, 0.5]), 1), r"p must be a number in \[0, 1\)"),
    (lambda x, i: (x, i, 0.5, None), "key must be an int"),
    (lambda x, i: (x, i, 0.5, 1.7), "key must be an int"),
    (lambda x, i: (x, i, 0.5, "12"), "key must be an int"),
    (lambda x, i: (x.tolist(), i, 0.5, 1), "x and ids must be tensors"),
    (lambda x, i: (x, i.tolist(), 0.5, 1), "x and ids must be tensors"),
])
def test_bad_input(make, message):
    with pytest.raises(InputError, match=message):
        row_dropout(*make(torch.randn(4, 3), torch.arange(4)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("key", [1, 16, 0])
def test_keys_triton_would_specialise(device, key):
    # On a GPU Triton turns an int argument equal to 1 into a constexpr (and gives multiples of
    # 16 a divisibility hint): key = 1 failed to compile there (BM3 passes step_key + 1 with
    # step_key = 0 outside the trainer). The interpreter does not specialise: tests/aot_sm90.py
    # compiles key = 1 for sm_90 on every push.
    x = torch.randn(9, 33, dtype=torch.float64, device=device)
    ids = torch.arange(9, device=device)
    want = row_dropout_reference(x, ids, 0.5, key)
    for backend in backends(device):
        with sgfd_fast.use_backend(backend):
            got = row_dropout(x, ids, 0.5, key)
        assert torch.equal(got == 0, want == 0), backend
        torch.testing.assert_close(got, want)
