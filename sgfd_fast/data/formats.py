"""Readers and writers for the two on-disk formats users bring: the SGFD release's and MMRec's.

SGFD format (a directory)::

    train.csv, test.csv        columns by name: userID, itemID (optionally reviewerID, asin); CRLF ok
    valid.csv                  optional, same columns
    FeatureImage_normal.npy    modality "image"   (rows = itemID)
    FeatureText_normal.npy     modality "text"
    Feature<Name>_normal.npy   any further modality "<name>" (first letter lower-cased)
    MetaData_normal.npy        one integer category label per item

MMRec format (a directory)::

    <name>.inter               TSV with columns userID, itemID, x_label (0/1/2 = train/valid/test)
    image_feat.npy, text_feat.npy, <modality>_feat.npy
    i_id_mapping.csv           optional TSV mapping an original id (e.g. asin) to itemID
    labels                     not part of MMRec: pass a file (.npy of ints, or TSV itemID<TAB>label)

Every problem raises one :class:`~sgfd_fast.errors.DataError` that names the file, the row or id and
the fix. Recoverable oddities (duplicate rows, users without training items) are reported with
``warnings.warn(..., DataWarning)`` and on the ``"sgfd_fast"`` logger.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

logger = logging.getLogger("sgfd_fast")

__all__ = [
    "DataWarning",
    "read_table",
    "read_interactions",
    "read_features",
    "read_labels",
    "remap_labels",
    "read_sgfd",
    "read_mmrec",
    "write_sgfd",
    "write_mmrec",
]

SGFD_FEATURE_RE = re.compile(r"^Feature(.+)_normal\.npy$")
MMREC_FEATURE_RE = re.compile(r"^(.+)_feat\.npy$")
SGFD_LABELS = "MetaData_normal.npy"


class DataWarning(UserWarning):
    """A recoverable data problem (duplicates dropped, users without training items, ...)."""


def warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _require_file(path: Path, what: str, fix: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: expected the {what} file but found a directory; {fix}")
    if not path.exists():
        raise DataError(f"{path}: {what} file not found; {fix}")
    return path


def read_table(path, *, sep: str | None = None, required=(), what: str = "interaction",
               header: bool = True) -> tuple[list[str], list[list[str]], list[int]]:
    """Read a small delimited text table strictly.

    Returns ``(columns, rows, line_numbers)``. ``sep=None`` picks tab when the header contains a
    tab, else comma. CRLF and a UTF-8 BOM are accepted; blank lines are skipped. Raises DataError
    for an empty file, a header without rows, a row with the wrong number of fields, or a missing
    required column.
    """
    path = Path(path)
    try:
        with open(path, "r", encoding="utf-8-sig", newline=None) as fh:
            text = fh.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a {what} file but found a directory") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                        f"{what} files must be plain-text CSV/TSV") from None
    lines = text.split("\n")
    numbered = [(i + 1, ln.rstrip("\r")) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise DataError(f"{path}: the file is empty; a {what} file needs a header line "
                        f"({', '.join(required) or 'column names'}) and at least one row")
    first = numbered[0][1]
    if sep is None:
        sep = "\t" if "\t" in first else ","
    if header:
        columns = [c.strip() for c in first.split(sep)]
        body = numbered[1:]
    else:
        columns = []
        body = numbered
    missing = [c for c in required if c not in columns]
    if missing:
        sep_name = "tab" if sep == "\t" else repr(sep)
        raise DataError(
            f"{path} line {numbered[0][0]}: missing column(s) {', '.join(missing)} in header "
            f"{columns!r} ({sep_name}-separated); the header must name the columns "
            f"{', '.join(required)} (names are case-sensitive)")
    if not body:
        raise DataError(f"{path}: has a header but no data rows; add at least one row")
    width = len(columns) if header else len(body[0][1].split(sep))
    rows, numbers = [], []
    for no, ln in body:
        fields = ln.split(sep)
        if len(fields) != width:
            raise DataError(f"{path} line {no}: malformed row {ln[:80]!r}: expected {width} "
                            f"{'tab' if sep == chr(9) else 'comma'}-separated fields, got "
                            f"{len(fields)}; fix or remove this row")
        rows.append(fields)
        numbers.append(no)
    return columns, rows, numbers


def parse_ids(values: list[str], *, path, column: str, line_numbers: list[int]) -> np.ndarray:
    """Parse a column of non-negative integer ids, naming the first bad row on failure."""
    arr = None
    try:
        arr = np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    if arr is None:
        for v, no in zip(values, line_numbers):
            try:
                int(v)
            except ValueError:
                raise DataError(
                    f"{path} line {no}: {column} {v.strip()!r} is not an integer; ids must be "
                    f"0-based integer indices (map raw ids such as ASINs to 0..n-1 first, e.g. "
                    f"with sgfd_fast.data.load_interactions)") from None
        raise DataError(f"{path}: column {column} holds values that are not 64-bit integers")
    neg = np.flatnonzero(arr < 0)
    if neg.size:
        k = int(neg[0])
        raise DataError(f"{path} line {line_numbers[k]}: {column} {int(arr[k])} is negative; ids "
                        f"must be 0-based non-negative integers")
    return arr


def read_interactions(path, *, sep: str | None = None, what: str = "interaction"):
    """Read an interaction CSV/TSV with columns ``userID`` and ``itemID`` (any order).

    Returns ``(pairs (n, 2) int64 [user, item], extras)`` where ``extras`` maps the optional
    columns ``reviewerID`` / ``asin`` to lists of strings (for original-id lookup).
    """
    path = _require_file(Path(path), what, "check the dataset directory")
    columns, rows, numbers = read_table(path, sep=sep, required=("userID", "itemID"), what=what)
    ui, ii = columns.index("userID"), columns.index("itemID")
    users = parse_ids([r[ui] for r in rows], path=path, column="userID", line_numbers=numbers)
    items = parse_ids([r[ii] for r in rows], path=path, column="itemID", line_numbers=numbers)
    extras = {}
    for name in ("reviewerID", "asin"):
        if name in columns:
            j = columns.index(name)
            extras[name] = [r[j].strip() for r in rows]
    return np.stack([users, items], axis=1), extras


# --------------------------------------------------------------------------------------------
# features and labels
# --------------------------------------------------------------------------------------------


def _load_npy(path: Path, what: str) -> np.ndarray:
    path = _require_file(path, what, "check the file name or pass the right path")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DataError(
                f"{path}: the {what} file holds a pickled object array, which is not loaded (it "
                f"could run code); if you trust it, re-save it as numbers: np.save(path, "
                f"np.load(path, allow_pickle=True).astype(np.float32))") from None
        if "pickled data" in str(exc):
            raise DataError(f"{path}: not a .npy file (no .npy header; it looks like a pickle or "
                            f"another format); save the {what} with numpy.save(path, array) from "
                            f"a numeric array") from None
        raise DataError(f"{path}: cannot read the {what} file as a numeric .npy array ({exc}); "
                        f"save it with numpy.save(path, array) from a numeric array") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npy file ({exc}); save it with numpy.save") from None


def check_features(arr, n_items: int, *, source: str, modality: str) -> np.ndarray:
    """Validate a feature matrix: 2-D numeric, >= n_items rows (extra rows truncated), finite."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DataError(f"{source}: features of modality {modality!r} must be a 2-D array "
                        f"(n_items, d), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{source}: features of modality {modality!r} have dtype {arr.dtype}; "
                        f"expected a float array")
    if arr.shape[1] == 0:
        raise DataError(f"{source}: features of modality {modality!r} have width 0")
    if arr.shape[0] < n_items:
        raise DataError(
            f"{source}: features of modality {modality!r} have {arr.shape[0]} rows but the "
            f"interactions reference {n_items} items (itemID up to {n_items - 1}); row i must hold "
            f"the features of itemID i, so provide at least {n_items} rows")
    if arr.shape[0] > n_items:
        logger.info("%s: %d feature rows for %d items; using the first %d", source,
                    arr.shape[0], n_items, n_items)
        arr = arr[:n_items]
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        r = int(bad_rows[0])
        c = int(np.flatnonzero(~finite[r])[0])
        raise DataError(
            f"{source}: features of modality {modality!r} contain NaN or Inf ({bad_rows.size} "
            f"rows affected; first at row {r} = itemID {r}, column {c}: {arr[r, c]}); replace "
            f"them (e.g. with zeros) before loading")
    return arr


