import importlib.util

import pytest
import torch
import torch.nn.functional as F

import sgfd_fast
from sgfd_fast import _backend
from sgfd_fast.errors import InputError
from sgfd_fast.ops import collapse_linear_stack, feature_head, feature_head_reference
from sgfd_fast.testing import products

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
MODES = [(0.01, True), (None, True), (0.0, True), (0.01, False), (None, False)]


def backends():
    return ["reference"] + (["triton"] if HAS_TRITON else [])


def _case(n, f, d, seed, dtype=torch.float64, zero_row=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g, dtype=dtype)
    w = torch.randn(d, f, generator=g, dtype=dtype)
    b = torch.randn(d, generator=g, dtype=dtype)
    if zero_row and n > 3:
        x[3] = 0  # with a zero bias below: a zero row, whose norm is clamped
        b.zero_()
    return x.to(device), w.to(device), b.to(device)


def _run(fn, case, slope, normalize, grad_out):
    leaves = [t.clone().requires_grad_() for t in case]
    out = fn(*leaves, slope, normalize)
    return [out.detach(), *torch.autograd.grad((out * grad_out).sum(), leaves)]


def test_reference_matches_first_principles():
    x, w, b = _case(5, 4, 3, seed=1, zero_row=False)
    h = x @ w.T + b
    h = torch.where(h > 0, h, 0.2 * h)
    want = h / h.pow(2).sum(1, keepdim=True).sqrt()
    torch.testing.assert_close(feature_head_reference(x, w, b, 0.2), want)
    torch.testing.assert_close(feature_head_reference(x, w, b, None, False), x @ w.T + b)


@pytest.mark.parametrize("slope, normalize", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3, 1), (37, 20, 13), (40, 64, 128)])
def test_backends_match_reference(slope, normalize, dtype, shape):
    case = _case(*shape, seed=shape[0], dtype=dtype)
    grad_out = torch.randn(shape[0], shape[2], dtype=dtype) * 3  # grad_output != 1
    want = _run(feature_head_reference, case, slope, normalize, grad_out)
    for backend in backends():
        with sgfd_fast.use_backend(backend):
            assert _backend.serving("feature_head", "cpu") == backend
            got = _run(feature_head, case, slope, normalize, grad_out)
        for name, g, h in zip(("out", "x", "weight", "bias"), got, want):
            # the clamped zero row divides by 1e-12: compare relative there
            torch.testing.assert_close(g, h, atol=TOL[dtype]["atol"] * h.abs().max().clamp(min=1),
                                       rtol=TOL[dtype]["rtol"], msg=f"{backend} {name}")


@pytest.mark.cuda
def test_cuda_triton_matches_reference():
    case = _case(300, 256, 128, seed=3, dtype=torch.float32, device="cuda")
    grad_out = torch.randn(300, 128, device="cuda")
    want = _run(feature_head_reference, case, 0.01, True, grad_out)
    with sgfd_fast.use_backend("triton"):
        got = _run(feature_head, case, 0.01, True, grad_out)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("slope, normalize", MODES)
def test_gradcheck(slope, normalize):
    leaves = [t.requires_grad_() for t in _case(5, 4, 3, seed=4, zero_row=False)]
    with sgfd_fast.use_backend("reference"):
        assert torch.autograd.gradcheck(lambda *a: feature_head(*a, slope, normalize), leaves)


@pytest.mark.parametrize("backend", backends())
def test_no_gradient_for_constant_features(backend):
    """Raw item features are constants: the backward never forms their (N, F) gradient."""
    x, w, b = _case(40, 64, 8, seed=9, dtype=torch.float32, zero_row=False)
    w.requires_grad_()
    b.requires_grad_()
    with sgfd_fast.use_backend(backend):
        out = feature_head(x, w, b)
        with products() as shapes:
            gw, gb = torch.autograd.grad(out.square().sum(), (w, b))
    assert (40, 64) not in shapes and shapes == [(8, 64)]
    want = torch.autograd.grad(feature_head_reference(x, w, b).square().sum(), (w, b))
    torch.testing.assert_close(gw, want[0])
    torch.testing.assert_close(gb, want[1])


def test_cpu_reference_is_torch_composite():
    """On CPU the automatic choice runs torch's linear/leaky_relu/normalize directly (faster than
    the custom op there); forced backends still go through the custom op."""
    x, w, b = _case(6, 5, 4, seed=10, dtype=torch.float32)
    w.requires_grad_()
    assert "feature_head" not in type(feature_head(x, w, b).grad_fn).__name__.lower()
    if HAS_TRITON:
        with sgfd_fast.use_backend("triton"):
            assert "feature_head" in type(feature_head(x, w, b).grad_fn).__name__.lower()


