"""sgfd_fast: fast SGFD (semantic-guided feature distillation) for multimodal recommendation.

Ops live in :mod:`sgfd_fast.ops`; ``python -m sgfd_fast.info`` shows what was built and which
backend serves each op on each device. Submodules load on first use, so data tools that need no
torch start quickly.
"""

import importlib

from .errors import SGFDError

__version__ = "0.1.0"
__all__ = ["SGFDError", "ops", "use_backend", "__version__"]


def __getattr__(name):
    if name == "use_backend":
        from ._backend import use_backend

        return use_backend
    if name in ("ops", "graph", "data", "testing", "info"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sgfd_fast' has no attribute {name!r}")
