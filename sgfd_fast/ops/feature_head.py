"""feature_head: the SGFD teacher/student head, a linear map with a fused epilogue.

    out = F.normalize(F.leaky_relu(x @ weight.T + bias, negative_slope))

``negative_slope=None`` drops the activation (GRCN's heads), ``normalize=False`` drops the row L2
normalisation (``F.normalize``: rows divided by max(‖row‖₂, 1e-12)). Shapes: x (N, F), weight
(D, F), bias (D,) or None, out (N, D); float32/float64, or a bfloat16 x with float32 weight and
bias (``precision: bf16``: the product runs in bf16, ``_tensors.bf16_linear``, and the epilogue
and its backward in float32 on the float32 product; eager PyTorch on every device). ``negative_slope`` must be >= 0: the
backward reads the activation's side from the sign of the output instead of saving the
pre-activation.

How it runs: the matrix product is left to torch (cuBLAS / oneDNN); the epilogue (bias, leaky-ReLU,
row norm) is one pass over the (N, D) product, and so is its backward (the incoming gradient through
the normalisation and the activation), after which grad_x = g·W, grad_W = gᵀ·x, grad_b = Σ g are
plain products, each formed only for an input that requires a gradient (raw item features are
constants: no (N, F) product for them). Saved for backward: x, weight, the output and the row norms (N,).

Backends: reference (eager PyTorch; serves CPU, where the public function calls
``feature_head_reference`` itself: the epilogue is memory-bound there and torch's own kernels and
autograd are as fast as the custom op, without its dispatch cost), triton (a block of rows per program; CUDA, and CPU inside the
interpreter). Deterministic: each row has one owner.

``collapse_linear_stack`` folds the teacher's activation-free stack of linear layers into one
(W, b) (exact in real arithmetic; in float32 the collapsed map differs from the layer-by-layer one
by rounding only, about 1e-6 relative), so a deep teacher costs one product per step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _backend
from .._tensors import FLOAT_NAMES, bf16_linear, dense
from ._common import check

__all__ = ["feature_head", "feature_head_reference", "collapse_linear_stack"]

EPS = 1e-12  # F.normalize's default


def feature_head_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           negative_slope: Optional[float] = 0.01,
                           normalize: bool = True) -> torch.Tensor:
    h = F.linear(x, weight, bias)
    if negative_slope is not None:
        h = F.leaky_relu(h, negative_slope)
    return F.normalize(h, dim=1) if normalize else h


def _feature_head_eager(x, weight, bias, negative_slope, normalize):
    h = F.linear(x, weight, bias)
    if negative_slope is not None:
        h = F.leaky_relu(h, negative_slope)
    if not normalize:
        return h, h.new_empty(0)
    norm = h.norm(dim=1).clamp_min(EPS)
    return h / norm[:, None], norm


@torch.library.custom_op("sgfd_fast::feature_head", mutates_args=())
def _feature_head(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  negative_slope: Optional[float], normalize: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return _feature_head_eager(x, weight, bias, negative_slope, normalize)


@_feature_head.register_fake
def _feature_head_fake(x, weight, bias, negative_slope, normalize):
    out = x.new_empty(x.shape[0], weight.shape[0])
    return out, x.new_empty(x.shape[0] if normalize else 0)


def _epilogue_backward_eager(grad, out, norm, negative_slope, normalize):
    if normalize:
        # F.normalize: rows whose norm was clamped to EPS pass grad / EPS (the clamp has no grad)
        radial = (grad * out).sum(1, keepdim=True) * (norm > EPS)[:, None]
        grad = (grad - out * radial) / norm[:, None]
    if negative_slope is not None:
        grad = torch.where(out > 0, grad, grad * negative_slope)
    return grad if negative_slope is not None or normalize else grad.clone()  # never an alias


@torch.library.custom_op("sgfd_fast::feature_head_backward", mutates_args=())
def _feature_head_backward_op(grad: torch.Tensor, out: torch.Tensor, norm: torch.Tensor,
                              negative_slope: Optional[float], normalize: bool) -> torch.Tensor:
    return _epilogue_backward_eager(grad, out, norm, negative_slope, normalize)


@_feature_head_backward_op.register_fake
def _feature_head_backward_fake(grad, out, norm, negative_slope, normalize):
    return torch.empty_like(out)


def _feature_head_triton(x, weight, bias, negative_slope, normalize):
    from ..kernels.feature_head import feature_head_triton

    return feature_head_triton(x @ weight.T, dense(bias), negative_slope, normalize)


def _feature_head_backward_triton(grad, out, norm, negative_slope, normalize):
    from ..kernels.feature_head import feature_head_backward_triton

    return feature_head_backward_triton(grad.contiguous(), out, norm, negative_slope, normalize)


def _setup_context(ctx, inputs, output):
    x, weight, _, negative_slope, normalize = inputs
    out, norm = output
    ctx.mark_non_differentiable(norm)
    ctx.negative_slope, ctx.normalize = negative_slope, normalize
    ctx.save_for_backward(x, weight, out, norm)


def _feature_head_backward(ctx, grad, _grad_norm):
    x, weight, out, norm = ctx.saved_tensors
    g = _feature_head_backward_op(grad, out, norm, ctx.negative_slope, ctx.normalize)
    # raw item features are constants: their gradient (an (N, F) product) is never formed
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    return (g @ weight if need_x else None, g.T @ x if need_w else None,
            g.sum(0) if need_b else None, None, None)


_feature_head.register_autograd(_feature_head_backward, setup_context=_setup_context)
_backend.define("feature_head", _feature_head, _feature_head_eager)
_backend.register("feature_head", "cuda", "triton", _feature_head_triton)
_backend.register("feature_head", "cpu", "triton", _feature_head_triton)
_backend.define("feature_head_backward", _feature_head_backward_op, _epilogue_backward_eager)
_backend.register("feature_head_backward", "cuda", "triton", _feature_head_backward_triton)
_backend.register("feature_head_backward", "cpu", "triton", _feature_head_backward_triton)


def feature_head(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 negative_slope: Optional[float] = 0.01, normalize: bool = True) -> torch.Tensor:
    """``F.normalize(F.leaky_relu(x @ weight.T + bias, negative_slope))`` with a fused epilogue.

    Args:
        x: (N, F) input features, float32/float64.
        weight: (D, F) weight (``nn.Linear`` layout), same dtype.
        bias: (D,) bias or None.
        negative_slope: leaky-ReLU slope (>= 0), or None for no activation.
        normalize: divide each output row by its L2 norm (clamped below at 1e-12).

    Returns:
        (N, D) features.
    """
    op = "feature_head"
    check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1], op,
          f"x (N, F) and weight (D, F) must agree on F, got {tuple(x.shape)} and "
          f"{tuple(weight.shape)}")
    bf16 = x.dtype == torch.bfloat16
    check(weight.dtype in FLOAT_NAMES and weight.dtype == (torch.float32 if bf16 else x.dtype), op,
          f"x and weight must share float32 or float64 (or x bfloat16 with a float32 weight), got "
          f"{x.dtype} and {weight.dtype}")
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    check(bias.shape == (weight.shape[0],) and bias.dtype == weight.dtype, op,
          f"bias must be ({weight.shape[0]},) {weight.dtype}, got {tuple(bias.shape)} "
          f"{bias.dtype}")
    check(x.device == weight.device == bias.device, op, "x, weight and bias must be on one device")
    check(negative_slope is None or float(negative_slope) >= 0, op,
          f"negative_slope must be >= 0 or None, got {negative_slope}")
    slope = None if negative_slope is None else float(negative_slope)
    if bf16:  # the bf16 product, then the reference's float32 epilogue (autograd: eager)
        h = bf16_linear(x, weight, bias)
        h = h if slope is None else F.leaky_relu(h, slope)
        return F.normalize(h, dim=1) if normalize else h
    if (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and _backend.serving("feature_head", "cpu") == "reference"):
        # On CPU torch's own linear / leaky_relu / normalize (and their autograd) are at least as
        # fast as the custom op, which adds a dispatch and an epilogue pass per call (measured:
        # equal at 1,060 x 4,096 -> 128, ~15% faster at 1,060 x 384 -> 128, fwd+bwd). Under
        # torch.compile the custom op stays (the backend choice is not traceable).
        return feature_head_reference(x, weight, bias, slope, bool(normalize))
    return _feature_head(x, weight, bias, slope, bool(normalize))[0]


def collapse_linear_stack(weights: Sequence[torch.Tensor],
                          biases: Sequence[Optional[torch.Tensor]], bf16: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One (W, b) equal to applying ``F.linear(·, weights[i], biases[i])`` for i = 0, 1, ….

    Differentiable: gradients reach every layer's parameters. Exact in real arithmetic; in float32
    the result differs from the layer-by-layer map by rounding (about 1e-6 relative).

    Args:
        weights: layer weights in application order, ``weights[i]`` of shape (F_{i+1}, F_i).
        biases: matching biases (F_{i+1},), entries may be None.
        bf16: the chain's matrix products run in bf16 (``_tensors.bf16_linear``: bf16 inputs,
            float32 accumulation, float32 result; ``precision: bf16``); the bias chain (matrix
            times vector) stays float32.

    Returns:
        ``(W, b)`` with W of shape (F_L, F_0) and b of shape (F_L,).
    """
    check(len(weights) >= 1 and len(weights) == len(biases), "collapse_linear_stack",
          f"needs one bias (or None) per weight, got {len(weights)} weights, {len(biases)} biases")
    # Multiply from the narrow output side: for 4096->1024->256->128 that is ~0.57 G multiply-adds
    # per step instead of ~1.2 G from the input side.
    w, b = weights[-1], biases[-1]
    if b is None:
        b = w.new_zeros(w.shape[0])
    for wi, bi in zip(reversed(weights[:-1]), reversed(biases[:-1])):
        check(w.shape[1] == wi.shape[0], "collapse_linear_stack",
              f"layer widths do not chain: {tuple(wi.shape)} then {tuple(w.shape)}")
        if bi is not None:
            b = b + w @ bi
        w = bf16_linear(w, wi.T) if bf16 else w @ wi
    return w, b