def test_bias_none_is_zero_bias():
    x, w, _ = _case(6, 5, 4, seed=5)
    torch.testing.assert_close(feature_head(x, w, None), feature_head_reference(x, w, None))


def test_opcheck():
    x, w, b = _case(6, 5, 4, seed=6, dtype=torch.float32)
    for requires_grad, modes in ((False, MODES[:1]), (True, MODES[:2] + MODES[-1:])):
        args = [t.clone().requires_grad_(requires_grad) for t in (x, w, b)]
        for slope, normalize in modes:
            torch.library.opcheck(torch.ops.sgfd_fast.feature_head.default,
                                  (*args, slope, normalize))
    out = feature_head_reference(x, w, b)
    norm = torch.ones(6)
    torch.library.opcheck(torch.ops.sgfd_fast.feature_head_backward.default,
                          (torch.randn(6, 4), out, norm, 0.01, True))


def test_torch_compile_smoke():
    x, w, b = _case(6, 5, 4, seed=7, dtype=torch.float32)
    w.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w):
        return feature_head(x, w, b).sum(1).square().sum()

    f(x, w).backward()
    w2 = w.detach().clone().requires_grad_()
    feature_head_reference(x, w2, b).sum(1).square().sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_collapse_linear_stack_is_the_stack():
    g = torch.Generator().manual_seed(8)
    ws = [torch.randn(192, 768, generator=g, dtype=torch.float64) / 28,
          torch.randn(128, 192, generator=g, dtype=torch.float64) / 14]
    bs = [torch.randn(192, generator=g, dtype=torch.float64), None]
    x = torch.randn(9, 768, generator=g, dtype=torch.float64)
    w, b = collapse_linear_stack(ws, bs)
    assert w.shape == (128, 768) and b.shape == (128,)
    torch.testing.assert_close(F.linear(x, w, b), F.linear(F.linear(x, ws[0], bs[0]), ws[1]))
    # float32: rounding only
    w32, b32 = collapse_linear_stack([t.float() for t in ws], [bs[0].float(), None])
    layered = F.linear(F.linear(x.float(), ws[0].float(), bs[0].float()), ws[1].float())
    torch.testing.assert_close(F.linear(x.float(), w32, b32), layered, atol=1e-5, rtol=1e-5)
    # differentiable: gradients reach each layer
    leaves = [t.clone().requires_grad_() for t in ws]
    w, b = collapse_linear_stack(leaves, [bs[0], None])
    F.linear(x, w, b).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)
    with pytest.raises(InputError, match="do not chain"):
        collapse_linear_stack([ws[1], ws[0]], [None, None])


@pytest.mark.parametrize("make, message", [
    (lambda x, w, b: (x, w[:, :2], b), "agree on F"),
    (lambda x, w, b: (x, w.float(), b), "share float32 or float64"),
    (lambda x, w, b: (x, w, b[:2]), "bias must be"),
    (lambda x, w, b: (x, w, b, -0.1), "negative_slope must be >= 0"),
])
def test_bad_input_is_one_clear_error(make, message):
    with pytest.raises(InputError, match=message):
        feature_head(*make(*_case(4, 5, 3, seed=9)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_triton_strided_bias(device):
    # A bias that is a view with stride 2 (a column of a parameter matrix, say) is read as such,
    # not with unit stride.
    if not HAS_TRITON:
        pytest.skip("needs Triton")
    x, w, b = _case(9, 6, 5, seed=8, device=device)
    bias = torch.stack([b, b + 1], dim=1)[:, 0]
    assert not bias.is_contiguous()
    want = feature_head_reference(x, w, bias, 0.01, True)
    with sgfd_fast.use_backend("triton"):
        got = feature_head(x, w, bias, 0.01, True)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.cuda
def test_cuda_triton_float64_slope_is_float64():
    # slope 0.3 is not an fp32 number: passed as a Python float it would reach the GPU kernel as
    # fp32 and the negative side would be ~1e-8 relative off.
    case = _case(64, 32, 48, seed=4, device="cuda")
    grad_out = torch.randn(64, 48, dtype=torch.float64, device="cuda")
    want = _run(feature_head_reference, case, 0.3, True, grad_out)
    with sgfd_fast.use_backend("triton"):
        got = _run(feature_head, case, 0.3, True, grad_out)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, atol=1e-12 * h.abs().max().clamp(min=1), rtol=1e-10)
