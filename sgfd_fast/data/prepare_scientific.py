"""Rebuild the built-in ``scientific`` dataset (Amazon Industrial & Scientific, 2018 data).

``python -m sgfd_fast.data prepare-scientific --source DIR [--out DIR]`` reads the six public
files of ``SCIENTIFIC_FILES`` (UniSRec's preprocessing, as published by CoWPiRec) and writes
``scientific.npz`` and ``items.tsv`` (see ``scientific/README.md``):

* sequences: RecBole's sequential files hold one row per prediction target with its history (at
  most 50 items). A user's full sequence is the first history item of the user's last train row
  (their rows are written latest target first), the targets of their train rows in reverse file
  order, the valid target, the test target (a user with no train row: the valid row's history).
  Every row's history is checked against the rebuilt sequence; a mismatch is a DataError.
* interactions: each (user, item) pair once, at its first position in the sequence (a
  re-purchase adds nothing to implicit feedback), split per user in sequence order by
  ``splits.ordered_split`` with ``8:1:1`` (MMRec's counts; every user keeps >= 1 train item).
* labels: the level-2 category, i.e. which of the 25 Industrial & Scientific departments
  (``DEPARTMENTS``) the item's category path starts with after ``Industrial & Scientific``,
  longest name first; class 0 = ``unknown`` (empty path), classes 1..25 in ``DEPARTMENTS`` order.
* ``text`` (384-d): all-MiniLM-L6-v2 embeddings (``encoders.embed_texts``) of the item's title and
  brand only, ``"<title>. <brand>"``: never of the category path, whose words name the label the
  SGFD teacher learns to predict. Needs the extra ``prepare``; about 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import DataError
from .formats.common import read_table
from .prepare_office import check_files, source_dir
from .splits import ordered_split

__all__ = ["SCIENTIFIC_FILES", "DEPARTMENTS", "SPLIT", "read_scientific", "prepare_scientific",
           "embedded_text", "write_items", "read_items"]

DEFAULT_OUT = Path(__file__).resolve().parent / "scientific"
_SRC = "CoWPiRec (github.com/ysh-1998/CoWPiRec), dataset/Scientific/"
#: The raw files prepare-scientific reads from its source directory, and where each is published.
SCIENTIFIC_FILES = {f"Scientific.{k}": _SRC + f"Scientific.{k}"
                    for k in ("train.inter", "valid.inter", "test.inter", "text", "item2index",
                              "user2index")}
#: The 25 level-2 departments of Amazon's Industrial & Scientific store; class k+1 = DEPARTMENTS[k].
DEPARTMENTS = (
    "Abrasive & Finishing Products", "Additive Manufacturing Products", "Commercial Door Products",
    "Cutting Tools", "Fasteners", "Filtration", "Food Service Equipment & Supplies",
    "Hydraulics, Pneumatics & Plumbing", "Industrial Electrical", "Industrial Hardware",
    "Industrial Power & Hand Tools", "Janitorial & Sanitation Supplies",
    "Lab & Scientific Products", "Material Handling Products",
    "Occupational Health & Safety Products", "Packaging & Shipping Supplies",
    "Power Transmission Products", "Professional Dental Supplies", "Professional Medical Supplies",
    "Raw Materials", "Retail Store Fixtures & Equipment", "Robotics", "Science Education",
    "Tapes, Adhesives & Sealants", "Test, Measure & Inspect")
LABEL_NAMES = ("unknown",) + DEPARTMENTS
SPLIT = "8:1:1"
MAX_HISTORY = 50
STORE = "Industrial & Scientific"
_INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
ITEM_COLUMNS = ("itemID", "asin", "label", "category", "title", "brand", "category_path")


def _index(path: Path, what: str) -> np.ndarray:
    """``KEY<TAB>idx`` (no header) -> keys ordered by idx; idx must be 0..n-1, each once."""
    _, rows, numbers = read_table(path, sep="\t", header=False, what=what)
    keys = np.full(len(rows), "", dtype=object)
    for r, no in zip(rows, numbers):
        try:
            i = int(r[1])
        except ValueError:
            raise DataError(f"{path} line {no}: index {r[1]!r} is not an integer") from None
        if not 0 <= i < len(rows) or keys[i]:
            raise DataError(f"{path} line {no}: index {i} repeated or outside 0..{len(rows) - 1}")
        keys[i] = r[0].strip()
    return keys


def _read_inter(path: Path, n_users: int, n_items: int):
    """Rows ``(user, history list, target)`` of a RecBole sequential file, in file order."""
    columns, rows, numbers = read_table(path, sep="\t", what="RecBole sequential interaction")
    if columns != _INTER_HEADER:
        raise DataError(f"{path}: header {columns} is not RecBole's sequential "
                        f"{_INTER_HEADER}")
    out = []
    for r, no in zip(rows, numbers):
        try:
            u, hist, t = int(r[0]), [int(x) for x in r[1].split()], int(r[2])
        except ValueError:
            raise DataError(f"{path} line {no}: ids must be integers") from None
        if not (0 <= u < n_users and 0 <= t < n_items and all(0 <= i < n_items for i in hist)):
            raise DataError(f"{path} line {no}: a user or item index outside the index files "
                            f"({n_users} users, {n_items} items)")
        if not hist:
            raise DataError(f"{path} line {no}: empty history")
        out.append((u, hist, t, no))
    return out


def rebuild_sequences(train, valid, test, n_users: int, src: Path) -> list:
    """Each user's full item sequence from the three RecBole files (module docstring's rule),
    every history checked against it. Raises DataError naming the first row that disagrees."""
    by_user = [[] for _ in range(n_users)]
    for row in train:
        by_user[row[0]].append(row)
    vrow, trow = {}, {}
    for rows, d, name in ((valid, vrow, "valid"), (test, trow, "test")):
        for row in rows:
            if row[0] in d:
                raise DataError(f"{src / f'Scientific.{name}.inter'} line {row[3]}: user "
                                f"{row[0]} has a second {name} row")
            d[row[0]] = row
    missing = [u for u in range(n_users) if u not in vrow or u not in trow]
    if missing:
        raise DataError(f"{src}: user {missing[0]} has no valid or no test row "
                        f"({len(missing)} users)")
    seqs = []
    for u in range(n_users):
        rows = by_user[u]
        seq = [rows[-1][1][0]] + [r[2] for r in reversed(rows)] if rows else list(vrow[u][1])
        checks = [(r, len(rows) - k) for k, r in enumerate(rows)]  # (row, target position)
        seq += [vrow[u][2], trow[u][2]]
        checks += [(vrow[u], len(seq) - 2), (trow[u], len(seq) - 1)]
        for (uu, hist, target, no), pos in checks:
            if seq[pos] != target or hist != seq[max(0, pos - MAX_HISTORY):pos]:
                raise DataError(f"{src}: user {u}'s row at line {no} does not fit the rebuilt "
                                f"sequence (its history must be the last {MAX_HISTORY} items "
                                f"before its target); the files are not UniSRec's sequential "
                                f"export")
        seqs.append(seq)
    return seqs


def parse_text(text: str, asin: str, path: Path):
    """``title. category path. brand. `` -> ``(title, category path, brand)``; the category
    path starts with ``Industrial & Scientific`` or is empty (``title. . brand. ``). Titles and
    brands may contain ``". "``, so the category sentence is found by its prefix."""
    if not text.endswith(". "):
        raise DataError(f"{path}: text of {asin} does not end with '. '")
    s = text[:-2]
    k = s.count(f". {STORE} ")
    if k == 1:
        i = s.find(f". {STORE} ")
        rest = s[i + 2:]
        j = rest.find(". ")
        if j < 0:
            raise DataError(f"{path}: text of {asin} has no brand sentence after its category")
        title, path_, brand = s[:i], rest[:j], rest[j + 2:]
    elif k == 0 and s.count(". . ") == 1:
        i = s.find(". . ")
        title, path_, brand = s[:i], "", s[i + 4:]
    else:
        raise DataError(f"{path}: cannot tell the category sentence of {asin}'s text: expected "
                        f"one '. {STORE} ...' or one empty sentence '. . '")
    return title, path_, brand


def clean_title(title: str) -> str:
    """Strip the HTML tail ``/>`` of some source titles; a title that is then only the store's
    name (a broken title in the source) is empty."""
    t = title.strip()
    if t.endswith("/>"):
        t = t[:-2].strip()
    return "" if t == STORE else t


def department(path_: str) -> int:
    """The class of a category path: 0 when empty, else 1 + the index in DEPARTMENTS of the
    longest department name the path starts with (after the store name). -1 when none does."""
    if not path_:
        return 0
    rest = path_[len(STORE):].strip() if path_.startswith(STORE + " ") else None
    if rest is None:
        return -1
    for name in sorted(DEPARTMENTS, key=len, reverse=True):
        if rest == name or rest.startswith(name + " "):
            return 1 + DEPARTMENTS.index(name)
    return -1


def embedded_text(title: str, brand: str) -> str:
    """What the ``text`` features embed: title and brand, never the category."""
    return ". ".join(p for p in (title, brand) if p)


def read_scientific(source) -> dict:
    """Everything of the dataset but the text features, from the raw files in ``source``:
    ``events`` (sequence order), ``train``/``valid``/``test``, ``items`` (the item table),
    ``user_ids``. Raises DataError."""
    src = source_dir(source, SCIENTIFIC_FILES, "prepare-scientific", "Scientific")
    check_files(src, SCIENTIFIC_FILES)
    asins = _index(src / "Scientific.item2index", "item index")
    reviewers = _index(src / "Scientific.user2index", "user index")
    n_users, n_items = len(reviewers), len(asins)
    rows = {s: _read_inter(src / f"Scientific.{s}.inter", n_users, n_items)
            for s in ("train", "valid", "test")}
    seqs = rebuild_sequences(rows["train"], rows["valid"], rows["test"], n_users, src)
    events = np.asarray([(u, i) for u, seq in enumerate(seqs) for i in seq], dtype=np.int64)
    position = np.concatenate([np.arange(len(s)) for s in seqs])
    pairs, first = _first_occurrences(events, n_items)
    train, valid, test = ordered_split(pairs, position[first], n_users, SPLIT)

    tp = src / "Scientific.text"
    columns, trows, numbers = read_table(tp, sep="\t", required=("item_id:token", "text:token_seq"),
                                         what="item text")
    text_of = {}
    for r, no in zip(trows, numbers):
        a = r[0].strip()
        if a in text_of:
            raise DataError(f"{tp} line {no}: a second text for {a}")
        text_of[a] = r[1]
    items = {c: [] for c in ITEM_COLUMNS}
    for i, a in enumerate(asins):
        if a not in text_of:
            raise DataError(f"{tp}: no text for item {i} ({a})")
        title, path_, brand = parse_text(text_of[a], a, tp)
        label = department(path_)
        if label < 0:
            raise DataError(f"{tp}: the category path of {a} ({path_[:60]!r}) starts with none "
                            f"of the {len(DEPARTMENTS)} departments")
        title = clean_title(title)
        brand = brand.strip()
        if not embedded_text(title, brand):
            raise DataError(f"{tp}: item {a} has neither a title nor a brand to embed")
        for c, v in zip(ITEM_COLUMNS, (i, a, label, LABEL_NAMES[label], title, brand, path_)):
            items[c].append(v)
    return dict(events=events, train=train, valid=valid, test=test, items=items,
                user_ids=reviewers.astype(str), n_users=n_users, n_items=n_items)


def _first_occurrences(events: np.ndarray, n_items: int):
    """Each (user, item) pair once, at its first row; returns ``(pairs, row index)``."""
    key = events[:, 0] * np.int64(n_items) + events[:, 1]
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    return events[first], first


def write_items(items: dict, path: Path) -> None:
    """The item table as TSV with a header (``ITEM_COLUMNS``); no field may hold a tab or a
    newline."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(ITEM_COLUMNS) + "\n")
        for row in zip(*(items[c] for c in ITEM_COLUMNS)):
            fields = [str(v) for v in row]
            if any("\t" in f or "\n" in f for f in fields):
                raise DataError(f"item {row[1]}: a field holds a tab or a newline")
            fh.write("\t".join(fields) + "\n")


