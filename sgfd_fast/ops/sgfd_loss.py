"""sgfd_loss: the three SGFD losses of one modality in one fused pass, gradients written forward.

With a shared classifier (weight (K, D), bias (K,)), logits z_t = f_t Wᵀ + b, z_s = f_s Wᵀ + b,
p = softmax(z), p^τ = softmax(z / τ):

``flavour="official"`` (the released code, docs/RELEASED_CODE.md §3.4; nothing detached)::

    ce = F.cross_entropy(softmax(z_t), y)            # CE applied to probabilities (double softmax)
    ld = F.l1_loss(softmax(z_t/τ), softmax(z_s/τ))   # mean over B·K
    fd = F.mse_loss(f_s, f_t)                        # mean over B·D

``flavour="standard"`` (the textbook form the paper describes; teacher detached on ld and fd)::

    ce = F.cross_entropy(z_t, y)
    ld = τ² · KL(p_t^τ ‖ p_s^τ) averaged over rows (batchmean), z_t detached
    fd = F.mse_loss(f_s, f_t.detach())

Row weights: with ``row_weight`` w (B,), row r counts w_r times: every mean over rows above
becomes Σ_r w_r·(row r's term) / Σ_r w_r (ce; ld over B·K and fd over B·D elements:
Σ_r w_r Σ_k |…| / (K·Σw); the KL's batchmean), and row r's gradients scale by w_r/Σw instead of
1/B. With integer weights this is the op on the rows repeated by their weights (how
``models.SGFD`` evaluates a batch once per distinct item); fractional weights give the weighted
mean.

Shapes: f_t, f_s (B, D), weight (K, D), bias (K,) sharing float32 or float64; labels (B,) int64 in
[0, K); row_weight (B,) of f_t's dtype or None; B >= 1. Returns three scalar tensors (ce, ld, fd).
Gradients flow to f_t, f_s, weight and bias (not to row_weight), first order only: differentiating
those gradients again (a double backward) raises InputError.

How it runs: the logits come from one matrix product (left to cuBLAS/oneDNN); one pass over the
rows then computes the three losses and their gradients with respect to z_t, z_s and f_s (written
in the forward, as Liger-Kernel does for losses at the end of the graph). The backward only scales
them by the incoming gradients and maps logit gradients through the classifier (three small
matrix products), so no softmax is ever recomputed or stored for autograd.

Backends: reference (``sgfd_loss_reference`` is the literal torch.nn.functional transcription
above and the test oracle; the op's reference backend evaluates the same formulas with analytic
gradients in eager PyTorch and serves CPU), triton (one program per row; CUDA, and CPU inside the
interpreter). Per-row partial losses are summed in a fixed order: deterministic run to run.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _backend
from .._tensors import FLOAT_NAMES
from ..choices import SGFD_LOSSES
from ..errors import InputError
from ._common import check

__all__ = ["sgfd_loss", "sgfd_loss_reference"]


def sgfd_loss_reference(f_t: torch.Tensor, f_s: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor, labels: torch.Tensor, tau: float,
                        flavour: str = "official", row_weight: torch.Tensor | None = None):
    """The module docstring's formulas in torch.nn.functional (the test oracle); with
    ``row_weight`` each loss is taken with ``reduction="none"`` and averaged over rows by weight."""
    z_t = F.linear(f_t, weight, bias)
    z_s = F.linear(f_s, weight, bias)
    weighted = row_weight is not None
    reduction = "none" if weighted else "mean"

    def over_rows(loss, row_term=torch.mean):
        # loss as `reduction` gave it: the mean already, or per-element terms whose row terms
        # (row_term over dim 1, if any) are averaged with the row weights
        if not weighted:
            return loss
        per_row = loss if loss.dim() == 1 else row_term(loss, dim=1)
        return (per_row * row_weight).sum() / row_weight.sum()

    if flavour == "official":
        ce = over_rows(F.cross_entropy(F.softmax(z_t, dim=1), labels, reduction=reduction))
        ld = over_rows(F.l1_loss(F.softmax(z_t / tau, dim=1), F.softmax(z_s / tau, dim=1),
                                 reduction=reduction))
        fd = over_rows(F.mse_loss(f_s, f_t, reduction=reduction))
    else:
        ce = over_rows(F.cross_entropy(z_t, labels, reduction=reduction))
        ld = over_rows(F.kl_div(F.log_softmax(z_s / tau, dim=1),
                                F.log_softmax(z_t.detach() / tau, dim=1),
                                reduction="none" if weighted else "batchmean", log_target=True),
                       row_term=torch.sum) * tau ** 2
        fd = over_rows(F.mse_loss(f_s, f_t.detach(), reduction=reduction))
    return ce, ld, fd


def _no_grads(z_t, f_s):
    # distinct empty tensors: outputs of a custom op may not alias one another
    return (z_t.new_empty(0, z_t.shape[1]), z_t.new_empty(0, z_t.shape[1]),
            z_t.new_empty(0, z_t.shape[1]), f_s.new_empty(0, f_s.shape[1]))


def _sgfd_loss_eager(f_t, f_s, weight, bias, labels, row_weight, tau, flavour, with_grad):
    """The op's reference backend: the formulas above with their gradients, in eager PyTorch."""
    z_t = F.linear(f_t, weight, bias)
    z_s = F.linear(f_s, weight, bias)
    n_rows, n_classes = z_t.shape
    if row_weight is None:
        def weigh(x):
            return x
    else:
        # row r's terms times B·w_r/Σw: the unweighted means and 1/B factors below then give
        # Σ_r w_r·(row term)/Σw and gradients scaled by w_r/Σw
        share = (row_weight / row_weight.sum() * n_rows).unsqueeze(1)  # w/Σw first: no overflow

        def weigh(x):
            return x * share
    onehot = F.one_hot(labels, n_classes).to(z_t.dtype)
    fdiff = f_s - f_t
    fd = weigh(fdiff.square()).mean()
    pt = torch.softmax(z_t / tau, dim=1)
    ps = torch.softmax(z_s / tau, dim=1)
    if flavour == "official":
        p = torch.softmax(z_t, dim=1)
        log_q = torch.log_softmax(p, dim=1)
        ce = -weigh(log_q * onehot).sum() / n_rows
        diff = pt - ps
        ld = weigh(diff.abs()).mean()
        if not with_grad:
            return (torch.stack([ce, ld, fd]), *_no_grads(z_t, f_s))
        g_p = weigh((log_q.exp() - onehot) / n_rows)
        g_zt_ce = p * (g_p - (g_p * p).sum(1, keepdim=True))
        sgn = weigh(diff.sign() / diff.numel())
        g_zt_ld = pt * (sgn - (sgn * pt).sum(1, keepdim=True)) / tau
        g_zs_ld = ps * ((sgn * ps).sum(1, keepdim=True) - sgn) / tau
    else:
        log_p = torch.log_softmax(z_t, dim=1)
        ce = -weigh(log_p * onehot).sum() / n_rows
        log_pt = torch.log_softmax(z_t / tau, dim=1)
        log_ps = torch.log_softmax(z_s / tau, dim=1)
        ld = weigh(pt * (log_pt - log_ps)).sum() / n_rows * tau ** 2
        if not with_grad:
            return (torch.stack([ce, ld, fd]), *_no_grads(z_t, f_s))
        g_zt_ce = weigh((log_p.exp() - onehot) / n_rows)
        g_zt_ld = z_t.new_empty(0, n_classes)
        g_zs_ld = weigh((ps - pt) * (tau / n_rows))
    g_fs_fd = weigh(fdiff * (2.0 / fdiff.numel()))
    return torch.stack([ce, ld, fd]), g_zt_ce, g_zt_ld, g_zs_ld, g_fs_fd


