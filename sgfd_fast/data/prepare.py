"""``python -m sgfd_fast.data prepare``: a user's raw interactions and item texts (and optionally
images) -> a dataset directory in MMRec's layout, offline.

Inputs (CSV or TSV with a header; tab when the header line holds a tab, else comma; quoted fields
as Python's ``csv`` reads them):

* interactions: user, item, optional timestamp and rating columns;
* items: item id, one or more text columns (joined with ``". "``, empty parts skipped), an
  optional category column, or a category path (``--category-sep``) of which ``--category-level``
  (1 = top) is the label;
* optional images: ``<dir>/<item id><ext>``, one per kept item.

Steps, each reported: drop ratings below ``--min-rating``; drop items without text, repeated
item rows and items no interaction names; drop interactions naming items the items file lacks; keep each (user, item) pair once
(the earliest by timestamp, else the first in the file); k-core filtering (MMRec's default 5: every
user and item keeps at least k interactions, repeated until stable); index users and items
0..n-1 in order of first appearance; split each user's interactions with
``splits.ordered_split`` (default ``8:1:1``, MMRec's counts) in time order, or in a seeded
random order when there is no timestamp; encode (``encoders``).

Output ``DIR``: ``<name>.inter`` (TSV userID, itemID, x_label 0/1/2 = train/valid/test, plus
timestamp/rating when given), ``text_feat.npy`` (float32, row = itemID), ``image_feat.npy`` with
images, ``labels.tsv`` (itemID, label), ``i_id_mapping.csv`` / ``u_id_mapping.csv`` (TSV source
id -> index) and ``prepare.json`` (sources with sha256, options, encoders and versions, counts,
every drop with its reason and examples). ``DIR`` must be new or empty; it is written whole or
not at all. Train on it with ``python -m sgfd_fast.train --data-path DIR --format mmrec --labels
DIR/labels.tsv``.

Problems: a missing column or one named twice, an empty file or split, conflicting item rows, a
category column with fewer than two classes, an ``out`` that is the current directory, missing or
unreadable images (or item ids that name no file in the folder), an ``out`` that cannot be
written raise one DataError; the drops above are counted, printed as warnings and recorded
(``strict=True`` turns each into an error).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import DataError
from .formats.common import warn
from .splits import ordered_x_label, parse_ratios

__all__ = ["prepare", "COLUMN_CANDIDATES", "DEFAULT_K_CORE", "DEFAULT_SPLIT"]

DEFAULT_K_CORE = 5  # MMRec's preprocessing (5-core)
DEFAULT_SPLIT = "8:1:1"
#: Column names looked for when the option is not given (the first found is used; two found is
#: an error asking for the option): MMRec's, RecBole's and the Amazon review data's names.
COLUMN_CANDIDATES = {
    "user": ("userID", "user_id", "user_id:token", "user", "reviewerID"),
    "item": ("itemID", "item_id", "item_id:token", "item", "asin", "parent_asin"),
    "timestamp": ("timestamp", "timestamp:float", "time", "unixReviewTime"),
    "rating": ("rating", "rating:float", "overall"),
}
_EXAMPLES = 5


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def _read_csv(path, what: str):
    """``(header, rows, line numbers)`` of a CSV/TSV file; DataError for a missing, empty or
    non-UTF-8 file, a header without rows or naming a column twice, or a row whose field count
    differs from the header."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: expected the {what} file, found a directory")
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
            fh.seek(0)
            delim = "\t" if "\t" in first else ","
            reader = csv.reader(fh, delimiter=delim)
            rows, numbers = [], []
            header = None
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    _check_header(header, path, reader.line_num)
                    continue
                if len(fields) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: {len(fields)} fields, the "
                                    f"header has {len(header)} ({', '.join(header)}); fix or "
                                    f"remove this row (a field holding the separator must be "
                                    f"quoted)")
                rows.append(fields)
                numbers.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); save "
                        f"the {what} file as UTF-8 CSV or TSV") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV/TSV {what} file ({exc})") from None
    if header is None:
        raise DataError(f"{path}: the {what} file is empty; it needs a header line naming its "
                        f"columns and at least one row")
    if not rows:
        raise DataError(f"{path}: the {what} file has a header but no rows")
    return header, rows, numbers