def read_features(path, n_items: int, modality: str) -> np.ndarray:
    path = Path(path)
    return check_features(_load_npy(path, f"{modality} feature"), n_items, source=str(path),
                          modality=modality)


def remap_labels(labels: np.ndarray, *, source: str = "labels") -> tuple[np.ndarray, int, np.ndarray]:
    """Map arbitrary integer label values to contiguous 0..K-1 (sorted by value).

    Returns ``(labels int64, K, values)`` where ``values[k]`` is the original value of class k.
    """
    values, inverse = np.unique(labels, return_inverse=True)
    k = int(values.size)
    if k and not (values[0] == 0 and values[-1] == k - 1):
        logger.info("%s: %d distinct label values (min %d, max %d) remapped to 0..%d", source, k,
                    int(values[0]), int(values[-1]), k - 1)
    return inverse.reshape(-1).astype(np.int64), k, values


def _integral(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{source}: labels must be integers; item {i} has label {arr[i].item()!r} "
                            f"({bad.size} non-integer values); store one integer category id "
                            f"per item")
        return arr.astype(np.int64)
    raise DataError(f"{source}: labels must be integers, got dtype {arr.dtype}; store one integer "
                    f"category id per item")


def read_labels(path, n_items: int) -> np.ndarray:
    """Read per-item labels from a ``.npy`` (1-D ints, row = itemID) or a TSV ``itemID<TAB>label``.

    Returns raw int64 labels of length ``n_items`` (not yet remapped).
    """
    path = Path(path)
    _require_file(path, "labels", "pass labels=FILE with a .npy of ints or a TSV itemID<TAB>label")
    if path.suffix == ".npy":
        arr = _load_npy(path, "labels")
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(f"{path}: labels must be a 1-D array with one integer per item, got "
                            f"shape {arr.shape}")
        arr = _integral(arr, str(path))
        if arr.shape[0] < n_items:
            raise DataError(f"{path}: labels have length {arr.shape[0]} but the dataset has "
                            f"{n_items} items; provide exactly one label per itemID 0..{n_items - 1}")
        # like feature rows: trailing items that no interaction mentions are dropped
        return arr[:n_items]
    # TSV / CSV itemID<TAB>label, header optional
    _, rows, numbers = read_table(path, header=False, what="labels")
    if len(rows[0]) < 2:
        raise DataError(f"{path} line {numbers[0]}: expected two columns itemID<TAB>label")
    first = rows[0][0].strip()
    if not first.lstrip("-").isdigit():  # a header line
        rows, numbers = rows[1:], numbers[1:]
        if not rows:
            raise DataError(f"{path}: has a header but no data rows")
    items = parse_ids([r[0] for r in rows], path=path, column="itemID", line_numbers=numbers)
    vals = []
    for r, no in zip(rows, numbers):
        v = r[1].strip()
        try:
            vals.append(int(v))
        except ValueError:
            raise DataError(f"{path} line {no}: label {v!r} of itemID {r[0].strip()} is not an "
                            f"integer; labels must be integer category ids") from None
    vals = np.asarray(vals, dtype=np.int64)
    out_of_range = np.flatnonzero(items >= n_items)
    if out_of_range.size:
        k = int(out_of_range[0])
        raise DataError(f"{path} line {numbers[k]}: itemID {int(items[k])} is out of range; the "
                        f"dataset has {n_items} items (0..{n_items - 1})")
    labels = np.full(n_items, np.iinfo(np.int64).min, dtype=np.int64)
    seen = np.zeros(n_items, dtype=bool)
    for it, v, no in zip(items.tolist(), vals.tolist(), numbers):
        if seen[it] and labels[it] != v:
            raise DataError(f"{path} line {no}: itemID {it} is labelled twice with different "
                            f"labels ({int(labels[it])} and {v}); keep one label per item")
        labels[it] = v
        seen[it] = True
    if not seen.all():
        miss = np.flatnonzero(~seen)
        raise DataError(f"{path}: labels have the wrong length: {miss.size} of {n_items} items have "
                        f"no label (first missing itemID {int(miss[0])}); give every item a label")
    return labels


