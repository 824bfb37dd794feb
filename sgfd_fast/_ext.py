"""Loading of the compiled extension modules.

``cpu`` is ``sgfd_fast._C`` (C++/OpenMP), ``cuda`` is ``sgfd_fast._C_cuda``; either is ``None`` when
it was not built or failed to load, with the reason in ``cpu_error`` / ``cuda_error``. A module that
exists but fails to load is reported once, loudly (design §3.3); a build without it is reported by
``python -m sgfd_fast.info``.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings


def _load(name: str):
    full = f"sgfd_fast.{name}"
    if importlib.util.find_spec(full) is None:
        return None, "not built (no compiler, CMake or nvcc when the package was installed)"
    try:
        return importlib.import_module(full), None
    except ImportError as exc:  # built but unloadable: say so once, never silently
        warnings.warn(f"sgfd_fast: {full} failed to load ({exc}); falling back to PyTorch "
                      "references. Reinstall with `pip install .` and check "
                      "`python -m sgfd_fast.info`.", RuntimeWarning, stacklevel=3)
        return None, f"failed to load: {exc}"


cpu, cpu_error = _load("_C")
cuda, cuda_error = _load("_C_cuda")


def cuda_device_count() -> int:
    """GPUs visible to the CUDA module (0 without a driver or a GPU)."""
    return cuda.device_count() if cuda is not None else 0
