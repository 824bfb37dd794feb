import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

import sgfd_fast
from sgfd_fast import _backend
from sgfd_fast.errors import InputError
from sgfd_fast.ops import sgfd_loss, sgfd_loss_reference
from sgfd_fast.testing import products

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-7, rtol=1e-7)}
TAUS = [1.0, 5.0, 50.0]
FLAVOURS = ["official", "standard"]


def backends(device):
    return ["reference"] + (["triton"] if HAS_TRITON else [])


def _case(n_rows, d, n_classes, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    f_t = F.normalize(torch.randn(n_rows, d, generator=g, dtype=dtype), dim=1)
    f_s = F.normalize(torch.randn(n_rows, d, generator=g, dtype=dtype), dim=1)
    weight = torch.randn(n_classes, d, generator=g, dtype=dtype) * 2
    bias = torch.randn(n_classes, generator=g, dtype=dtype)
    labels = torch.randint(0, n_classes, (n_rows,), generator=g)
    return [t.to(device) for t in (f_t, f_s, weight, bias, labels)]


def _losses_and_grads(fn, case, tau, flavour, grad_out, **kwargs):
    leaves = [t.clone().requires_grad_() for t in case[:4]]
    losses = fn(*leaves, case[4], tau, flavour, **kwargs)
    total = sum(w * x for w, x in zip(grad_out, losses))
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return torch.stack(list(losses)), [torch.zeros_like(t) if g is None else g
                                       for t, g in zip(leaves, grads)]


@pytest.mark.parametrize("tau", TAUS)
def test_reference_official_matches_first_principles(tau):
    f_t, f_s, w, b, y = _case(6, 5, 4, seed=1)
    ce, ld, fd = sgfd_loss_reference(f_t, f_s, w, b, y, tau, "official")
    z_t, z_s = f_t @ w.T + b, f_s @ w.T + b
    p = z_t.exp() / z_t.exp().sum(1, keepdim=True)
    want_ce = sum(-p[i, y[i]] + math.log(p[i].exp().sum()) for i in range(6)) / 6
    pt = (z_t / tau).softmax(1)
    ps = (z_s / tau).softmax(1)
    torch.testing.assert_close(ce, want_ce)
    torch.testing.assert_close(ld, (pt - ps).abs().sum() / 24)
    torch.testing.assert_close(fd, ((f_s - f_t) ** 2).sum() / 30)
    lo = math.log(math.e + 3) - 1  # the double-softmax CE range for K = 4
    assert lo <= float(ce) <= lo + 1


@pytest.mark.parametrize("tau", TAUS)
def test_reference_standard_matches_first_principles(tau):
    f_t, f_s, w, b, y = _case(6, 5, 4, seed=2)
    ce, ld, fd = sgfd_loss_reference(f_t, f_s, w, b, y, tau, "standard")
    z_t, z_s = f_t @ w.T + b, f_s @ w.T + b
    torch.testing.assert_close(ce, -z_t.log_softmax(1)[torch.arange(6), y].mean())
    pt = (z_t / tau).softmax(1)
    ps = (z_s / tau).softmax(1)
    torch.testing.assert_close(ld, (pt * (pt.log() - ps.log())).sum() / 6 * tau ** 2)
    torch.testing.assert_close(fd, ((f_s - f_t) ** 2).mean())


def test_standard_detaches_the_teacher_on_distillation_terms():
    case = _case(5, 4, 3, seed=3)
    _, (g_t, g_s, _, _) = _losses_and_grads(sgfd_loss_reference, case, 2.0, "standard",
                                            (0.0, 1.0, 1.0))
    assert torch.count_nonzero(g_t) == 0 and torch.count_nonzero(g_s) > 0


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, tau", [((1, 3, 1), 1.0), ((7, 13, 5), 1.0), ((7, 13, 5), 5.0),
                                        ((7, 13, 5), 50.0), ((9, 130, 1024), 5.0)])
def test_backends_match_reference(flavour, dtype, shape, tau):
    # odd widths, one row, one class, K = 1024; grad_output != 1 and different per loss
    case = _case(*shape, seed=shape[2], dtype=dtype)
    grad_out = (0.7, -1.3, 2.1)
    want = _losses_and_grads(sgfd_loss_reference, case, tau, flavour, grad_out)
    for backend in backends("cpu"):
        with sgfd_fast.use_backend(backend):
            assert _backend.serving("sgfd_loss", "cpu") == backend
            got = _losses_and_grads(sgfd_loss, case, tau, flavour, grad_out)
        tol = dict(TOL[dtype])
        if flavour == "standard" and dtype == torch.float32:
            tol["atol"] *= tau ** 2 / 10  # KL of near-uniform fp32 softmaxes, scaled by τ²
        torch.testing.assert_close(got[0], want[0], **tol, msg=f"{backend} losses")
        for name, g, h in zip(("f_t", "f_s", "weight", "bias"), got[1], want[1]):
            torch.testing.assert_close(g, h, **TOL[dtype], msg=f"{backend} grad {name}")