def _check_header(header, path, line: int) -> None:
    """A column name given twice would make every use of it ambiguous (a joined table's two
    ``item_id``s): refused, naming both places. A file separated by anything but a comma or a tab
    reads as one column: said so, rather than 'no user column'."""
    seen = {}
    for k, name in enumerate(header):
        if name and name in seen:
            raise DataError(f"{path} line {line}: column {name!r} is named twice (columns "
                            f"{seen[name] + 1} and {k + 1}); rename one")
        seen[name] = k
    if len(header) == 1:
        other = [c for c in ";|" if c in header[0]]
        if other:
            raise DataError(f"{path} line {line}: the header {header[0]!r} is one column; the "
                            f"file seems separated by {other[0]!r}, but prepare reads comma- or "
                            f"tab-separated files: save it as CSV or TSV")


def _column(header, given, role: str, path, option: str, required: bool = True):
    """The index of the ``role`` column: ``given`` by name, else the one candidate present."""
    if given is not None:
        if given not in header:
            raise DataError(f"{path}: no column {given!r} ({option}); the header is "
                            f"{', '.join(header)}")
        return header.index(given)
    found = [c for c in COLUMN_CANDIDATES[role] if c in header]
    if len(found) > 1:
        raise DataError(f"{path}: several columns could be the {role} ({', '.join(found)}); "
                        f"choose one with {option}")
    if not found:
        if not required:
            return None
        raise DataError(f"{path}: no {role} column found (looked for "
                        f"{', '.join(COLUMN_CANDIDATES[role])}); name it with {option}; the "
                        f"header is {', '.join(header)}")
    return header.index(found[0])


