"""sgfd_fast: fast SGFD (semantic-guided feature distillation) for multimodal recommendation.

Ops live in :mod:`sgfd_fast.ops`; ``python -m sgfd_fast.info`` shows what was built and which
backend serves each op on each device. Submodules load on first use, so data tools that need no
torch start quickly.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import SGFDError

__version__ = "0.1.0"
__all__ = ["SGFDError", "ops", "use_backend", "__version__"]


def _checkout_kernels():
    """In a source checkout the Triton kernels live in ``kernels/`` beside this package (setup.py
    installs them as ``sgfd_fast.kernels``); give them the same import name there, so the Triton
    backends work when ``python -m`` runs the checkout."""
    here = Path(__file__).resolve().parent
    init = here.parent / "kernels" / "__init__.py"
    if (here / "kernels").is_dir() or not init.is_file():
        return
    spec = importlib.util.spec_from_file_location(f"{__name__}.kernels", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(sys.modules[__name__], "kernels", module)


_checkout_kernels()


def __getattr__(name):
    if name == "use_backend":
        from ._backend import use_backend

        return use_backend
    if name in ("ops", "graph", "data", "testing", "info"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sgfd_fast' has no attribute {name!r}")