def _repeated(fn, counts):
    """fn on the rows repeated by their integer counts: what row weights must reproduce."""
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)

    def on_repeated_rows(f_t, f_s, weight, bias, labels, tau, flavour):
        return fn(f_t[index], f_s[index], weight, bias, labels[index], tau, flavour)
    return on_repeated_rows


def _counts(n_rows, seed):
    # multiplicities 0..3 with at least one row counted twice (and, from 3 rows, one not at all)
    counts = torch.randint(0, 4, (n_rows,), generator=torch.Generator().manual_seed(seed))
    counts[0] = 2
    if n_rows >= 3:
        counts[1] = 0
    return counts


def _assert_matches(got, want, dtype, flavour, tau, what):
    tol = dict(TOL[dtype])
    if flavour == "standard" and dtype == torch.float32:
        tol["atol"] *= max(tau ** 2 / 10, 1.0)  # as in test_backends_match_reference
    torch.testing.assert_close(got[0], want[0], **tol, msg=f"{what} losses")
    for name, g, h in zip(("f_t", "f_s", "weight", "bias"), got[1], want[1]):
        torch.testing.assert_close(g, h, **TOL[dtype], msg=f"{what} grad {name}")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, tau", [((1, 3, 1), 1.0), ((1, 5, 4), 5.0), ((7, 13, 5), 5.0),
                                        ((7, 13, 5), 50.0), ((9, 130, 1024), 5.0)])
def test_row_weights_equal_repeated_rows(flavour, dtype, shape, tau):
    """Integer row weights (0 included) = the op on the rows repeated that often: losses and
    gradients with respect to every input, in the oracle and in every backend."""
    case = _case(*shape, seed=shape[0] + shape[2], dtype=dtype)
    counts = _counts(shape[0], seed=shape[1])
    row_weight = counts.to(dtype)
    grad_out = (0.7, -1.3, 2.1)
    want = _losses_and_grads(_repeated(sgfd_loss_reference, counts), case, tau, flavour, grad_out)
    got = _losses_and_grads(sgfd_loss_reference, case, tau, flavour, grad_out,
                            row_weight=row_weight)
    _assert_matches(got, want, dtype, flavour, tau, "sgfd_loss_reference")
    for backend in backends("cpu"):
        with sgfd_fast.use_backend(backend):
            got = _losses_and_grads(sgfd_loss, case, tau, flavour, grad_out,
                                    row_weight=row_weight)
        _assert_matches(got, want, dtype, flavour, tau, backend)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fractional_row_weights_match_reference(flavour, dtype):
    """Fractional weights: the weighted mean, which only the weights' ratios decide."""
    case = _case(8, 11, 6, seed=12, dtype=dtype)
    row_weight = torch.rand(8, generator=torch.Generator().manual_seed(13), dtype=dtype) * 3
    row_weight[3] = 0
    grad_out = (1.1, 0.6, -0.4)
    want = _losses_and_grads(sgfd_loss_reference, case, 5.0, flavour, grad_out,
                             row_weight=row_weight)
    scaled = _losses_and_grads(sgfd_loss_reference, case, 5.0, flavour, grad_out,
                               row_weight=row_weight * 0.37)
    _assert_matches(scaled, want, dtype, flavour, 5.0, "scaled weights")
    for backend in backends("cpu"):
        with sgfd_fast.use_backend(backend):
            got = _losses_and_grads(sgfd_loss, case, 5.0, flavour, grad_out,
                                    row_weight=row_weight)
        _assert_matches(got, want, dtype, flavour, 5.0, backend)


@pytest.mark.cuda
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("weighted", [False, True])
def test_cuda_triton_matches_reference(flavour, weighted):
    case = _case(300, 128, 54, seed=5, dtype=torch.float32, device="cuda")
    kwargs = dict(row_weight=_counts(300, seed=5).float().cuda()) if weighted else {}
    want = _losses_and_grads(sgfd_loss_reference, case, 5.0, flavour, (1.0, 2.0, 3.0), **kwargs)
    with sgfd_fast.use_backend("triton"):
        got = _losses_and_grads(sgfd_loss, case, 5.0, flavour, (1.0, 2.0, 3.0), **kwargs)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float32])
    for g, h in zip(got[1], want[1]):
        torch.testing.assert_close(g, h, **TOL[torch.float32])


