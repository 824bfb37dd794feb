"""Datasets for sgfd_fast: loaders for the SGFD and MMRec formats, deterministic splits, the
built-in datasets ``office`` and ``scientific`` (all real) and ``toysgames-synthetic`` (real graph,
synthetic features and labels), and ``prepare`` (raw files -> an MMRec-layout dataset). The
formats and built-in names are declared once, in :mod:`.registry` (``FORMATS``, ``DATASETS``).

>>> from sgfd_fast.data import load_dataset
>>> ds = load_dataset("office")
>>> ds = load_dataset(path="data/Office", format="sgfd")
>>> ds = load_dataset(path="data/baby", format="mmrec", labels="baby_labels.tsv")
"""

from .dataset import Dataset, load_data, load_dataset, load_interactions
from .formats import DataWarning, write_mmrec, write_sgfd
from .registry import DATASETS, FORMATS
from .splits import carve_valid, random_split

__all__ = ["Dataset", "load_dataset", "load_data", "DATASETS", "FORMATS", "load_interactions", "write_sgfd",
           "write_mmrec", "carve_valid", "random_split", "DataWarning"]
