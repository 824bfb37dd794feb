"""sgfd_loss in Triton: one program per row computes the row's share of the three losses and the
loss gradients with respect to that row's logits and student features (Liger style: gradients are
written in the forward and the backward only scales them).

Derivation (row b, K classes, D features, B rows; δ = one-hot of y_b; a_b = the row's share of a
mean over rows: 1/B, or w_b/Σw with row weights w):

official
    p = softmax(z_t), q = softmax(p)               ce_b = a_b (logsumexp(p) - p_y)
        ∂ce/∂p = a_b (q - δ) = g,                  ∂ce/∂z_t = p ⊙ (g - <g, p>)
    r = p_t^τ - p_s^τ                              ld_b = a_b Σ|r| / K
        s = a_b sign(r) / K,                       ∂ld/∂z_t = p_t^τ ⊙ (s - <s, p_t^τ>) / τ
                                                   ∂ld/∂z_s = p_s^τ ⊙ (<s, p_s^τ> - s) / τ
standard
    ce_b = -a_b log softmax(z_t)_y,                ∂ce/∂z_t = a_b (p - δ)
    ld_b = a_b τ² Σ p_t^τ (log p_t^τ - log p_s^τ), ∂ld/∂z_s = a_b τ (p_s^τ - p_t^τ)  (z_t detached)
both
    e = f_s - f_t,  fd_b = a_b Σ e² / D,           ∂fd/∂f_s = 2 a_b e / D (official: ∂/∂f_t = -that)
"""

import torch
import triton
import triton.language as tl

from .._tensors import new_output


