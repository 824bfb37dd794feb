"""sgfd_fast: fast SGFD (semantic-guided feature distillation) for multimodal recommendation.

Ops live in :mod:`sgfd_fast.ops`; ``python -m sgfd_fast.info`` shows what was built and which
backend serves each op on each device.
"""

from . import ops
from ._backend import use_backend
from .errors import SGFDError

__version__ = "0.1.0"
__all__ = ["SGFDError", "ops", "use_backend", "__version__"]
