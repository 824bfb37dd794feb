"""Loading of the compiled extension modules.

``cpu`` is ``sgfd_fast._C`` (C++/OpenMP), ``cuda`` is ``sgfd_fast._C_cuda``; either is ``None`` when
it was not built or failed to load, with the reason in ``cpu_error`` / ``cuda_error``, and the
loaded file in ``cpu_path`` / ``cuda_path``.

Where a module is looked for:

* beside this file: an installed package, or a checkout built in place (editable install, or the
  CMake build of docs/DEVELOPING.md);
* a source checkout without a build of its own (``python -m sgfd_fast.train`` run in the checkout
  after ``pip install .``: ``python -m`` imports the checkout's ``sgfd_fast/``) loads the modules of
  the installed sgfd_fast found further along ``sys.path``, but only when that install's
  ``_build.json`` records the same digest of ``csrc/`` and ``CMakeLists.txt`` as the checkout has;
  otherwise it refuses, with a warning that says why (no silent fallback).

A module that exists but fails to load is reported once, loudly (docs/DESIGN.md §3.3); a build without it
is reported by ``python -m sgfd_fast.info``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path

from ._buildinfo import read_record, source_digest

PACKAGE_DIR = Path(__file__).resolve().parent
# A checkout holds the C++ sources beside the package; an installed package does not.
CHECKOUT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "csrc").is_dir() and \
    (PACKAGE_DIR.parent / "CMakeLists.txt").is_file() else None


def _find_in(directory: Path, full: str):
    finder = importlib.machinery.FileFinder(
        str(directory), (importlib.machinery.ExtensionFileLoader,
                         importlib.machinery.EXTENSION_SUFFIXES))
    return finder.find_spec(full)


def _installed_package() -> Path | None:
    """The directory of the sgfd_fast that ``sys.path`` holds besides this checkout, if any."""
    def resolved(entry):
        return Path(entry or os.getcwd()).resolve()

    others = [e for e in sys.path if isinstance(e, str) and resolved(e) != CHECKOUT]
    spec = importlib.machinery.PathFinder.find_spec("sgfd_fast", others)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(list(spec.submodule_search_locations)[0]).resolve()
    return None if found == PACKAGE_DIR else found


def _not_built(record: dict | None, name: str) -> str:
    if record is None:
        return "not built (no compiler, CMake or nvcc when the package was installed)"
    if name == "_C_cuda" and record.get("cuda") not in (None, "built"):
        return f"not built: {record['cuda']}"
    return f"not built: {record.get('error', 'the build produced no module')}"


_digest: str | None = None


def _from_install(full: str, name: str):
    """``(spec, None, False)`` of the installed build that matches this checkout, else
    ``(None, reason, refused)``; ``refused``: an installed build exists but does not match."""
    global _digest
    here = f"importing the source tree at {PACKAGE_DIR}, which has no {name} build"
    installed = _installed_package()
    if installed is None:
        return None, (f"{here}, and no installed sgfd_fast was found: `pip install .`, or build "
                      "in place (docs/DEVELOPING.md)"), False
    record = read_record(installed)
    spec = _find_in(installed, full)
    if spec is None:
        return None, (f"{here}; the installed sgfd_fast at {installed} is "
                      f"{_not_built(record, name)}"), False
    if _digest is None:
        _digest = source_digest(CHECKOUT)
    if record is None or record.get("sources") != _digest:
        why = ("records no source digest" if record is None or "sources" not in record
               else "was compiled from other csrc/ or CMakeLists.txt than this checkout's")
        return None, (f"{here}; the installed build at {spec.origin} {why}, so it is not used: "
                      "reinstall from this checkout (`pip install .`), or run from outside the "
                      "checkout to use the installed package as a whole"), True
    return spec, None, False


def _load(name: str):
    full = f"sgfd_fast.{name}"
    spec = _find_in(PACKAGE_DIR, full)
    if spec is None:
        if CHECKOUT is None:
            return None, _not_built(read_record(PACKAGE_DIR), name)
        spec, error, refused = _from_install(full, name)
        if spec is None:
            if refused:  # a build exists and the user expects it: never fall back silently
                warnings.warn(f"sgfd_fast: {full}: {error}; running on PyTorch references.",
                              RuntimeWarning, stacklevel=3)
            return None, error
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[__package__], name, module)
    except ImportError as exc:  # built but unloadable: say so once, never silently
        sys.modules.pop(full, None)
        warnings.warn(f"sgfd_fast: {full} failed to load ({exc}); falling back to PyTorch "
                      "references. Reinstall with `pip install .` and check "
                      "`python -m sgfd_fast.info`.", RuntimeWarning, stacklevel=3)
        return None, f"failed to load: {exc}"
    return module, None


cpu, cpu_error = _load("_C")
cuda, cuda_error = _load("_C_cuda")
cpu_path = cpu.__file__ if cpu is not None else None
cuda_path = cuda.__file__ if cuda is not None else None


def cuda_device_count() -> int:
    """GPUs visible to the CUDA module (0 without a driver or a GPU)."""
    return cuda.device_count() if cuda is not None else 0
