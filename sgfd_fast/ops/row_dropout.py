"""row_dropout: inverted dropout of feature rows with a counter-based mask (no RNG state).

    h[r, c]    = mix64(mix64(key + ids[r]·φ) + c·ψ)     (uint64 arithmetic, wrapping)
    keep[r, c] = (h[r, c] >> 40)·2⁻²⁴ >= p              (a 24-bit uniform in [0, 1), float32)
    out        = x · keep / (1 - p)

mix64 is splitmix64's output function (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; the constants of Vigna's splitmix64.c), φ = 0x9E3779B97F4A7C15 and
ψ = 0xD1B54A32D192ED03 (Weyl steps). ``F.dropout`` draws from the global torch RNG in the order
of the rows it is given, so a process that holds part of a batch draws other masks than one that
holds all of it. Here a row's mask is a pure function of ``(key, id, column)``: the same on every
process, world size, device, thread count and backend, and the same for duplicates of an id.

Shapes: x (n, D) float32/float64, ids (n,) int64 (any values: an id is only hashed), p in
[0, 1), key any int, used mod 2⁶⁴ (one key per independent dropout: ``models.base.step_key``).
Returns (n, D) of x's dtype, row-major (x itself when p == 0). Differentiable in x: the gradient is the same
dropout of the incoming gradient.

Backends: reference (the formula in int64 PyTorch ops: ~20 passes over an (n, D) int64 tensor),
cpp (OpenMP over rows, the hash vectorised over the columns), triton (a block of rows per
program; CUDA, and CPU inside the interpreter). The mask is bitwise the same on every backend;
``out`` too on the CPU (on CUDA, torch divides by a scalar through its reciprocal: 1 ulp).
"""

from __future__ import annotations

import numbers

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, dense, new_output
from ._common import check

__all__ = ["row_dropout", "row_dropout_reference", "mix64"]


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


MIX1, MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)
ROW_STEP, COL_STEP = _signed(0x9E3779B97F4A7C15), _signed(0xD1B54A32D192ED03)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 values read as uint64 (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output mixer on int64 tensors (wrapping arithmetic, as ``sampling._mix64``)."""
    z = (z ^ _shr(z, 30)) * MIX1
    z = (z ^ _shr(z, 27)) * MIX2
    return z ^ _shr(z, 31)


def row_dropout_reference(x: torch.Tensor, ids: torch.Tensor, p: float,
                          key: int) -> torch.Tensor:
    col = torch.arange(x.shape[1], device=x.device, dtype=torch.int64)
    h = mix64(mix64(torch.tensor(key, dtype=torch.int64, device=x.device)
                    + ids.to(torch.int64)[:, None] * ROW_STEP) + col * COL_STEP)
    uniform = _shr(h, 40).to(torch.float32) * 2.0**-24
    return x * (uniform >= p).to(x.dtype) / (1.0 - p)


@torch.library.custom_op("sgfd_fast::row_dropout", mutates_args=())
def _row_dropout(x: torch.Tensor, ids: torch.Tensor, p: float, key: int) -> torch.Tensor:
    return _reference(x, ids, p, key)


def _reference(x, ids, p, key):
    return row_dropout_reference(x.contiguous(), ids, p, key)


@_row_dropout.register_fake
def _row_dropout_fake(x, ids, p, key):
    return x.new_empty(x.shape)  # row-major, as every backend returns


def _row_dropout_cpp(x, ids, p, key):
    x = dense(x)
    out = new_output(*x.shape, like=x)
    _ext.cpu.row_dropout(x=x.data_ptr(), ids=ids.data_ptr(), out=out.data_ptr(), n_rows=x.shape[0],
                         d=x.shape[1], p=p, key=key, dtype=FLOAT_NAMES[x.dtype])
    return out


def _row_dropout_triton(x, ids, p, key):
    from ..kernels.row_dropout import row_dropout_triton

    return row_dropout_triton(dense(x), ids, p, key)


def _setup_context(ctx, inputs, output):
    _, ids, p, key = inputs
    ctx.save_for_backward(ids)
    ctx.p, ctx.key = p, key


def _row_dropout_backward(ctx, grad):
    (ids,) = ctx.saved_tensors
    return _row_dropout(grad.contiguous(), ids, ctx.p, ctx.key), None, None, None


_row_dropout.register_autograd(_row_dropout_backward, setup_context=_setup_context)
_backend.define("row_dropout", _row_dropout, _reference)
_backend.register("row_dropout", "cpu", "cpp", _row_dropout_cpp)
_backend.register("row_dropout", "cuda", "triton", _row_dropout_triton)
_backend.register("row_dropout", "cpu", "triton", _row_dropout_triton)


def row_dropout(x: torch.Tensor, ids: torch.Tensor, p: float, key: int) -> torch.Tensor:
    """Inverted dropout of the rows ``x`` whose row ids are ``ids``, with a mask that is a pure
    function of ``(key, id, column)`` (see the module docstring for the formula).

    Args:
        x: (n, D) float32/float64 rows.
        ids: (n,) int64 row ids (duplicates get identical masks).
        p: drop probability in [0, 1).
        key: the key of this dropout, any int (used mod 2⁶⁴, so ``key + 1`` never overflows);
            use one key per independent dropout.

    Returns:
        ``x * keep / (1 - p)``, (n, D) of x's dtype; ``x`` itself when ``p == 0``.

    Raises:
        InputError: x or ids not tensors of the shapes, dtypes and device above; p not a
            number in [0, 1); key not an int.
    """
    op = "row_dropout"
    check(isinstance(x, torch.Tensor) and isinstance(ids, torch.Tensor), op,
          f"x and ids must be tensors, got {type(x).__name__} and {type(ids).__name__}")
    check(x.dim() == 2 and x.dtype in FLOAT_NAMES, op,
          f"x must be (n, D) float32 or float64, got {tuple(x.shape)} {x.dtype}")
    check(ids.shape == (x.shape[0],) and ids.dtype == torch.int64, op,
          f"ids must be ({x.shape[0]},) int64 (one id per row of x), got {tuple(ids.shape)} "
          f"{ids.dtype}")
    check(ids.device == x.device, op, f"x and ids must be on one device, got {x.device} and "
                                      f"{ids.device}")
    check(isinstance(p, numbers.Real) and not isinstance(p, bool) and 0.0 <= p < 1.0, op,
          f"p must be a number in [0, 1), got {p!r}")
    check(isinstance(key, numbers.Integral) and not isinstance(key, bool), op,
          f"key must be an int, got {key!r}")
    if p == 0.0:
        return x
    key = (int(key) + (1 << 63)) % (1 << 64) - (1 << 63)  # the int64 of the same bits
    # row-major in, row-major out on every backend (and in the fake)
    return _row_dropout(x.contiguous(), ids.contiguous(), float(p), key)