# --------------------------------------------------------------------------------------------
# whole-directory readers: return a plain dict; dataset.py assembles the Dataset
# --------------------------------------------------------------------------------------------


def _require_dir(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset directory not found; check --path / path=")
    if not path.is_dir():
        raise DataError(f"{path}: expected a dataset directory, found a file")
    return path


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


def select_modalities(feats: dict, modalities, source: str) -> dict:
    """Keep only the named modalities (a list/tuple of names), in the order given."""
    if modalities is None:
        return feats
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    unknown = [m for m in names if m not in feats]
    if unknown:
        raise DataError(f"{source}: modality {unknown[0]!r} not found; available modalities: "
                        f"{', '.join(feats) or 'none'}")
    if not names:
        raise DataError(f"{source}: modalities=[] selects nothing; name at least one of "
                        f"{', '.join(feats)}")
    return {m: feats[m] for m in names}


def _explicit_modalities(root: Path, modalities, n_items: int) -> dict:
    feats = {}
    for name, file in modalities.items():
        p = Path(file)
        if not p.is_absolute():
            p = root / p
        feats[str(name)] = read_features(p, n_items, str(name))
    return feats


def _resolve_labels(root: Path, labels) -> Path:
    p = Path(labels)
    if not p.is_absolute() and not p.exists() and (root / p).exists():
        p = root / p
    return p


def read_sgfd(path, *, labels=None, modalities=None) -> dict:
    """Read an SGFD-format directory. Returns a dict of raw parts (see dataset.assemble)."""
    root = _require_dir(path)
    fix = "an SGFD dataset directory holds train.csv and test.csv (columns userID,itemID)"
    parts = {}
    extras = {}
    for split in ("train", "valid", "test"):
        f = root / f"{split}.csv"
        if split == "valid" and not f.exists():
            continue
        _require_file(f, f"{split} interactions", fix)
        parts[split], extras[split] = read_interactions(f, what=f"{split} interactions")
    n_users = max(int(p[:, 0].max()) for p in parts.values()) + 1
    n_items = max(int(p[:, 1].max()) for p in parts.values()) + 1

    if isinstance(modalities, dict):
        feats = _explicit_modalities(root, modalities, n_items)
    else:
        feats = {}
        for f in sorted(os.listdir(root)):
            m = SGFD_FEATURE_RE.match(f)
            if m:
                name = m.group(1)
                name = name[:1].lower() + name[1:]
                feats[name] = read_features(root / f, n_items, name)
        if not feats:
            raise DataError(f"{root}: no feature files found; expected FeatureImage_normal.npy, "
                            f"FeatureText_normal.npy or Feature<Name>_normal.npy (rows = itemID), "
                            f"or pass modalities={{'name': 'file.npy'}} (CLI: --modality "
                            f"NAME=FILE)")
        feats = select_modalities(feats, modalities, str(root))
    if labels is None:
        lp = root / SGFD_LABELS
        if not lp.exists():
            raise DataError(f"{root}: labels file {SGFD_LABELS} not found; SGFD needs one integer "
                            f"category label per item: add {SGFD_LABELS} or pass labels=FILE "
                            f"(.npy of ints, or TSV itemID<TAB>label)")
    else:
        lp = _resolve_labels(root, labels)
    raw_labels = read_labels(lp, n_items)

    split_names = list(parts)
    item_ids = _ids_from_extras([parts[s] for s in split_names], [extras[s] for s in split_names],
                                "asin", "item", n_items, str(root))
    user_ids = _ids_from_extras([parts[s] for s in split_names], [extras[s] for s in split_names],
                                "reviewerID", "user", n_users, str(root))
    return dict(train=parts["train"], valid=parts.get("valid"), test=parts["test"],
                n_users=n_users, n_items=n_items, features=feats, raw_labels=raw_labels,
                labels_source=str(lp), user_ids=user_ids, item_ids=item_ids, source=str(root),
                files={s: str(root / f"{s}.csv") for s in parts})


def _find_inter(root: Path) -> Path:
    inters = sorted(root.glob("*.inter"))
    if not inters:
        raise DataError(f"{root}: no <name>.inter file found; an MMRec dataset directory holds a "
                        f"TSV <name>.inter with columns userID, itemID, x_label")
    if len(inters) == 1:
        return inters[0]
    named = root / f"{root.name}.inter"
    if named.exists():
        return named
    raise DataError(f"{root}: several .inter files ({', '.join(p.name for p in inters)}); keep one, "
                    f"or name it {root.name}.inter")


def read_mmrec(path, *, labels=None, modalities=None) -> dict:
    """Read an MMRec-format directory. A labels file is required (MMRec has none)."""
    root = _require_dir(path)
    inter = _find_inter(root)
    columns, rows, numbers = read_table(inter, sep="\t", required=("userID", "itemID", "x_label"),
                                        what="MMRec interaction")
    ui, ii, xi = (columns.index(c) for c in ("userID", "itemID", "x_label"))
    users = parse_ids([r[ui] for r in rows], path=inter, column="userID", line_numbers=numbers)
    items = parse_ids([r[ii] for r in rows], path=inter, column="itemID", line_numbers=numbers)
    xl = parse_ids([r[xi] for r in rows], path=inter, column="x_label", line_numbers=numbers)
    bad = np.flatnonzero(xl > 2)
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{inter} line {numbers[k]}: x_label {int(xl[k])} is invalid; use 0 = train, "
                        f"1 = valid, 2 = test")
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
        raise DataError(f"{root}: MMRec data has no item labels, and SGFD needs one category label "
                        f"per item: pass labels=FILE (CLI: --labels FILE), a .npy of ints (row = "
                        f"itemID) or a TSV itemID<TAB>label")
    lp = _resolve_labels(root, labels)
    raw_labels = read_labels(lp, n_items)
    if isinstance(modalities, dict):
        feats = _explicit_modalities(root, modalities, n_items)
    else:
        feats = {}
        names = sorted(os.listdir(root))
        # image and text first, in MMRec's order, then any other <name>_feat.npy
        ordered = [f for f in ("image_feat.npy", "text_feat.npy") if f in names]
        ordered += [f for f in names if MMREC_FEATURE_RE.match(f) and f not in ordered]
        for f in ordered:
            name = MMREC_FEATURE_RE.match(f).group(1)
            feats[name] = read_features(root / f, n_items, name)
        if not feats:
            raise DataError(f"{root}: no feature files found; expected image_feat.npy, text_feat.npy "
                            f"or <modality>_feat.npy (rows = itemID), or pass modalities=")
        feats = select_modalities(feats, modalities, str(root))
    item_ids = None
    mp = root / "i_id_mapping.csv"
    if mp.exists():
        item_ids = _read_id_mapping(mp, "itemID", n_items)
    user_ids = None
    mp = root / "u_id_mapping.csv"
    if mp.exists():
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
    out[ids[keep]] = np.asarray([r[others[0]].strip() for r in rows], dtype=object)[keep]
    return out.astype(str)


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------