@triton.jit
def _sgfd_loss_fwd_kernel(
    zt_ptr,  # (B, K) teacher logits, row stride stride_z_row
    zs_ptr,  # (B, K) student logits
    labels_ptr,  # (B,) int64
    row_weight_ptr,  # (B,) row weights w                 (read when HAS_ROW_WEIGHT)
    weight_sum_ptr,  # (1,) Σw in the accumulator dtype   (read when HAS_ROW_WEIGHT)
    ft_ptr,  # (B, D) teacher features, row-major
    fs_ptr,  # (B, D) student features, row-major
    row_loss_ptr,  # (B, 3) per-row shares of (ce, ld, fd)
    g_zt_ce_ptr,  # (B, K) ∂ce/∂z_t            (written when WITH_GRAD)
    g_zt_ld_ptr,  # (B, K) ∂ld/∂z_t            (written when WITH_GRAD, official)
    g_zs_ld_ptr,  # (B, K) ∂ld/∂z_s            (written when WITH_GRAD)
    g_fs_fd_ptr,  # (B, D) ∂fd/∂f_s            (written when WITH_GRAD)
    n_rows,
    n_classes,
    d,
    stride_z_row,
    tau_ptr,  # (1,) τ in the accumulator dtype (a Python float would reach a GPU as fp32)
    FLAVOUR: tl.constexpr,  # sgfd_loss's flavour string, "official" or "standard"
    HAS_ROW_WEIGHT: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    acc_t = tl.float64 if zt_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < n_classes
    zt = tl.load(zt_ptr + row * stride_z_row + offs_k, mask=k_ok, other=float("-inf")).to(acc_t)
    zs = tl.load(zs_ptr + row * stride_z_row + offs_k, mask=k_ok, other=float("-inf")).to(acc_t)
    y = tl.load(labels_ptr + row)
    onehot = (offs_k == y).to(acc_t)
    zero = tl.zeros([], dtype=acc_t)  # sizes and τ enter the arithmetic in the accumulator dtype
    if HAS_ROW_WEIGHT:  # the row's share a_b of every mean over rows (module doc)
        share = tl.load(row_weight_ptr + row).to(acc_t) / tl.load(weight_sum_ptr)
    else:
        share = 1.0 / (zero + n_rows)
    tau = tl.load(tau_ptr).to(acc_t)
    inv_tau = 1.0 / tau

    # tempered softmaxes (padding lanes: exp(-inf) = 0)
    at = (zt - tl.max(zt, axis=0)) * inv_tau
    et = tl.exp(at)
    st = tl.sum(et, axis=0)
    pt = et / st
    as_ = (zs - tl.max(zs, axis=0)) * inv_tau
    es = tl.exp(as_)
    ss = tl.sum(es, axis=0)
    ps = es / ss
    # plain softmax of the teacher
    a1 = zt - tl.max(zt, axis=0)
    e1 = tl.exp(a1)
    s1 = tl.sum(e1, axis=0)
    p = e1 / s1
    if FLAVOUR == "official":
        # CE on probabilities: p lies in [0, 1], so exp(p) cannot overflow
        e2 = tl.where(k_ok, tl.exp(p), 0.0)
        s2 = tl.sum(e2, axis=0)
        ce = (tl.log(s2) - tl.sum(p * onehot, axis=0)) * share
        r = pt - ps
        share_k = share / (zero + n_classes)
        ld = tl.sum(tl.abs(r), axis=0) * share_k
    else:
        ce = (tl.log(s1) - tl.sum(tl.where(k_ok, a1, 0.0) * onehot, axis=0)) * share
        log_ratio = tl.where(k_ok, at, 0.0) - tl.where(k_ok, as_, 0.0) - tl.log(st) + tl.log(ss)
        ld = tl.sum(pt * log_ratio, axis=0) * share * tau * tau

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d
    ft = tl.load(ft_ptr + row * d + offs_d, mask=d_ok, other=0.0).to(acc_t)
    fs = tl.load(fs_ptr + row * d + offs_d, mask=d_ok, other=0.0).to(acc_t)
    e = fs - ft
    share_d = share / (zero + d)
    fd = tl.sum(e * e, axis=0) * share_d
    tl.store(row_loss_ptr + row * 3, ce)
    tl.store(row_loss_ptr + row * 3 + 1, ld)
    tl.store(row_loss_ptr + row * 3 + 2, fd)

    if WITH_GRAD:
        out_z = row * n_classes + offs_k
        if FLAVOUR == "official":
            g = (e2 / s2 - onehot) * share
            g_zt_ce = p * (g - tl.sum(g * p, axis=0))
            sgn = tl.where(r > 0, 1.0, tl.where(r < 0, -1.0, 0.0)) * share_k
            g_zt_ld = pt * (sgn - tl.sum(sgn * pt, axis=0)) * inv_tau
            g_zs_ld = ps * (tl.sum(sgn * ps, axis=0) - sgn) * inv_tau
            tl.store(g_zt_ld_ptr + out_z, g_zt_ld, mask=k_ok)
        else:
            g_zt_ce = (p - onehot) * share
            g_zs_ld = (ps - pt) * (tau * share)
        tl.store(g_zt_ce_ptr + out_z, g_zt_ce, mask=k_ok)
        tl.store(g_zs_ld_ptr + out_z, g_zs_ld, mask=k_ok)
        tl.store(g_fs_fd_ptr + row * d + offs_d, e * (2.0 * share_d), mask=d_ok)


def sgfd_loss_triton(z_t: torch.Tensor, z_s: torch.Tensor, f_t: torch.Tensor, f_s: torch.Tensor,
                     labels: torch.Tensor, row_weight: torch.Tensor | None, tau: float,
                     flavour: str, with_grad: bool):
    """Losses (3,) and the gradient pieces of ``sgfd_fast.ops.sgfd_loss``'s custom op.

    z_t and z_s are row slices of one (2B, K) logit buffer (they share a row stride);
    row_weight: (B,) contiguous, of f_t's dtype, or None."""
    n_rows, n_classes = z_t.shape
    d = f_t.shape[1]
    row_loss = new_output(n_rows, 3, like=f_t)
    g_zt_ce = new_output(n_rows if with_grad else 0, n_classes, like=f_t)
    g_zt_ld = new_output(n_rows if with_grad and flavour == "official" else 0, n_classes, like=f_t)
    g_zs_ld = new_output(n_rows if with_grad else 0, n_classes, like=f_t)
    g_fs_fd = new_output(n_rows if with_grad else 0, d, like=f_t)
    # Σw stays on the device (no host sync); each program reads it once
    weight_sum = None if row_weight is None else row_weight.sum().reshape(1)
    block_k = triton.next_power_of_2(n_classes)
    _sgfd_loss_fwd_kernel[(n_rows,)](
        z_t, z_s, labels, row_weight, weight_sum, f_t, f_s, row_loss,
        g_zt_ce, g_zt_ld, g_zs_ld, g_fs_fd,
        n_rows, n_classes, d, z_t.stride(0),
        torch.full((1,), float(tau), dtype=f_t.dtype, device=f_t.device),
        FLAVOUR=flavour, HAS_ROW_WEIGHT=row_weight is not None, WITH_GRAD=with_grad,
        BLOCK_K=block_k, BLOCK_D=triton.next_power_of_2(d), num_warps=4 if block_k <= 1024 else 8)
    return row_loss.sum(0), g_zt_ce, g_zt_ld, g_zs_ld, g_fs_fd
