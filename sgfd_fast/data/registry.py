"""The dataset formats and the built-in datasets, declared once.

``load_dataset``, ``python -m sgfd_fast.train`` (``-d``, ``--format``), ``python -m sgfd_fast.data
inspect`` (``--dataset``, ``--format``) and study specs (``dataset:``, ``format:``) read their
names, defaults and help from here. A new format is one entry of :data:`FORMATS` (its reader in
``formats/``); a new built-in dataset one entry of :data:`DATASETS` (its parts in
``builtin.py``, its config layer ``configs/dataset/<name>.yaml``); ``tests/data/test_registry.py``
checks that every reader of the tables agrees with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .formats import read_mmrec, read_sgfd

__all__ = ["Format", "FORMATS", "DEFAULT_FORMAT", "DATASETS", "DEFAULT_DATASET"]


@dataclass(frozen=True)
class Format:
    """An on-disk dataset format: ``about`` (its layout, one line) and ``read(path, *, labels,
    modalities) -> parts`` (the raw parts ``dataset.assemble`` takes)."""

    about: str
    read: Callable[..., dict]


#: The formats of a dataset directory (``--data-path DIR --format F``), by name.
FORMATS = {
    "sgfd": Format("the SGFD release's layout: train.csv, test.csv (optional valid.csv), "
                   "Feature<Name>_normal.npy, MetaData_normal.npy (labels)", read_sgfd),
    "mmrec": Format("MMRec's layout: <name>.inter (x_label 0/1/2), <modality>_feat.npy, and a "
                    "labels file given apart (.npy or TSV itemID<TAB>label)", read_mmrec),
}
DEFAULT_FORMAT = "sgfd"

#: The built-in datasets (package data), by name: what each is, real or synthetic.
DATASETS = {
    "office": "Amazon Office (SGFD split): real interactions, real item text (MiniLM) and relation "
              "features, real level-2 category labels (40 incl. unknown)",
    "toysgames-synthetic": "Amazon Toys & Games: real interaction graph, synthetic features "
                           "(image 4096-d, text 384-d) and synthetic labels (19 classes)",
    "scientific": "Amazon Industrial & Scientific: real interactions (chronological 8:1:1), real "
                  "item text (MiniLM of title + brand), real level-2 department labels (25 + "
                  "unknown)",
}
DEFAULT_DATASET = "office"
