"""Built-in datasets shipped inside the package (see office/README.md for provenance).

* ``office`` — all real: the SGFD authors' Amazon Office split, item text embedded with
  all-MiniLM-L6-v2 (``text``, 384-d), an also-bought/also-viewed relation embedding (``relation``,
  64-d), real level-2 category labels (40 classes incl. "unknown"). No image modality exists.
* ``toysgames-synthetic`` — the real Toys & Games interaction graph (liufancs/DMRL split) with
  SYNTHETIC features of the paper's shapes (image 4096-d, text 384-d) and SYNTHETIC labels
  (19 classes), generated at load time from a fixed seed.
* ``scientific`` — all real: Amazon Industrial & Scientific (UniSRec's 2018 preprocessing),
  per-user chronological 8:1:1 split, title + brand text embedded with all-MiniLM-L6-v2 (``text``,
  384-d), level-2 department labels (25 + unknown). See scientific/README.md.

Their names and one-line descriptions are the registry's (:data:`.registry.DATASETS`); ``PARTS``
holds each one's loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .registry import DATASETS

__all__ = ["DATASETS", "PARTS", "builtin_parts", "OFFICE_NPZ", "TOYSGAMES_NPZ", "SCIENTIFIC_NPZ",
           "SCIENTIFIC_ITEMS"]

_HERE = Path(__file__).resolve().parent
OFFICE_NPZ = _HERE / "office" / "office.npz"
TOYSGAMES_NPZ = _HERE / "toysgames" / "toysgames_graph.npz"
SCIENTIFIC_NPZ = _HERE / "scientific" / "scientific.npz"
SCIENTIFIC_ITEMS = _HERE / "scientific" / "items.tsv"

#: Seed of the generated toysgames-synthetic features and labels (independent of the split seed).
SYNTHETIC_SEED = 20230
SYNTHETIC_SHAPES = {"image": 4096, "text": 384}
SYNTHETIC_N_LABELS = 19
SYNTHETIC_RANK = 32


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: the embedded {what} data file is missing from the installed "
                        f"package; reinstall sgfd_fast (the package data globs "
                        f"sgfd_fast/data/*/*.npz and *.tsv must be included) or rebuild it with "
                        f"`python -m sgfd_fast.data prepare-{path.parent.name} --source DIR`")
    return path


def _npz(path: Path, what: str):
    return np.load(_require(path, what), allow_pickle=False)


def builtin_parts(name: str) -> dict:
    """The raw parts of a built-in dataset, as a reader returns them, plus ``description``,
    ``synthetic`` (the generated parts' names) and ``meta``, for ``dataset.assemble``."""
    if name not in PARTS:
        raise DataError(f"unknown dataset {name!r}; built-in datasets are {', '.join(DATASETS)}")
    return PARTS[name]()


def _office() -> dict:
    z = _npz(OFFICE_NPZ, "office")
    n_items = int(z["labels"].shape[0])
    train = z["train"].astype(np.int64)
    test = z["test"].astype(np.int64)
    n_users = int(max(train[:, 0].max(), test[:, 0].max())) + 1
    return dict(
        train=train, valid=None, test=test, n_users=n_users, n_items=n_items,
        features={"text": z["text"].astype(np.float32), "relation": z["relation"].astype(np.float32)},
        raw_labels=z["labels"].astype(np.int64), labels_source="office labels",
        user_ids=z["user_ids"], item_ids=z["item_ids"], source="office", synthetic=(),
        description=("Amazon Office (SGFD authors' split, 2,406 items): real interactions, "
                     "real item text embedded with all-MiniLM-L6-v2, real also-bought/"
                     "also-viewed relation embedding, real level-2 category labels (40 incl. "
                     "0 = unknown, not the paper's 54)"),
        meta={"label_values": z["label_values"].astype(np.int64)})


def _toysgames() -> dict:
    z = _npz(TOYSGAMES_NPZ, "toysgames graph")
    train = z["train"].astype(np.int64)
    test = z["test"].astype(np.int64)
    n_users = int(max(train[:, 0].max(), test[:, 0].max())) + 1
    n_items = int(max(train[:, 1].max(), test[:, 1].max())) + 1
    features, labels = synthetic_features(n_items)
    return dict(train=train, valid=None, test=test, n_users=n_users, n_items=n_items,
                features=features, raw_labels=labels, labels_source="synthetic labels",
                source="toysgames-synthetic", synthetic=("image", "text", "labels"),
                description=("Amazon Toys & Games (liufancs/DMRL split): real graph, "
                             "synthetic features and labels (generated from a fixed seed; "
                             "image 4096-d, text 384-d, 19 classes)"),
                meta={})


def _scientific() -> dict:
    from .prepare_scientific import LABEL_NAMES, SPLIT, read_items

    z = _npz(SCIENTIFIC_NPZ, "scientific")
    items = read_items(_require(SCIENTIFIC_ITEMS, "scientific item table"))
    return dict(
        train=z["train"].astype(np.int64), valid=z["valid"].astype(np.int64),
        test=z["test"].astype(np.int64), n_users=int(z["user_ids"].shape[0]),
        n_items=len(items["asin"]), features={"text": z["text"].astype(np.float32)},
        raw_labels=items["label"], labels_source="scientific item table labels",
        user_ids=z["user_ids"], item_ids=np.asarray(items["asin"]), source="scientific",
        synthetic=(),
        description=("Amazon Industrial & Scientific (UniSRec's 2018 preprocessing, 4,385 "
                     "items): real interactions split per user in time order " + SPLIT +
                     ", real item text (title + brand, no category words) embedded with "
                     "all-MiniLM-L6-v2, real level-2 department labels (25 + 0 = unknown)"),
        meta={"label_names": list(LABEL_NAMES), "split": f"chronological {SPLIT} per user"})


#: Each built-in dataset's parts (one entry per name of the registry's DATASETS).
PARTS = {"office": _office, "toysgames-synthetic": _toysgames, "scientific": _scientific}


def synthetic_features(n_items: int, *, seed: int = SYNTHETIC_SEED, shapes=None,
                       n_labels: int = SYNTHETIC_N_LABELS, rank: int = SYNTHETIC_RANK):
    """SYNTHETIC per-item features and labels (not real data).

    Each item gets a label drawn uniformly from ``n_labels``; its latent vector is its class
    centroid plus Gaussian noise in ``rank`` dimensions; each modality is latent @ a random
    (rank, d) projection, then ReLU for ``image`` (CNN-like non-negative activations). Low rank and
    class-correlated, so models see structure rather than pure noise. Deterministic for the seed.
    """
    shapes = dict(SYNTHETIC_SHAPES if shapes is None else shapes)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, size=n_items).astype(np.int64)
    centroids = rng.standard_normal((n_labels, rank), dtype=np.float32)
    latent = centroids[labels] + 0.7 * rng.standard_normal((n_items, rank), dtype=np.float32)
    feats = {}
    for m, d in shapes.items():
        proj = rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(rank))
        x = latent @ proj
        if m == "image":
            np.maximum(x, 0, out=x)
        feats[m] = np.ascontiguousarray(x, dtype=np.float32)
    return feats, labels
