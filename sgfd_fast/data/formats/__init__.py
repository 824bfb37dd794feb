"""Readers and writers for the two on-disk formats users bring, one module per format: the SGFD
release's (:mod:`.sgfd`) and MMRec's (:mod:`.mmrec`); :mod:`.common` holds the checks both share
(tables, ids, feature matrices, labels).

Every problem raises one :class:`~sgfd_fast.errors.DataError` that names the file, the row or id and
the fix. Recoverable oddities (duplicate rows, users without training items) are reported with
``warnings.warn(..., DataWarning)``.
"""

from .common import (DataWarning, read_features, read_interactions, read_labels, read_table,
                     remap_labels, resolve_labels, select_modalities)
from .mmrec import read_mmrec, write_mmrec
from .sgfd import read_sgfd, write_sgfd

__all__ = [
    "DataWarning",
    "read_table",
    "read_interactions",
    "read_features",
    "read_labels",
    "remap_labels",
    "select_modalities",
    "resolve_labels",
    "read_sgfd",
    "read_mmrec",
    "write_sgfd",
    "write_mmrec",
]
