"""Recommenders by name: ``MODELS`` and ``build_model`` (see ``base.Recommender``)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Recommender
from .bm3 import BM3
from .freedom import FREEDOM
from .grcn import GRCN
from .lattice import LATTICE
from .lightgcn import LightGCN
from .maml import MAML
from .mgcn import MGCN
from .sgfd import SGFD
from .vbpr import VBPR

__all__ = ["BM3", "FREEDOM", "GRCN", "LATTICE", "LightGCN", "MAML", "MGCN", "MODELS", "Recommender",
           "SGFD", "VBPR", "build_model"]

#: every model by name: the trainer, the CLI (``-m``) and tests/models/test_contract.py read it
MODELS: dict[str, type[Recommender]] = {"BM3": BM3, "GRCN": GRCN, "MAML": MAML, "VBPR": VBPR,
                                        "LightGCN": LightGCN, "FREEDOM": FREEDOM,
                                        "MGCN": MGCN, "LATTICE": LATTICE}


def build_model(name: str, dataset, config: dict) -> Recommender:
    """Instantiate the model registered as ``name`` (case-insensitive) for ``dataset``, in the
    config's ``precision`` (:meth:`Recommender.use_precision`; float32 when absent)."""
    by_upper = {k.upper(): cls for k, cls in MODELS.items()}
    cls = by_upper.get(str(name).upper())
    if cls is None:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return cls(dataset, config).use_precision(config.get("precision", "fp32"))