def read_items(path: Path) -> dict:
    """The item table written by :func:`write_items`: column -> list (``itemID`` and ``label``
    as int arrays)."""
    columns, rows, numbers = read_table(path, sep="\t", required=ITEM_COLUMNS, what="item table")
    out = {c: [r[columns.index(c)] for r in rows] for c in ITEM_COLUMNS}
    for c in ("itemID", "label"):
        out[c] = np.asarray(out[c], dtype=np.int64)
    if not np.array_equal(out["itemID"], np.arange(len(rows))):
        raise DataError(f"{path}: itemID must run 0..{len(rows) - 1} in order")
    return out


def prepare_scientific(source, out=DEFAULT_OUT, *, log=print, progress: bool = True) -> dict:
    """Build ``scientific.npz`` and ``items.tsv`` in ``out`` from the raw files in ``source``.
    Returns a summary dict (counts, paths, seconds). Raises DataError."""
    from .encoders import embed_texts, require_text_encoder

    t0 = time.perf_counter()
    source_dir(source, SCIENTIFIC_FILES, "prepare-scientific", "Scientific")
    require_text_encoder("prepare-scientific")  # fail before the slow steps
    d = read_scientific(source)
    n_pairs = sum(d[s].shape[0] for s in ("train", "valid", "test"))
    labels = np.asarray(d["items"]["label"])
    log(f"sequences: {d['events'].shape[0]} events, {n_pairs} distinct (user, item) pairs, "
        f"{d['n_users']} users, {d['n_items']} items; split {SPLIT}: {d['train'].shape[0]} train, "
        f"{d['valid'].shape[0]} valid, {d['test'].shape[0]} test")
    log(f"labels: {len(DEPARTMENTS)} departments + unknown; {int((labels > 0).sum())} labelled, "
        f"{int((labels == 0).sum())} unknown")
    t1 = time.perf_counter()
    texts = [embedded_text(t, b) for t, b in zip(d["items"]["title"], d["items"]["brand"])]
    text = embed_texts(texts, progress=progress)
    log(f"text: all-MiniLM-L6-v2 of title + brand {text.shape} in "
        f"{time.perf_counter() - t1:.1f}s")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "scientific.npz"
    np.savez_compressed(dest, events=d["events"].astype(np.int32),
                        train=d["train"].astype(np.int32), valid=d["valid"].astype(np.int32),
                        test=d["test"].astype(np.int32), text=text.astype(np.float16),
                        user_ids=d["user_ids"])
    write_items(d["items"], out / "items.tsv")
    size = dest.stat().st_size + (out / "items.tsv").stat().st_size
    info = dict(n_users=d["n_users"], n_items=d["n_items"], n_events=int(d["events"].shape[0]),
                n_pairs=n_pairs, out=str(out), bytes=size,
                seconds=round(time.perf_counter() - t0, 1))
    log(f"wrote {dest} and items.tsv ({size / 1e6:.2f} MB) in {info['seconds']}s")
    return info
