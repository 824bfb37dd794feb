"""The SGFD release's format (a directory), read and written::

    train.csv, test.csv        columns by name: userID, itemID (optionally reviewerID, asin); CRLF ok
    valid.csv                  optional, same columns
    FeatureImage_normal.npy    modality "image"   (rows = itemID)
    FeatureText_normal.npy     modality "text"
    Feature<Name>_normal.npy   any further modality "<name>" (first letter lower-cased)
    MetaData_normal.npy        one integer category label per item
    (the .npy suffix in any case: .NPY is read alike)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..._files import npy_writer, table_writer, write_all
from ...errors import DataError
from .common import (LABELS_HINT, MODALITIES_HINT, ItemRefs, discovered_modalities,
                     explicit_modalities, fit_to_items, read_interactions, require_dir,
                     require_file, resolve_labels, select_modalities, user_ids_fit)

__all__ = ["read_sgfd", "write_sgfd"]

SGFD_FEATURE_RE = re.compile(r"^Feature(.+)_normal(?i:\.npy)$")
SGFD_LABELS = "MetaData_normal.npy"
SGFD_LABELS_RE = re.compile(r"^MetaData_normal(?i:\.npy)$")


def _ids_from_extras(pairs_list, extras_list, col: str, key: str, n: int, source: str):
    """Build an original-id array (e.g. asin per itemID) from optional string columns."""
    if not all(col in e for e in extras_list):
        return None
    out = np.full(n, "", dtype=object)
    for pairs, extras in zip(pairs_list, extras_list):
        ids = pairs[:, 0 if key == "user" else 1]
        names = np.asarray(extras[col], dtype=object)
        out[ids] = names  # later rows win; consistency is not enforced (ids are authoritative)
    return out.astype(str)



def read_sgfd(path, *, labels=None, modalities=None) -> dict:
    """Read an SGFD-format directory. Returns a dict of raw parts (see dataset.assemble)."""
    root = require_dir(path)
    fix = "an SGFD dataset directory holds train.csv and test.csv (columns userID,itemID)"
    inters = sorted(p.name for p in root.glob("*") if p.suffix.lower() == ".inter")
    if inters and not (root / "train.csv").exists():  # e.g. what prepare writes
        fix += f"; this one holds {inters[0]}, MMRec's layout: give --format mmrec (format=)"
    parts = {}
    extras = {}
    refs = ItemRefs()
    for split in ("train", "valid", "test"):
        f = root / f"{split}.csv"
        if split == "valid" and not f.exists():
            continue
        require_file(f, f"{split} interactions", fix)
        parts[split], extras[split], lines = read_interactions(f, what=f"{split} interactions")
        refs.add(f, parts[split][:, 1], lines)
    n_users = max(int(p[:, 0].max()) for p in parts.values()) + 1
    n_items = max(int(p[:, 1].max()) for p in parts.values()) + 1

    if isinstance(modalities, dict):
        files = explicit_modalities(root, modalities)
    else:
        found = [(m.group(1)[:1].lower() + m.group(1)[1:], f) for f in sorted(os.listdir(root))
                 if (m := SGFD_FEATURE_RE.match(f))]
        files = discovered_modalities(root, found)
        if not files:
            raise DataError(f"{root}: no feature files found; expected FeatureImage_normal.npy, "
                            f"FeatureText_normal.npy or Feature<Name>_normal.npy (rows = itemID), "
                            f"or name the files: {MODALITIES_HINT}")
        files = select_modalities(files, modalities, str(root))
    if labels is None:
        named = [f for f in sorted(os.listdir(root)) if SGFD_LABELS_RE.match(f)]
        if len(named) > 1:
            raise DataError(f"{root}: {' and '.join(named)} are both the labels file; keep one")
        lp = root / (named[0] if named else SGFD_LABELS)
        if not lp.exists():
            raise DataError(f"{root}: labels file {SGFD_LABELS} not found; SGFD needs one integer "
                            f"category label per item: add {SGFD_LABELS} or give "
                            f"{LABELS_HINT} (.npy of ints, or TSV itemID<TAB>label)")
    else:
        lp = resolve_labels(root, labels)
    feats, raw_labels = fit_to_items(files, lp, n_items, refs)

    split_names = list(parts)
    item_ids = _ids_from_extras([parts[s] for s in split_names], [extras[s] for s in split_names],
                                "asin", "item", n_items, str(root))
    user_ids = None
    if all("reviewerID" in extras[s] for s in split_names) and \
            user_ids_fit(n_users, sum(p.shape[0] for p in parts.values()), root, "reviewerID"):
        user_ids = _ids_from_extras([parts[s] for s in split_names],
                                    [extras[s] for s in split_names], "reviewerID", "user",
                                    n_users, str(root))
    return dict(train=parts["train"], valid=parts.get("valid"), test=parts["test"],
                n_users=n_users, n_items=n_items, features=feats, raw_labels=raw_labels,
                labels_source=str(lp), user_ids=user_ids, item_ids=item_ids, source=str(root),
                files={s: str(root / f"{s}.csv") for s in parts})


def _sgfd_feature_name(modality: str) -> str:
    return f"Feature{modality[:1].upper()}{modality[1:]}_normal.npy"


def write_sgfd(dataset, path, *, write_valid: bool = True) -> Path:
    """Write a Dataset as an SGFD-format directory (train/valid/test.csv, Feature*_normal.npy,
    MetaData_normal.npy). Columns are ``itemID,userID`` (+ ``asin`` when item ids are known), as in
    the SGFD release. ``write_valid=False`` folds the validation rows back into train.csv (the
    release's layout, which has no valid.csv). All or nothing, as
    :meth:`~sgfd_fast.api.TrainedModel.export`: a failed write (a full disk) leaves the directory
    as it was. Returns the directory (``~`` expanded). Raises DataError naming the file that
    cannot be written."""
    root = Path(path).expanduser()
    if write_valid:
        splits = [("train", dataset.train), ("test", dataset.test)]
        if dataset.valid.shape[0]:
            splits.insert(1, ("valid", dataset.valid))
    else:
        splits = [("train", np.concatenate([dataset.train, dataset.valid])), ("test", dataset.test)]
    files = {}
    for name, pairs in splits:
        header = ["itemID", "userID"]  # itemID first, as in the release
        columns = [pairs[:, 1].tolist(), pairs[:, 0].tolist()]
        if dataset.item_ids is not None:
            header.append("asin")
            columns.append(np.asarray(dataset.item_ids)[pairs[:, 1]].tolist())
        files[f"{name}.csv"] = table_writer(header, columns, sep=",")
    for m, arr in dataset.features.items():
        files[_sgfd_feature_name(m)] = npy_writer(np.ascontiguousarray(arr))
    files[SGFD_LABELS] = npy_writer(np.asarray(dataset.labels, dtype=np.int64))
    write_all(root, files, error=DataError, what="write_sgfd")
    if not write_valid:  # only once the new files are in place
        (root / "valid.csv").unlink(missing_ok=True)
    return root
