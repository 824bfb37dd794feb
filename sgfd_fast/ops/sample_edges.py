"""sample_edges: weighted sampling of edges without replacement, counter-based (no RNG state).

    h[e]    = mix64(mix64(key + e·φ))                 (ops.row_dropout's hash at column 0)
    u[e]    = ((h[e] >> 11) + 1)·2⁻⁵³                 (uniform in (0, 1], exact in float64)
    race[e] = log(u[e]) / weight[e]                    (float64)
    kept    = the n_keep edges of largest race (ties: lower edge id), returned ascending

Keeping the top n_keep of u^(1/w) draws n_keep edges without replacement, each next one with
probability ∝ its weight among those left (Efraimidis & Spirakis, "Weighted random sampling with
a reservoir", IPL 2006): the distribution of ``torch.multinomial(weight, n_keep)``, which FREEDOM
(Zhou & Shen, ACM MM 2023; MMRec ``pre_epoch_processing``) uses for its degree-sensitive edge
pruning. The draws are a pure function of (key, edge id): every process of a torchrun job, every
thread count and both backends keep the same edges for the same key, so derive the key from
(seed, epoch) (e.g. ``models.base.step_key(seed, epoch, 0)``), never from the global RNG.

FREEDOM's recipe with it: on the training pairs (u, i), ``weight = (d_u + 1e-7)^-1/2 ·
(d_i + 1e-7)^-1/2`` with the degrees of the full training graph (fixed for the run), ``n_keep =
int(nnz·(1 - dropout))``, then the kept pairs re-normalised symmetrically with the degrees of
the kept graph (``graph.normalized_bipartite``; MMRec adds 1e-7 to those degrees, which changes
a value by less than 1e-7 relative). tests/ops/test_sample_edges.py runs it against a float64
transcription.

Shapes: weight (nnz,) float32/float64, positive and finite; returns (n_keep,) int64 edge ids,
ascending, on weight's device (computed on the host). Backends: reference (PyTorch int64 hash,
float64 log, stable sort), cpp (OpenMP hash and log, then one selection). Both use the platform's
float64 log; a 1-ulp difference could swap two races that agree to 16 digits, which random
weights make vanishingly rare (every process of one job runs the same backend).
"""

from __future__ import annotations

import numbers

import torch

from .. import _backend, _ext
from .._tensors import FLOAT_NAMES, new_output
from ._common import check
from .row_dropout import ROW_STEP, _shr, mix64

__all__ = ["sample_edges", "sample_edges_reference"]


def sample_edges_reference(weight: torch.Tensor, n_keep: int, key: int) -> torch.Tensor:
    e = torch.arange(weight.numel(), dtype=torch.int64)
    h = mix64(mix64(torch.tensor(key, dtype=torch.int64) + e * ROW_STEP))
    u = (_shr(h, 11) + 1).to(torch.float64) * 2.0**-53
    race = torch.log(u) / weight.cpu().to(torch.float64)
    # A stable descending sort keeps equal races in ascending edge order: lower id first.
    order = torch.sort(race, descending=True, stable=True).indices[:n_keep]
    return torch.sort(order).values


def _sample_edges_cpp(weight, n_keep, key):
    weight = weight.cpu().contiguous()
    out = new_output(n_keep, like=weight, dtype=torch.int64)
    _ext.cpu.sample_edges(weight=weight.data_ptr(), n_edges=weight.numel(), n_keep=n_keep,
                          key=key, out=out.data_ptr(), dtype=FLOAT_NAMES[weight.dtype])
    return out


_backend.declare("sample_edges", sample_edges_reference, host=True)
_backend.register("sample_edges", "cpu", "cpp", _sample_edges_cpp)


def sample_edges(weight: torch.Tensor, n_keep: int, key: int) -> torch.Tensor:
    """``n_keep`` distinct edge ids drawn without replacement with probability ∝ ``weight``,
    each next draw among the edges left (``torch.multinomial(weight, n_keep)``'s distribution),
    as a pure function of ``key`` (see the module docstring).

    Args:
        weight: (nnz,) float32/float64 positive finite edge weights (FREEDOM: 1/sqrt(d_u·d_i)).
        n_keep: edges to keep, in [0, nnz] (FREEDOM: ``int(nnz * (1 - dropout))``).
        key: any int (used mod 2⁶⁴), one per draw: derive it from (seed, epoch).

    Returns:
        (n_keep,) int64 ids of the kept edges, ascending, on weight's device.

    Raises:
        InputError: weight not a 1-D float tensor, a weight that is not positive and finite,
            n_keep not an int in [0, nnz], key not an int.
    """
    op = "sample_edges"
    check(isinstance(weight, torch.Tensor) and weight.dim() == 1
          and weight.dtype in FLOAT_NAMES, op,
          "weight must be a 1-D float32 or float64 tensor, got "
          + (f"{tuple(weight.shape)} {weight.dtype}" if isinstance(weight, torch.Tensor)
             else type(weight).__name__))
    check(isinstance(n_keep, numbers.Integral) and not isinstance(n_keep, bool)
          and 0 <= n_keep <= weight.numel(), op,
          f"n_keep must be an int in [0, {weight.numel()}] (the number of edges), got {n_keep!r}")
    check(isinstance(key, numbers.Integral) and not isinstance(key, bool), op,
          f"key must be an int, got {key!r}")
    bad = ~(torch.isfinite(weight) & (weight > 0))
    if bool(bad.any()):
        check(False, op, f"every weight must be positive and finite; edge "
                         f"{int(bad.nonzero()[0, 0])} has {float(weight[bad][0])} "
                         f"({int(bad.sum())} such edges): drop those edges or fix their weight")
    key = (int(key) + (1 << 63)) % (1 << 64) - (1 << 63)  # the int64 of the same bits
    kept = _backend.implementation("sample_edges", "cpu")(weight, int(n_keep), key)
    return kept.to(weight.device)
