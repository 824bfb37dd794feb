"""MMRec's format (a directory), read and written::

    <name>.inter               TSV with columns userID, itemID, x_label (0/1/2 = train/valid/test)
    image_feat.npy, text_feat.npy, <modality>_feat.npy   (any case of .npy)
    i_id_mapping.csv           optional TSV mapping an original id (e.g. asin) to itemID
    labels                     not part of MMRec: pass a file (.npy of ints, or TSV itemID<TAB>label)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..._files import npy_writer, table_writer, write_all
from ...errors import DataError
from .common import (LABELS_HINT, MODALITIES_HINT, ItemRefs, discovered_modalities,
                     explicit_modalities, fit_to_items, parse_ids, read_table, require_dir,
                     resolve_labels, select_modalities, user_ids_fit, warn)

__all__ = ["read_mmrec", "write_mmrec"]

MMREC_FEATURE_RE = re.compile(r"^(.+)_feat(?i:\.npy)$")
#: MMRec's own modalities come first, in its order; any other <name>_feat.npy after them
MMREC_ORDER = ("image", "text")


def _find_inter(root: Path) -> Path:
    inters = sorted(p for p in root.iterdir() if p.suffix.lower() == ".inter")
    if not inters:
        sgfd = (" (this one holds train.csv, the SGFD release's layout: give --format sgfd)"
                if (root / "train.csv").is_file() else "")
        raise DataError(f"{root}: no <name>.inter file found; an MMRec dataset directory holds a "
                        f"TSV <name>.inter with columns userID, itemID, x_label{sgfd}")
    if len(inters) == 1:
        return inters[0]
    named = [p for p in inters if p.stem == root.name]
    if len(named) == 1:
        return named[0]
    raise DataError(f"{root}: several .inter files ({', '.join(p.name for p in inters)}); keep one, "
                    f"or name it {root.name}.inter")


def read_mmrec(path, *, labels=None, modalities=None) -> dict:
    """Read an MMRec-format directory. A labels file is required (MMRec has none)."""
    root = require_dir(path)
    inter = _find_inter(root)
    columns, rows, numbers = read_table(inter, sep="\t", required=("userID", "itemID", "x_label"),
                                        what="MMRec interaction")
    ui, ii, xi = (columns.index(c) for c in ("userID", "itemID", "x_label"))
    users = parse_ids([r[ui] for r in rows], path=inter, column="userID", line_numbers=numbers)
    items = parse_ids([r[ii] for r in rows], path=inter, column="itemID", line_numbers=numbers)
    # x_label is a split code, not an id: anything but 0/1/2 gets the split hint
    codes = {"0": 0, "1": 1, "2": 2}
    xl = np.empty(len(rows), dtype=np.int64)
    for k, (r, no) in enumerate(zip(rows, numbers)):
        v = r[xi].strip()
        if v not in codes:
            raise DataError(f"{inter} line {no}: x_label {v or '(empty)'} is invalid; use 0 = "
                            f"train, 1 = valid, 2 = test")
        xl[k] = codes[v]
    pairs = np.stack([users, items], axis=1)
    train, valid, test = pairs[xl == 0], pairs[xl == 1], pairs[xl == 2]
    if train.shape[0] == 0:
        raise DataError(f"{inter}: no training rows (x_label 0); MMRec marks train/valid/test with "
                        f"x_label 0/1/2")
    if test.shape[0] == 0:
        raise DataError(f"{inter}: no test rows (x_label 2); MMRec marks train/valid/test with "
                        f"x_label 0/1/2")
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    if labels is None:
        # prepare writes labels.tsv beside the data, but a labels file is always named, never
        # guessed: say where it is
        here = ("; this directory holds labels.tsv (python -m sgfd_fast.data prepare writes it): "
                "--labels labels.tsv" if (root / "labels.tsv").is_file() else "")
        raise DataError(f"{root}: MMRec data has no item labels, and SGFD needs one category label "
                        f"per item: give {LABELS_HINT}, a .npy of ints (row = "
                        f"itemID) or a TSV itemID<TAB>label{here}")
    lp = resolve_labels(root, labels)
    if isinstance(modalities, dict):
        files = explicit_modalities(root, modalities)
    else:
        found = [(m.group(1), f) for f in sorted(os.listdir(root))
                 if (m := MMREC_FEATURE_RE.match(f))]
        found.sort(key=lambda x: (MMREC_ORDER + (x[0],)).index(x[0]))  # stable: others by name
        files = discovered_modalities(root, found)
        if not files:
            raise DataError(f"{root}: no feature files found; expected image_feat.npy, text_feat.npy "
                            f"or <modality>_feat.npy (rows = itemID), or name the files: "
                            f"{MODALITIES_HINT}")
        files = select_modalities(files, modalities, str(root))
    refs = ItemRefs()
    refs.add(inter, items, numbers)
    feats, raw_labels = fit_to_items(files, lp, n_items, refs)
    item_ids = None
    mp = root / "i_id_mapping.csv"
    if mp.exists():
        item_ids = _read_id_mapping(mp, "itemID", n_items)
    user_ids = None
    mp = root / "u_id_mapping.csv"
    if mp.exists() and user_ids_fit(n_users, len(rows), inter, mp.name):
        user_ids = _read_id_mapping(mp, "userID", n_users)
    return dict(train=train, valid=valid if valid.shape[0] else None, test=test, n_users=n_users,
                n_items=n_items, features=feats, raw_labels=raw_labels, labels_source=str(lp),
                user_ids=user_ids, item_ids=item_ids, source=str(root), files={"inter": str(inter)},
                valid_present=bool(valid.shape[0]))


def _read_id_mapping(path: Path, id_col: str, n: int):
    columns, rows, numbers = read_table(path, required=(id_col,), what="id mapping")
    j = columns.index(id_col)
    others = [k for k in range(len(columns)) if k != j]
    if not others:
        raise DataError(f"{path}: id mapping needs an original-id column besides {id_col}")
    ids = parse_ids([r[j] for r in rows], path=path, column=id_col, line_numbers=numbers)
    out = np.full(n, "", dtype=object)
    keep = ids < n
    if not keep.all():
        warn(f"{path}: {int((~keep).sum())} row(s) map a {id_col} beyond the {n} in the "
             f"interactions (first at line {numbers[int(np.flatnonzero(~keep)[0])]}); they are "
             f"ignored")
    out[ids[keep]] = np.asarray([r[others[0]].strip() for r in rows], dtype=object)[keep]
    return out.astype(str)



def write_mmrec(dataset, path, *, name: str | None = None, labels_file: str = "labels.tsv") -> Path:
    """Write a Dataset as an MMRec-format directory (``<name>.inter``, ``<modality>_feat.npy``,
    ``i_id_mapping.csv`` when item ids are known) plus ``labels_file`` (TSV itemID<TAB>label; MMRec
    itself has no labels, so readers must be given it: ``labels=<dir>/labels.tsv``).
    All or nothing, as :meth:`~sgfd_fast.api.TrainedModel.export`: a failed write (a full disk)
    leaves the directory as it was. Returns the path of the labels file (``~`` expanded).
    Raises DataError naming the file that cannot be written."""
    root = Path(path).expanduser()
    name = name or root.name
    splits = (dataset.train, dataset.valid, dataset.test)
    inter = [np.concatenate([p[:, 0] for p in splits]).tolist(),
             np.concatenate([p[:, 1] for p in splits]).tolist(),
             [xl for xl, p in enumerate(splits) for _ in range(p.shape[0])]]  # 0/1/2
    files = {f"{name}.inter": table_writer(["userID", "itemID", "x_label"], inter)}
    for m, arr in dataset.features.items():
        files[f"{m}_feat.npy"] = npy_writer(np.ascontiguousarray(arr))
    if dataset.item_ids is not None:
        ids = np.asarray(dataset.item_ids).tolist()
        files["i_id_mapping.csv"] = table_writer(["asin", "itemID"], [ids, range(len(ids))])
    labels = np.asarray(dataset.labels).tolist()
    files[labels_file] = table_writer(["itemID", "label"], [range(len(labels)), labels])
    return write_all(root, files, error=DataError, what="write_mmrec")[labels_file]