@pytest.mark.parametrize("backend", backends("cpu"))
def test_gradients_only_for_inputs_that_require_them(backend):
    """With a frozen classifier the backward forms no (K, D) weight gradient product."""
    f_t, f_s, weight, bias, labels = _case(30, 16, 5, seed=11, dtype=torch.float32)
    f_t.requires_grad_()
    f_s.requires_grad_()
    with sgfd_fast.use_backend(backend):
        ce, ld, fd = sgfd_loss(f_t, f_s, weight, bias, labels, 5.0)
        with products() as shapes:
            got = torch.autograd.grad(ce + ld + fd, (f_t, f_s))
    assert (5, 16) not in shapes
    want = torch.autograd.grad(sum(sgfd_loss_reference(f_t, f_s, weight, bias, labels, 5.0)),
                               (f_t, f_s))
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, **TOL[torch.float32])


@pytest.mark.parametrize("row_weight", [None, torch.tensor([2.0, 0.0, 1.0, 0.5])])
def test_no_grad_path_and_no_nan_outputs(row_weight):
    case = _case(4, 6, 3, seed=6, dtype=torch.float32)
    want = torch.stack(list(sgfd_loss_reference(*case, 5.0, row_weight=row_weight)))
    for backend in backends("cpu"):
        with sgfd_fast.use_backend(backend), torch.no_grad():
            got = torch.stack(list(sgfd_loss(*case, 5.0, "official", row_weight=row_weight)))
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("fn", [sgfd_loss_reference, sgfd_loss])
def test_gradcheck_official(fn):
    f_t, f_s, w, b, y = _case(3, 4, 3, seed=7)
    leaves = [t.clone().requires_grad_() for t in (f_t, f_s, w, b)]
    with sgfd_fast.use_backend("reference"):
        assert torch.autograd.gradcheck(lambda *a: torch.stack(list(fn(*a, y, 3.0))), leaves,
                                         fast_mode=True)


@pytest.mark.parametrize("fn", [sgfd_loss_reference, sgfd_loss])
def test_gradcheck_standard_where_not_detached(fn):
    # detached paths have a true derivative the detach hides: check ld and fd through the
    # student only, and ce through the teacher and the classifier
    f_t, f_s, w, b, y = _case(3, 4, 3, seed=7)
    f_s.requires_grad_()
    leaves = [t.clone().requires_grad_() for t in (f_t, w, b)]
    with sgfd_fast.use_backend("reference"):
        assert torch.autograd.gradcheck(
            lambda s: torch.stack(list(fn(f_t, s, w, b, y, 3.0, "standard")[1:])), (f_s,),
            fast_mode=True)
        assert torch.autograd.gradcheck(
            lambda t, w, b: fn(t, f_s.detach(), w, b, y, 3.0, "standard")[0], leaves,
            fast_mode=True)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("row_weight", [None, torch.tensor([1.0, 3.0, 0.0, 2.0])])
def test_opcheck(flavour, row_weight):
    f_t, f_s, w, b, y = _case(4, 5, 3, seed=8, dtype=torch.float32)
    for with_grad in (False, True):
        args = [t.clone().requires_grad_(with_grad) for t in (f_t, f_s, w, b)]
        torch.library.opcheck(torch.ops.sgfd_fast.sgfd_loss.default,
                              (*args, y, row_weight, 5.0, flavour, with_grad))


def test_torch_compile_smoke():
    f_t, f_s, w, b, y = _case(5, 6, 4, seed=9, dtype=torch.float32)
    leaves = [t.clone().requires_grad_() for t in (f_t, f_s, w, b)]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(f_t, f_s, w, b):
        ce, ld, fd = sgfd_loss(f_t, f_s, w, b, y, 5.0, validate=False)
        return ce + 2 * ld + 3 * fd

    f(*leaves).backward()
    _, want = _losses_and_grads(sgfd_loss_reference, (f_t, f_s, w, b, y), 5.0, "official",
                                (1.0, 2.0, 3.0))
    for leaf, g in zip(leaves, want):
        torch.testing.assert_close(leaf.grad, g, **TOL[torch.float32])