@torch.library.custom_op("sgfd_fast::sgfd_loss", mutates_args=())
def _sgfd_loss(f_t: torch.Tensor, f_s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               labels: torch.Tensor, row_weight: Optional[torch.Tensor], tau: float, flavour: str,
               with_grad: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _sgfd_loss_eager(f_t, f_s, weight, bias, labels, row_weight, tau, flavour, with_grad)


@_sgfd_loss.register_fake
def _sgfd_loss_fake(f_t, f_s, weight, bias, labels, row_weight, tau, flavour, with_grad):
    rows = f_t.shape[0] if with_grad else 0
    n_classes = weight.shape[0]
    return (f_t.new_empty(3), f_t.new_empty(rows, n_classes),
            f_t.new_empty(rows if flavour == "official" else 0, n_classes),
            f_t.new_empty(rows, n_classes), f_s.new_empty(rows, f_s.shape[1]))


def _sgfd_loss_triton(f_t, f_s, weight, bias, labels, row_weight, tau, flavour, with_grad):
    from ..kernels.sgfd_loss import sgfd_loss_triton

    z = F.linear(torch.cat([f_t, f_s]), weight, bias)  # one product for both sides
    n_rows = f_t.shape[0]
    if row_weight is not None:
        row_weight = row_weight.contiguous()
    return sgfd_loss_triton(z[:n_rows], z[n_rows:], f_t.contiguous(), f_s.contiguous(),
                            labels.contiguous(), row_weight, tau, flavour, with_grad)


def _setup_context(ctx, inputs, output):
    f_t, f_s, weight, _, _, _, _, flavour, _ = inputs
    _, g_zt_ce, g_zt_ld, g_zs_ld, g_fs_fd = output
    ctx.mark_non_differentiable(*output[1:])
    ctx.flavour = flavour
    ctx.save_for_backward(f_t, f_s, weight, g_zt_ce, g_zt_ld, g_zs_ld, g_fs_fd)


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on sgfd_loss's gradients whose own backward refuses: they are scaled from pieces
    computed in the forward (saved as constants), so differentiating them again would silently drop
    most second-order terms."""

    @staticmethod
    def forward(ctx, *grads):
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise InputError("sgfd_loss: a double backward (create_graph=True, then differentiating "
                         "the gradients again) is not supported; compute the Hessian-vector "
                         "product with ops.sgfd_loss_reference, which is plain torch")


def _sgfd_loss_backward(ctx, grad_losses, *_):
    f_t, f_s, weight, g_zt_ce, g_zt_ld, g_zs_ld, g_fs_fd = ctx.saved_tensors
    g_ce, g_ld, g_fd = grad_losses[0], grad_losses[1], grad_losses[2]
    g_zt = g_zt_ce * g_ce
    if ctx.flavour == "official":
        g_zt = g_zt + g_zt_ld * g_ld
    g_zs = g_zs_ld * g_ld
    g_fd_s = g_fs_fd * g_fd
    need_ft, need_fs, need_w, need_b = ctx.needs_input_grad[:4]
    grad_ft = grad_fs = grad_w = grad_b = None
    if need_ft:
        grad_ft = g_zt @ weight
        if ctx.flavour == "official":
            grad_ft = grad_ft - g_fd_s
    if need_fs:
        grad_fs = torch.addmm(g_fd_s, g_zs, weight)
    if need_w:
        grad_w = torch.addmm(g_zt.T @ f_t, g_zs.T, f_s)
    if need_b:
        grad_b = g_zt.sum(0) + g_zs.sum(0)
    grads = [grad_ft, grad_fs, grad_w, grad_b]
    if torch.is_grad_enabled():  # create_graph=True: the gradients must not be differentiated
        given = [i for i, g in enumerate(grads) if g is not None]
        for i, g in zip(given, _FirstOrderOnly.apply(*(grads[i] for i in given))):
            grads[i] = g
    return *grads, None, None, None, None, None


_sgfd_loss.register_autograd(_sgfd_loss_backward, setup_context=_setup_context)
_backend.define("sgfd_loss", _sgfd_loss, _sgfd_loss_eager)
_backend.register("sgfd_loss", "cuda", "triton", _sgfd_loss_triton)
_backend.register("sgfd_loss", "cpu", "triton", _sgfd_loss_triton)


def sgfd_loss(f_t: torch.Tensor, f_s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              labels: torch.Tensor, tau: float, flavour: str = "official", *,
              row_weight: torch.Tensor | None = None, validate: bool = True):
    """Semantic CE, response (logit) distillation and feature distillation losses of a modality.

    Args:
        f_t: (B, D) teacher features.
        f_s: (B, D) student features, same dtype (float32/float64).
        weight: (K, D) weight of the classifier shared by teacher and student.
        bias: (K,) its bias.
        labels: (B,) int64 class of each row, in [0, K).
        tau: temperature τ > 0 of the response loss.
        flavour: ``"official"`` (released code) or ``"standard"`` (CE on logits, KL·τ², teacher
            detached on the distillation terms); see the module docstring.
        row_weight: (B,) weights >= 0 of f_t's dtype and device, not all 0: row r counts
            ``row_weight[r]`` times in every mean over rows (see the module docstring); None:
            every row once. Receives no gradient.
        validate: check the label range, and that the row weights are finite, >= 0 and of a
            finite sum > 0 (host syncs). Unchecked bad weights give nan or inf losses.

    Returns:
        ``(ce, ld, fd)``, three scalar tensors.

    Raises:
        InputError: a wrong flavour, shape, dtype, device, τ <= 0, or (``validate``) a label out
            of range or bad row weights.
    """
    op = "sgfd_loss"
    check(flavour in SGFD_LOSSES, op, f"flavour must be one of {SGFD_LOSSES}, got {flavour!r}")
    check(f_t.dim() == 2 and f_t.shape == f_s.shape, op,
          f"f_t and f_s must be (B, D) of one shape, got {tuple(f_t.shape)} and {tuple(f_s.shape)}")
    check(f_t.shape[0] >= 1, op, "needs at least one row")
    check(weight.dim() == 2 and weight.shape[1] == f_t.shape[1], op,
          f"weight must be (K, D={f_t.shape[1]}), got {tuple(weight.shape)}")
    check(bias.shape == (weight.shape[0],), op,
          f"bias must be (K={weight.shape[0]},), got {tuple(bias.shape)}")
    check(f_t.dtype in FLOAT_NAMES and f_s.dtype == weight.dtype == bias.dtype == f_t.dtype, op,
          "f_t, f_s, weight and bias must share float32 or float64, got "
          f"{f_t.dtype}, {f_s.dtype}, {weight.dtype}, {bias.dtype}")
    check(labels.shape == (f_t.shape[0],) and labels.dtype == torch.int64, op,
          f"labels must be (B={f_t.shape[0]},) int64, got {tuple(labels.shape)} {labels.dtype}")
    check(float(tau) > 0, op, f"tau must be > 0, got {tau}")
    tensors = (f_t, f_s, weight, bias, labels)
    if row_weight is not None:
        check(isinstance(row_weight, torch.Tensor), op,
              f"row_weight must be a tensor or None, got {type(row_weight).__name__}")
        check(row_weight.shape == (f_t.shape[0],) and row_weight.dtype == f_t.dtype, op,
              f"row_weight must be (B={f_t.shape[0]},) {f_t.dtype} like f_t, got "
              f"{tuple(row_weight.shape)} {row_weight.dtype}")
        tensors += (row_weight,)
    check(len({t.device for t in tensors}) == 1, op, "all inputs must be on one device")
    if validate:
        check(bool(((labels >= 0) & (labels < weight.shape[0])).all()), op,
              f"labels must lie in [0, {weight.shape[0]})")
        if row_weight is not None:
            check(bool((row_weight.isfinite() & (row_weight >= 0)).all()), op,
                  "row_weight must be finite and >= 0 (a row's count)")
            total = float(row_weight.sum())
            check(0 < total < float("inf"), op,
                  f"row_weight must have a finite sum > 0 (some row must count), got {total}")
    with_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (f_t, f_s, weight, bias))
    losses = _sgfd_loss(f_t, f_s, weight, bias, labels, row_weight, float(tau), flavour,
                        with_grad)[0]
    return losses[0], losses[1], losses[2]
