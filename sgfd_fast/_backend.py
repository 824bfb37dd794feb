"""Which implementation serves each op on each device.

Every op is a ``torch.library.custom_op`` whose default implementation is its pure-PyTorch
reference (docs/DESIGN.md §3.2). Compiled backends register here per device; the op's CPU and CUDA kernels
are dispatch closures that pick, at call time, the first available backend in this order:

* the backend named by ``use_backend(...)`` (a context manager, e.g. in tests and benchmarks) or
  by the environment variable ``SGFD_FAST_BACKEND``;
* otherwise the op's automatic order for the device (CPU: ``cpp``; CUDA: the op's fastest, ``cuda``
  or ``triton``), ending with ``reference``.

``SGFD_FAST_BACKEND`` is ``auto`` (default), one backend name (``reference``, ``cpp``, ``cuda``,
``triton``) applied to every op that has it, or per-op entries ``spmm_csr=triton,propagate=cpp``.
A named backend that is not available for an op on a device falls back to the automatic order;
``reference`` is always available. Triton serves CPU tensors only when forced and only inside
Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI executes the Triton kernels.

Functions that are not autograd ops (``sample_negatives``, and ``bipartite_adj``, the builder
behind ``graph.normalized_bipartite``) are entered with :func:`declare` instead of :func:`define`
and call ``implementation(op, device)`` themselves, so the same switches and
``python -m sgfd_fast.info`` cover them. A host op builds on the CPU whatever the device of its
result: it is served by its CPU backend on both devices.
"""

from __future__ import annotations

import contextlib
import difflib
import contextvars
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import _ext
from .errors import ConfigError

BACKENDS = ("reference", "cpp", "cuda", "triton")
DEVICES = ("cpu", "cuda")

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("sgfd_fast_backend",
                                                                      default=None)


@dataclass
class _Op:
    reference: Callable
    host: bool = False  # runs on the CPU for either device
    impls: dict = field(default_factory=dict)  # (device, backend) -> callable
    ranked: dict = field(default_factory=dict)  # device -> [(priority, backend)], sorted


_OPS: dict[str, _Op] = {}


def triton_usable(device: str) -> bool:
    """Triton runs on CUDA devices, and on CPU tensors inside its interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device == "cuda":
        return torch.cuda.is_available()
    return os.environ.get("TRITON_INTERPRET") == "1"


def _available(device: str, backend: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpp":
        return device == "cpu" and _ext.cpu is not None
    if backend == "cuda":
        return device == "cuda" and _ext.cuda is not None and torch.cuda.is_available()
    if backend == "triton":
        return triton_usable(device)
    return False


def _parse(spec: str, op: str) -> str | None:
    spec = spec.strip()
    if spec in ("", "auto"):
        return None
    if "=" not in spec:
        if spec not in BACKENDS:
            raise ConfigError(f"SGFD_FAST_BACKEND={spec!r}: expected auto, one of "
                              f"{', '.join(BACKENDS)}, or entries like 'spmm_csr=cpp'")
        return spec
    for entry in spec.split(","):
        name, _, backend = entry.partition("=")
        if backend.strip() not in BACKENDS:
            raise ConfigError(f"SGFD_FAST_BACKEND entry {entry!r}: unknown backend "
                              f"{backend.strip()!r} (one of {', '.join(BACKENDS)})")
        if name.strip() == op:
            return backend.strip()
    return None


def requested(op: str) -> str | None:
    """The backend asked for by ``use_backend`` or ``SGFD_FAST_BACKEND`` (None: automatic)."""
    spec = _override.get()
    if spec is None:
        spec = os.environ.get("SGFD_FAST_BACKEND", "auto")
    return _parse(spec, op)


def check_requested() -> None:
    """Raise :class:`~sgfd_fast.errors.ConfigError` now if ``SGFD_FAST_BACKEND`` (or the active
    ``use_backend``) is malformed or names an op that is not registered, rather than at the first
    op call: runs check it before they create anything."""
    spec = _override.get()
    if spec is None:
        spec = os.environ.get("SGFD_FAST_BACKEND", "auto")
    requested("")
    for entry in spec.split(",") if "=" in spec else ():
        name = entry.partition("=")[0].strip()
        if name not in _OPS:
            close = difflib.get_close_matches(name, list(_OPS), n=1)
            raise ConfigError(f"SGFD_FAST_BACKEND entry {entry.strip()!r}: no op is called "
                              f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; the ops are {', '.join(sorted(_OPS))}")


def serving(op: str, device: str) -> str:
    """Name of the backend that serves ``op`` on ``device`` right now."""
    table = _OPS[op]
    device = "cpu" if table.host else device
    wanted = requested(op)
    candidates = ([wanted] if wanted else []) + [b for _, b in table.ranked.get(device, ())] + ["reference"]
    for backend in candidates:
        if backend == "reference" or ((device, backend) in table.impls
                                      and _available(device, backend)):
            return backend
    return "reference"


def implementation(op: str, device: str) -> Callable:
    backend = serving(op, device)
    table = _OPS[op]
    device = "cpu" if table.host else device
    return table.reference if backend == "reference" else table.impls[(device, backend)]


def declare(op_name: str, reference: Callable, *, host: bool = False) -> None:
    """Enter ``op_name``, served by ``reference`` until backends are registered, without a custom
    op: for functions that are not autograd ops and call :func:`implementation` themselves.
    ``host=True``: it always runs on the CPU (its CPU backends serve either device)."""
    _OPS[op_name] = _Op(reference=reference, host=host)


def define(op_name: str, custom_op, reference: Callable) -> None:
    """Register ``custom_op`` (whose default is ``reference``) with per-device dispatch."""
    declare(op_name, reference)
    for device in DEVICES:
        def kernel(*args, _device=device, **kwargs):
            return implementation(op_name, _device)(*args, **kwargs)
        custom_op.register_kernel(device)(kernel)


def register(op_name: str, device: str, backend: str, fn: Callable, *, priority: int = 0) -> None:
    """Add ``fn`` as ``backend`` for ``op_name`` on ``device``; lower priority is tried first."""
    if backend not in BACKENDS or backend == "reference":
        raise ValueError(f"cannot register backend {backend!r}")
    table = _OPS[op_name]
    table.impls[(device, backend)] = fn
    if not (device == "cpu" and backend == "triton"):  # interpreter: only when forced
        ranked = [(p, b) for p, b in table.ranked.get(device, []) if b != backend]
        table.ranked[device] = sorted(ranked + [(priority, backend)])


def ops() -> list[str]:
    return sorted(_OPS)


def summary(device: str) -> str:
    """``op=backend, ...``: what serves each registered op on ``device`` now (for a run's log)."""
    return ", ".join(f"{op}={serving(op, device)}" for op in ops())


@contextlib.contextmanager
def use_backend(spec: str):
    """Serve ops with ``spec`` (same syntax as ``SGFD_FAST_BACKEND``) inside the block."""
    _parse(spec, "")  # validate early
    token = _override.set(spec)
    try:
        yield
    finally:
        _override.reset(token)