def _write_csv(path: Path, pairs: np.ndarray, sep: str, header: list[str], extra_cols=()):
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(sep.join(header) + "\n")
        cols = [pairs[:, 0].tolist(), pairs[:, 1].tolist()] + [list(c) for c in extra_cols]
        for row in zip(*cols):
            fh.write(sep.join(str(v) for v in row) + "\n")


def _sgfd_feature_name(modality: str) -> str:
    return f"Feature{modality[:1].upper()}{modality[1:]}_normal.npy"


def write_sgfd(dataset, path, *, write_valid: bool = True) -> Path:
    """Write a Dataset as an SGFD-format directory (train/valid/test.csv, Feature*_normal.npy,
    MetaData_normal.npy). Columns are ``itemID,userID`` (+ ``asin`` when item ids are known), as in
    the SGFD release. ``write_valid=False`` folds the validation rows back into train.csv (the
    release's layout, which has no valid.csv). Returns the directory."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if write_valid:
        splits = [("train", dataset.train), ("test", dataset.test)]
        if dataset.valid.shape[0]:
            splits.insert(1, ("valid", dataset.valid))
    else:
        splits = [("train", np.concatenate([dataset.train, dataset.valid])), ("test", dataset.test)]
        stale = root / "valid.csv"
        if stale.exists():
            stale.unlink()
    for name, pairs in splits:
        swapped = pairs[:, ::-1]  # itemID first, as in the release
        header = ["itemID", "userID"]
        extra = []
        if dataset.item_ids is not None:
            header.append("asin")
            extra.append(np.asarray(dataset.item_ids)[pairs[:, 1]].tolist())
        _write_csv(root / f"{name}.csv", swapped, ",", header, extra)
    for m, arr in dataset.features.items():
        np.save(root / _sgfd_feature_name(m), np.ascontiguousarray(arr))
    np.save(root / SGFD_LABELS, np.asarray(dataset.labels, dtype=np.int64))
    return root


def write_mmrec(dataset, path, *, name: str | None = None, labels_file: str = "labels.tsv") -> Path:
    """Write a Dataset as an MMRec-format directory (``<name>.inter``, ``<modality>_feat.npy``,
    ``i_id_mapping.csv`` when item ids are known) plus ``labels_file`` (TSV itemID<TAB>label; MMRec
    itself has no labels, so readers must be given it: ``labels=<dir>/labels.tsv``).
    Returns the path of the labels file."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    name = name or root.name
    with open(root / f"{name}.inter", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("userID\titemID\tx_label\n")
        for xl, pairs in ((0, dataset.train), (1, dataset.valid), (2, dataset.test)):
            for u, i in pairs.tolist():
                fh.write(f"{u}\t{i}\t{xl}\n")
    for m, arr in dataset.features.items():
        np.save(root / f"{m}_feat.npy", np.ascontiguousarray(arr))
    if dataset.item_ids is not None:
        with open(root / "i_id_mapping.csv", "w", encoding="utf-8", newline="\n") as fh:
            fh.write("asin\titemID\n")
            for i, a in enumerate(np.asarray(dataset.item_ids).tolist()):
                fh.write(f"{a}\t{i}\n")
    lp = root / labels_file
    with open(lp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("itemID\tlabel\n")
        for i, lab in enumerate(np.asarray(dataset.labels).tolist()):
            fh.write(f"{i}\t{lab}\n")
    return lp