@pytest.mark.parametrize("change, message", [
    (dict(flavour="kl"), "flavour must be one of"),
    (dict(f_s=lambda c: c[1][:, :3]), "one shape"),
    (dict(f_t=lambda c: c[0][:0], f_s=lambda c: c[1][:0], labels=lambda c: c[4][:0]),
     "at least one row"),
    (dict(weight=lambda c: c[2][:, :2]), "weight must be"),
    (dict(bias=lambda c: c[3][:2]), "bias must be"),
    (dict(weight=lambda c: c[2].double()), "share float32 or float64"),
    (dict(labels=lambda c: c[4].int()), "int64"),
    (dict(labels=lambda c: c[4] + 10), "labels must lie in"),
    (dict(tau=0.0), "tau must be > 0"),
    (dict(row_weight=lambda c: torch.ones(3)), r"row_weight must be \(B=4,\) torch.float32"),
    (dict(row_weight=lambda c: torch.ones(4, 1)), r"row_weight must be \(B=4,\)"),
    (dict(row_weight=lambda c: torch.ones(4, dtype=torch.float64)), "like f_t"),
    (dict(row_weight=lambda c: torch.ones(4, dtype=torch.int64)), "like f_t"),
    (dict(row_weight=lambda c: torch.ones(4, device="meta")), "one device"),
    (dict(row_weight=lambda c: torch.tensor([1.0, -1.0, 1.0, 1.0])), "finite and >= 0"),
    (dict(row_weight=lambda c: torch.tensor([1.0, float("nan"), 1.0, 1.0])), "finite and >= 0"),
    (dict(row_weight=lambda c: torch.tensor([1.0, float("inf"), 1.0, 1.0])), "finite and >= 0"),
    (dict(row_weight=lambda c: torch.zeros(4)), "finite sum > 0"),
    (dict(row_weight=lambda c: torch.full((4,), 3e38)), "finite sum > 0"),
    (dict(row_weight=lambda c: [1.0, 1.0, 1.0, 1.0]), "row_weight must be a tensor or None"),
])
def test_bad_input_is_one_clear_error(change, message):
    case = _case(4, 5, 3, seed=10, dtype=torch.float32)
    args = dict(zip(("f_t", "f_s", "weight", "bias", "labels"), case), tau=2.0, flavour="official")
    for key, value in change.items():
        args[key] = value(case) if callable(value) else value
    with pytest.raises(InputError, match=message):
        sgfd_loss(**args)


@pytest.mark.parametrize("flavour", ["official", "standard"])
def test_denormal_row_weights_stay_finite(flavour):
    # Σw of a denormal: n / Σw overflows, w / Σw does not (every backend, reference included)
    f_t, f_s, weight, bias, labels = _case(4, 5, 3, seed=11, dtype=torch.float32)
    w = torch.tensor([1e-45, 0.0, 0.0, 0.0])
    want = sgfd_loss(f_t[:1], f_s[:1], weight, bias, labels[:1], 2.0, flavour)
    for backend in ["reference"] + (["triton"] if HAS_TRITON else []):
        with sgfd_fast.use_backend(backend):
            got = sgfd_loss(f_t, f_s, weight, bias, labels, 2.0, flavour, row_weight=w)
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cuda_triton_float64_tau_is_float64(flavour):
    # τ = 0.3 is not an fp32 number: passed as a Python float it would reach the GPU kernel as
    # fp32 (losses ~1e-8 relative off); TOL's float64 bound of 1e-7 would hide that.
    case = _case(64, 16, 19, seed=6, device="cuda")
    want = _losses_and_grads(sgfd_loss_reference, case, 0.3, flavour, (1.0, 2.0, 3.0))
    with sgfd_fast.use_backend("triton"):
        got = _losses_and_grads(sgfd_loss, case, 0.3, flavour, (1.0, 2.0, 3.0))
    for g, h in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(g, h, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("backend", backends("cpu"))
def test_double_backward_is_refused(backend):
    # The backward scales gradient pieces computed in the forward; differentiating it again
    # would drop most second-order terms (a Hessian-vector product of 0 where float64 autograd
    # through the reference gives ~0.4), so it raises instead. First-order gradients taken with
    # create_graph=True are still right.
    case = _case(5, 4, 3, seed=2)
    leaves = [t.clone().requires_grad_() for t in case[:4]]
    want = torch.autograd.grad(sum(sgfd_loss_reference(*leaves, case[4], 2.0)), leaves[:2])
    with sgfd_fast.use_backend(backend):
        grads = torch.autograd.grad(sum(sgfd_loss(*leaves, case[4], 2.0)), leaves[:2],
                                    create_graph=True)
    for g, h in zip(grads, want):
        torch.testing.assert_close(g, h, **TOL[torch.float64])
    hvp = sum((g * torch.ones_like(g)).sum() for g in grads)
    with pytest.raises(InputError, match="double backward"):
        torch.autograd.grad(hvp, leaves[:2])