def _numbers(values, numbers, path, column: str, what: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for k, (v, no) in enumerate(zip(values, numbers)):
        try:
            out[k] = float(v)
        except ValueError:
            raise DataError(f"{path} line {no}: {column} {v.strip()!r} is not a number; the "
                            f"{what} column must hold numbers"
                            + (" (e.g. Unix seconds: convert dates first, or name another "
                               "column with --timestamp-col)" if what == "timestamp" else "")
                            ) from None
        if not np.isfinite(out[k]):
            raise DataError(f"{path} line {no}: {column} {v.strip()!r} is not finite")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Drops:
    """Every drop, counted with examples, printed as a warning and recorded; or an error when
    ``strict``."""

    def __init__(self, strict: bool):
        self.strict, self.records = strict, []

    def __call__(self, count: int, unit: str, reason: str, examples=()) -> None:
        if not count:
            return
        examples = [str(e) for e in list(examples)[:_EXAMPLES]]
        msg = (f"dropped {count} {unit}: {reason}"
               + (f" (e.g. {'; '.join(examples)})" if examples else ""))
        if self.strict:
            raise DataError(f"{msg}; --strict allows no drop: fix the input files, or run "
                            f"without --strict")
        warn(msg)
        self.records.append({"count": int(count), "unit": unit, "reason": reason,
                             "examples": examples})


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows that survive iterative k-core filtering: every remaining user
    and item has at least ``k`` rows. ``k <= 1`` keeps every row."""
    keep = np.ones(users.shape[0], dtype=bool)
    if k <= 1:
        return keep
    while True:
        uc = np.bincount(users[keep], minlength=users.max() + 1 if users.size else 0)
        ic = np.bincount(items[keep], minlength=items.max() + 1 if items.size else 0)
        bad = keep & ((uc[users] < k) | (ic[items] < k))
        if not bad.any():
            return keep
        keep &= ~bad


def _first_appearance(values: np.ndarray):
    """Contiguous codes 0..n-1 in order of first appearance, and the distinct values."""
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)], uniq[order]


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def _read_items(path: Path, id_col, text_cols, category_col, drops: _Drops):
    """Item id -> text and item id -> raw category, and what was used (items file step)."""
    header, rows, lines = _read_csv(path, "items")
    idc = _column(header, id_col, "item", path, "--items-id-col")
    if text_cols:
        missing = [c for c in text_cols if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(missing)} (--text-col); the header "
                            f"is {', '.join(header)}")
        tcols = list(text_cols)
    elif "title" in header:
        tcols = ["title"] + (["brand"] if "brand" in header else [])
    elif "text" in header:
        tcols = ["text"]
    else:
        raise DataError(f"{path}: no text column found (looked for title, text); name one or "
                        f"more with --text-col; the header is {', '.join(header)}")
    cc = None
    if category_col is not None:
        if category_col not in header:
            raise DataError(f"{path}: no column {category_col!r} (--category-col); the header is "
                            f"{', '.join(header)}")
        if category_col in tcols:
            raise DataError(f"{path}: column {category_col!r} is both the category and a text "
                            f"column; the category is what SGFD's teacher learns to predict, so "
                            f"text features that contain it leak the label: drop it from "
                            f"--text-col")
        cc = header.index(category_col)
    tci = [header.index(c) for c in tcols]
    text_of, cat_of, line_of = {}, {}, {}
    no_text, repeated = [], []
    for r, no in zip(rows, lines):
        iid = r[idc].strip()
        if not iid:
            raise DataError(f"{path} line {no}: empty item id ({header[idc]})")
        text = ". ".join(p for p in (r[j].strip() for j in tci) if p)
        cat = r[cc].strip() if cc is not None else ""
        if iid in line_of:
            if (text_of.get(iid, ""), cat_of[iid]) != (text, cat):
                raise DataError(f"{path} lines {line_of[iid]} and {no}: item {iid} has two "
                                f"different rows; keep one row per item")
            repeated.append(iid)
            continue
        line_of[iid], cat_of[iid] = no, cat
        if text:
            text_of[iid] = text
        else:
            no_text.append(iid)
    drops(len(repeated), "item rows", "repeated identical rows of the items file", repeated)
    drops(len(no_text), "items", f"no text in {', '.join(tcols)}", no_text)
    if not text_of:
        raise DataError(f"{path}: no item has text in {', '.join(tcols)}")
    return text_of, cat_of, set(no_text), {"items_id": header[idc], "text": tcols}


def _class_order(value: str):
    """Numbers by value (category ids such as 2 before 10), then names alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _category_labels(item_ids, cat_of: dict, column: str, sep, level: int, path: Path):
    """Per-item class and the label record: classes sorted (numbers by value, then names),
    ``unknown`` (an empty category, one named ``unknown`` in any case, or a path shorter than
    ``level``) first when it occurs. DataError below 2 classes."""
    raw = []
    for iid in item_ids:
        value = cat_of[iid]
        if sep is not None:
            levels = [p.strip() for p in value.split(sep)] if value else []
            value = levels[level - 1] if len(levels) >= level else ""
        # data that spell the missing category out (e.g. scientific's) share class 0 with the
        # empty ones, never a second class of the same name
        raw.append("" if value.lower() == "unknown" else value)
    classes = sorted({v for v in raw if v}, key=_class_order)
    if len(classes) < 2:
        where = (f"level {level} of column {column!r} split at {sep!r}" if sep is not None
                 else f"column {column!r}")
        found = f" ({classes[0]!r})" if classes else ""
        raise DataError(f"{path}: {where} gives {len(classes)} class(es) on the kept items{found}; "
                        f"SGFD's teacher needs at least two categories to learn from: choose "
                        f"another column or --category-level")
    names = (["unknown"] if "" in raw else []) + classes
    code = {v: k for k, v in enumerate(names)}
    labels = np.asarray([code[v or "unknown"] for v in raw], dtype=np.int64)
    return labels, {"column": column, "sep": sep, "level": level, "classes": names,
                    "n_unknown": raw.count(""),
                    "counts": np.bincount(labels, minlength=len(names)).tolist()}


def prepare(interactions, items, out, *, user_col=None, item_col=None, timestamp_col=None,
            rating_col=None, min_rating=None, items_id_col=None, text_cols=None,
            category_col=None, category_sep=None, category_level: int = 1, images=None,
            image_ext: str = ".jpg", k_core_min: int = DEFAULT_K_CORE, split=DEFAULT_SPLIT,
            seed: int = 2023, name=None, strict: bool = False, batch_size: int = 64,
            progress: bool = True, log=print) -> dict:
    """Build an MMRec-layout dataset directory ``out`` from raw files (module docstring).
    Returns the ``prepare.json`` record. Raises DataError; ``out`` is then left as it was."""
    from . import encoders

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    final = out.resolve()  # '.' or 'a/..' name no directory of their own to write beside
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: the output directory exists and is not empty; give a new "
                        f"directory (nothing in it is overwritten)")
    if final == Path.cwd() or final in Path.cwd().parents:
        raise DataError(f"{out}: the output directory is the current directory (or holds it); "
                        f"give a new directory such as data/mine (it is created whole)")
    # checked before anything is encoded: out's nearest existing ancestor must take a directory
    above = next(p for p in (final.parent, *final.parent.parents) if p.exists())
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        raise DataError(f"{out}: cannot be created ({above} is "
                        f"{'a file' if not above.is_dir() else 'not writable'}); give --out in a "
                        f"directory you can write")
    name = name or final.name
    if not name or any(c in name for c in "/\\\t\n"):
        raise DataError(f"--name {name!r} is not a usable file name")
    if min(parse_ratios(split)) <= 0:
        raise DataError(f"split {split!r} leaves a split empty; give three positive ratios, e.g. "
                        f"8:1:1")
    if category_level < 1:
        raise DataError(f"--category-level must be 1 or more (1 = the top of the path), got "
                        f"{category_level}")
    if category_col is None and (category_sep is not None or category_level != 1):
        raise DataError("--category-sep and --category-level describe the --category-col column; "
                        "give --category-col (or drop them)")
    if category_sep is not None and not category_sep:
        raise DataError("--category-sep is empty; give the separator of the levels in the "
                        "category path, e.g. '|' or ' > '")
    if category_level > 1 and category_sep is None:
        raise DataError("--category-level needs --category-sep, the separator of the levels in "
                        "the category path")
    if k_core_min < 0:
        raise DataError(f"--k-core must be 0 or more, got {k_core_min}")
    if batch_size < 1:  # checked here, not after the images were encoded
        raise DataError(f"--batch-size must be 1 or more, got {batch_size}")
    if not image_ext.startswith(".") or len(image_ext) < 2 or any(c in image_ext for c in "/\\"):
        raise DataError(f"--image-ext {image_ext!r} is not a file extension; give one such as "
                        f".jpg (with its dot)")
    encoders.require_text_encoder("prepare")  # fail before reading anything large
    if images is not None:
        encoders.require_image_encoder("prepare --images")
        images = Path(images).expanduser()
        if not images.is_dir():
            raise DataError(f"{images}: image directory not found (--images DIR holds "
                            f"<item id>{image_ext} files)")
    drops = _Drops(strict)
    ipath, tpath = Path(interactions).expanduser(), Path(items).expanduser()
    text_of, cat_of, no_text, item_columns = _read_items(tpath, items_id_col, text_cols,
                                                         category_col, drops)

    # --- interactions ----------------------------------------------------------------------------
    header, rows, lines = _read_csv(ipath, "interactions")
    uc = _column(header, user_col, "user", ipath, "--user-col")
    ic = _column(header, item_col, "item", ipath, "--item-col")
    if uc == ic:
        raise DataError(f"{ipath}: the user and the item column are both {header[uc]!r}")
    tc = _column(header, timestamp_col, "timestamp", ipath, "--timestamp-col", required=False)
    rc = _column(header, rating_col, "rating", ipath, "--rating-col", required=False)
    if min_rating is not None and rc is None:
        raise DataError(f"{ipath}: --min-rating needs a rating column (--rating-col); the header "
                        f"is {', '.join(header)}")
    users = [r[uc].strip() for r in rows]
    items_ = [r[ic].strip() for r in rows]
    for values, col in ((users, uc), (items_, ic)):
        if "" in values:
            raise DataError(f"{ipath} line {lines[values.index('')]}: empty {header[col]}")
    ts = (_numbers([r[tc] for r in rows], lines, ipath, header[tc], "timestamp")
          if tc is not None else None)
    rating = (_numbers([r[rc] for r in rows], lines, ipath, header[rc], "rating")
              if rc is not None else None)

    def where(mask):
        return [f"line {lines[k]}: {users[k]}, {items_[k]}"
                for k in np.flatnonzero(mask)[:_EXAMPLES]]

    named = set(items_)
    unnamed = [i for i in text_of if i not in named]
    drops(len(unnamed), "items", f"no interaction of {ipath.name} names them", unnamed)
    keep = np.ones(len(rows), dtype=bool)
    if min_rating is not None:
        low = rating < float(min_rating)
        drops(int(low.sum()), "interactions", f"rating below --min-rating {min_rating:g}",
              where(low))
        keep &= ~low
    known = np.asarray([i in text_of for i in items_], dtype=bool)
    textless = keep & np.asarray([i in no_text for i in items_], dtype=bool)
    drops(int(textless.sum()), "interactions", "their item has no text (dropped above)",
          where(textless))
    absent = keep & ~known & ~textless
    drops(int(absent.sum()), "interactions", f"their item is not in {tpath.name}", where(absent))
    if keep.any() and not (keep & known).any():
        raise DataError(f"no interaction of {ipath} names an item of {tpath} (e.g. "
                        f"{items_[0]!r} there, {next(iter(text_of))!r} here); the item ids must "
                        f"match: choose the columns with --item-col and --items-id-col")
    keep &= known
    # each (user, item) once: the earliest by timestamp, then in file order
    idx = np.flatnonzero(keep)
    if ts is not None:
        idx = idx[np.argsort(ts[idx], kind="stable")]
    seen, repeat = set(), np.zeros(len(rows), dtype=bool)
    for k in idx:
        key = (users[k], items_[k])
        if key in seen:
            repeat[k] = True
        seen.add(key)
    drops(int(repeat.sum()), "interactions", "repeated (user, item) pairs; the earliest is kept",
          where(repeat))
    keep &= ~repeat
    idx = np.flatnonzero(keep)
    if not idx.size:
        raise DataError(f"{ipath}: no interaction is left (see the warnings above)")
    ucode, _ = _first_appearance(np.asarray(users, dtype=object)[idx].astype(str))
    icode, _ = _first_appearance(np.asarray(items_, dtype=object)[idx].astype(str))
    core = k_core(ucode, icode, k_core_min)
    if not core.any():
        raise DataError(f"no interaction is left after {k_core_min}-core filtering (every user "
                        f"and item needs {k_core_min} interactions); lower --k-core")
    gone = np.zeros(len(rows), dtype=bool)
    gone[idx[~core]] = True
    n_u_gone = np.unique(ucode).size - np.unique(ucode[core]).size
    n_i_gone = np.unique(icode).size - np.unique(icode[core]).size
    drops(int(gone.sum()), "interactions",
          f"{k_core_min}-core filtering removed {n_u_gone} users and {n_i_gone} items with fewer "
          f"than {k_core_min} interactions (repeated until none is left)", where(gone))
    idx = idx[core]
    u, user_ids = _first_appearance(np.asarray(users, dtype=object)[idx].astype(str))
    i, item_ids = _first_appearance(np.asarray(items_, dtype=object)[idx].astype(str))
    n_users, n_items = len(user_ids), len(item_ids)
    if ts is not None:
        order_key, split_order = ts[idx], "by timestamp (ties in file order)"
    else:
        order_key = np.random.default_rng(seed).random(idx.size)
        split_order = f"in a random order (no timestamp column; seed {seed})"
    x_label = ordered_x_label(u, order_key, n_users, split)
    n_split = np.bincount(x_label, minlength=3)
    for k, part in ((1, "valid"), (2, "test")):
        if not n_split[k]:
            raise DataError(f"the {part} split is empty: every user has fewer than 3 "
                            f"interactions after filtering (a user needs 3 to give one each to "
                            f"train, valid and test); raise --k-core or add interactions")
    log(f"interactions: {n_users} users, {n_items} items, {idx.size} kept of {len(rows)} "
        f"({n_split[0]} train, {n_split[1]} valid, {n_split[2]} test: {split} per user, "
        f"{split_order})")

    labels, labels_info = None, None
    if category_col is not None:
        labels, labels_info = _category_labels(item_ids, cat_of, category_col, category_sep,
                                               category_level, tpath)
    else:
        warn("no --category-col: the dataset has no item labels (labels.tsv is not written); "
             "SGFD's teacher needs one category per item, so training then needs "
             "--labels FILE")

    # --- features: images first (they can fail), then text -----------------------------------
    image_feat = None
    if images is not None:
        # an id such as '../x' or 'a/b' would name a file outside the folder
        odd = [iid for iid in item_ids if iid in (".", "..") or any(c in iid for c in "/\\")]
        if odd:
            raise DataError(f"{len(odd)} kept item id(s) cannot name a file in {images} "
                            f"(e.g. {', '.join(map(repr, odd[:_EXAMPLES]))}): with --images an "
                            f"item id must be a plain file name, without '/' or '\\'")
        paths = [images / f"{iid}{image_ext}" for iid in item_ids]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{images}: {len(missing)} of the {n_items} kept items have no image "
                            f"(e.g. {', '.join(missing[:_EXAMPLES])}); every kept item needs "
                            f"<item id>{image_ext}: add the files, or remove those items from "
                            f"the items file")
        image_feat, bad = encoders.embed_images(paths, progress=progress)
        if bad:
            raise DataError(f"{images}: {len(bad)} image file(s) cannot be read ("
                            + "; ".join(f"{paths[k].name}: {why}" for k, why in bad[:3])
                            + "); replace them, or remove those items from the items file")
    text_feat = encoders.embed_texts([text_of[iid] for iid in item_ids], batch_size=batch_size,
                                     progress=progress)

    extra = [c for c in (tc, rc) if c is not None]
    record = {
        "format": "mmrec", "name": name,
        "sources": {"interactions": _source(ipath), "items": _source(tpath)},
        "columns": {"user": header[uc], "item": header[ic],
                    "timestamp": header[tc] if tc is not None else None,
                    "rating": header[rc] if rc is not None else None, **item_columns,
                    "category": category_col},
        "options": {"min_rating": min_rating, "k_core": k_core_min, "split": split,
                    "split_order": split_order, "seed": seed, "category_sep": category_sep,
                    "category_level": category_level, "image_ext": image_ext},
        "encoders": {"text": {**encoders.text_encoder_info(), "columns": item_columns["text"],
                              "join": ". "}},
        "counts": {"n_interactions_read": len(rows), "n_users": n_users, "n_items": n_items,
                   "n_interactions": int(idx.size), "n_train": int(n_split[0]),
                   "n_valid": int(n_split[1]), "n_test": int(n_split[2]),
                   "n_labels": len(labels_info["classes"]) if labels_info else None},
        "labels": labels_info,
        "dropped": drops.records,
        "files": {"inter": f"{name}.inter", "text": "text_feat.npy",
                  "image": "image_feat.npy" if image_feat is not None else None,
                  "labels": "labels.tsv" if labels_info else None,
                  "item_ids": "i_id_mapping.csv", "user_ids": "u_id_mapping.csv"},
    }
    if images is not None:
        record["sources"]["images"] = {"path": str(images.resolve()), "n_files": n_items}
        record["encoders"]["image"] = encoders.image_encoder_info()

    # --- write into a scratch directory, then rename: all or nothing -------------------------
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        inter = [[str(u[k]), str(i[k]), str(x_label[k])] + [rows[j][c].strip() for c in extra]
                 for k, j in enumerate(idx)]
        _write_tsv(tmp / f"{name}.inter", ["userID", "itemID", "x_label"]
                   + [header[c] for c in extra], inter)
        np.save(tmp / "text_feat.npy", text_feat)
        if image_feat is not None:
            np.save(tmp / "image_feat.npy", image_feat)
        if labels is not None:
            _write_tsv(tmp / "labels.tsv", ["itemID", "label"], enumerate(labels.tolist()))
        _write_tsv(tmp / "i_id_mapping.csv", ["source_id", "itemID"],
                   ((v, k) for k, v in enumerate(item_ids)))
        _write_tsv(tmp / "u_id_mapping.csv", ["source_id", "userID"],
                   ((v, k) for k, v in enumerate(user_ids)))
        record["seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / "prepare.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            final.rmdir()  # empty, checked above
        tmp.rename(final)
    except OSError as e:  # a full disk, a read-only or vanished directory: one error, no trace
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{out}: cannot write the dataset ({e.strerror or e}"
                        f"{f': {e.filename}' if e.filename else ''}); nothing was written: free "
                        f"space or give another --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} in {record['seconds']}s; train with: python -m sgfd_fast.train "
        f"--data-path {out} --format mmrec"
        + (f" --labels {out / 'labels.tsv'}" if labels_info else ""))
    return record


def _source(path: Path) -> dict:
    return {"path": str(path.resolve()), "sha256": _sha256(path), "bytes": path.stat().st_size}


def _write_tsv(path: Path, header, rows) -> None:
    """A TSV table; a field holding a tab or a newline is a DataError (it would break a row)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(header) + "\n")
        for row in rows:
            fields = [str(v) for v in row]
            bad = [f for f in fields if "\t" in f or "\n" in f or "\r" in f]
            if bad:
                raise DataError(f"{bad[0][:40]!r}: an id or value holds a tab or a line break, "
                                f"which {path.name} cannot hold; remove it from the input")
            fh.write("\t".join(fields) + "\n")
