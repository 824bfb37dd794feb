"""What both on-disk formats share: strict table and id parsing, feature and label checks, and
``DataWarning``.

Every problem raises one :class:`~sgfd_fast.errors.DataError` that names the file, the row or id and
the fix. Recoverable oddities (duplicate rows, users without training items) are reported with
``warnings.warn(..., DataWarning)``.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np

from ...errors import DataError

logger = logging.getLogger("sgfd_fast")

__all__ = ["DataWarning", "ItemRefs", "read_table", "parse_ids", "read_interactions",
           "check_features", "load_features", "read_features", "remap_labels", "load_labels",
           "check_labels", "read_labels", "fit_to_items", "select_modalities", "resolve_labels",
           "discovered_modalities", "LABEL_LIMIT"]


# How each caller names a dataset's files: the train CLI, the data CLI and Python differ, and one
# message reaches all three, so a fix names every spelling.
PATH_HINT = "--data-path (train), --path (data inspect) or path= (Python)"
LABELS_HINT = "labels=FILE (Python) or --labels FILE (train, data inspect)"
MODALITIES_HINT = ("--modality NAME=FILE (data inspect) or modalities={'NAME': 'FILE'} (Python); "
                   "train finds features by these file names only")


class DataWarning(UserWarning):
    """A recoverable data problem (duplicates dropped, users without training items, ...)."""


def warn(message: str) -> None:
    # One channel only: the caller decides how warnings show (CLIs print "warning: ..."); logging
    # the message as well printed it twice wherever no log handler was set up.
    warnings.warn(message, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def require_file(path: Path, what: str, fix: str) -> Path:
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


def _is_decimal(v: str) -> bool:
    # str.isdigit alone accepts any Unicode digit (full-width "１", "²") and int() also "1_0", "+1"
    return v.isascii() and v.isdigit()


def parse_ids(values: list[str], *, path, column: str, line_numbers: list[int]) -> np.ndarray:
    """Parse a column of ids, naming the first bad row on failure.

    An id is a 0-based index written with the ASCII digits 0-9 only (blanks around it ignored,
    leading zeros allowed). Anything else is refused, not read as a number: ``1_0``, ``+1``,
    ``1e3``, ``1.0``, full-width ``１``, a negative id, one beyond the 64-bit range.
    """
    stripped = [v.strip() for v in values]
    joined = "".join(stripped)
    if not (_is_decimal(joined) and all(stripped)):
        k = next(k for k, v in enumerate(stripped) if not _is_decimal(v))
        v, no = stripped[k], line_numbers[k]
        if v.startswith("-") and _is_decimal(v[1:]):
            raise DataError(f"{path} line {no}: {column} {v} is negative; ids must be 0-based "
                            f"non-negative integers")
        raise DataError(
            f"{path} line {no}: {column} {v!r} is not an integer; ids must be 0-based integer "
            f"indices written with the digits 0-9 only (not '1_0', '+1', '1e3', '1.0' or "
            f"non-ASCII digits such as '１'); map raw ids such as ASINs to 0..n-1 first, e.g. "
            f"with sgfd_fast.data.load_interactions")
    try:
        return np.array(stripped, dtype=np.int64)
    except OverflowError:
        k = next(k for k, v in enumerate(stripped) if int(v) > np.iinfo(np.int64).max)
        raise DataError(f"{path} line {line_numbers[k]}: {column} {stripped[k]} is beyond the "
                        f"64-bit integer range; ids must be 0-based indices 0..n-1 (map raw "
                        f"ids to them first, e.g. with sgfd_fast.data.load_interactions)") from None


def read_interactions(path, *, sep: str | None = None, what: str = "interaction"):
    """Read an interaction CSV/TSV with columns ``userID`` and ``itemID`` (any order).

    Returns ``(pairs (n, 2) int64 [user, item], extras, lines)`` where ``extras`` maps the optional
    columns ``reviewerID`` / ``asin`` to lists of strings (for original-id lookup) and ``lines``
    holds each row's line number in the file.
    """
    path = require_file(Path(path), what, "check the dataset directory")
    columns, rows, numbers = read_table(path, sep=sep, required=("userID", "itemID"), what=what)
    ui, ii = columns.index("userID"), columns.index("itemID")
    users = parse_ids([r[ui] for r in rows], path=path, column="userID", line_numbers=numbers)
    items = parse_ids([r[ii] for r in rows], path=path, column="itemID", line_numbers=numbers)
    extras = {}
    for name in ("reviewerID", "asin"):
        if name in columns:
            j = columns.index(name)
            extras[name] = [r[j].strip() for r in rows]
    return np.stack([users, items], axis=1), extras, numbers



def user_ids_fit(n_users: int, rows: int, source, column: str) -> bool:
    """Whether a table of original user ids (one per userID 0..n_users-1, read from ``column``)
    is sized by the data: at most one entry per interaction row (``rows``). A user id far beyond
    the rows (2*10**8 among 40 users) would size it by that value instead: the original ids are
    then not kept, with a DataWarning. (Item tables need no check: the feature files hold
    n_items rows already.)"""
    if n_users <= rows:
        return True
    warn(f"{source}: the user ids run to {n_users - 1:,} while the interactions have {rows:,} "
         f"rows, so the original user ids ({column}) are not kept (that would take a table of "
         f"{n_users:,} entries); ids are row indices: renumber the users 0..n-1, e.g. with "
         f"sgfd_fast.data.load_interactions")
    return False


# --------------------------------------------------------------------------------------------
# features and labels
# --------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """What a file that numpy refused as .npy looks like, for the error message."""
    with open(path, "rb") as fh:
        head = fh.read(256)
    if not head:
        return "it is empty"
    if head[:1] == b"\x80":
        return "it is a Python pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it has no .npy header"
    first = text.splitlines()[0] if text.splitlines() else text
    return f"it is a text file (first line {first[:40]!r})"


def load_npy(path: Path, what: str) -> np.ndarray:
    path = require_file(path, what, "check the file name or pass the right path")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DataError(
                f"{path}: the {what} file holds a pickled object array, which is not loaded (it "
                f"could run code); if you trust it, re-save it as numbers: np.save(path, "
                f"np.load(path, allow_pickle=True).astype(np.float32))") from None
        if "pickled" in str(exc):  # numpy's words for "no .npy header" (it falls back to pickle)
            kind = _sniff(path)
            hint = (" (a labels table itemID<TAB>label is read from a .tsv, .csv or .txt file)"
                    if what == "labels" and kind.startswith("it is a text") else "")
            raise DataError(f"{path}: not a .npy file: {kind}; save the {what} with "
                            f"numpy.save(path, array) from a numeric array{hint}") from None
        raise DataError(f"{path}: cannot read the {what} file as a numeric .npy array ({exc}); "
                        f"save it with numpy.save(path, array) from a numeric array") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npy file ({exc}); save it with numpy.save") from None


class ItemRefs:
    """The interaction rows that reference item ids (file, line, itemID), so that a feature or
    label file too short for them can name the row that needs the missing item."""

    def __init__(self):
        self._parts = []

    def add(self, path, items: np.ndarray, lines: list[int]) -> None:
        self._parts.append((str(path), np.asarray(items), list(lines)))

    def first_beyond(self, count: int) -> str:
        """``"<file> line <n> has itemID <i>"`` for the first row with itemID >= count."""
        for path, items, lines in self._parts:
            hit = np.flatnonzero(items >= count)
            if hit.size:
                k = int(hit[0])
                return f"{path} line {lines[k]} has itemID {int(items[k])}"
        return "no interaction row"


def _feature_matrix(arr, source: str, modality: str) -> np.ndarray:
    """Check a feature matrix's shape and dtype (2-D, numeric, width >= 1); any row count."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DataError(f"{source}: features of modality {modality!r} must be a 2-D array "
                        f"(n_items, d), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{source}: features of modality {modality!r} have dtype {arr.dtype}; "
                        f"expected a float array")
    if arr.shape[1] == 0:
        raise DataError(f"{source}: features of modality {modality!r} have width 0")
    return arr


def _warn_extra(source: str, what: str, n_rows: int, n_items: int) -> None:
    warn(f"{source}: {n_rows} {what} for {n_items} items (itemID 0..{n_items - 1}); the last "
         f"{n_rows - n_items}, for item ids no interaction references, are dropped")


def check_features(arr, n_items: int, *, source: str, modality: str,
                   refs: ItemRefs | None = None) -> np.ndarray:
    """Validate a feature matrix: 2-D numeric, >= n_items rows, finite. Extra rows (items no
    interaction references) are dropped with a DataWarning. Returns float32 (n_items, d).
    ``refs`` lets a too-short matrix name the first interaction row beyond it."""
    arr = _feature_matrix(arr, source, modality)
    if arr.shape[0] < n_items:
        where = f" ({refs.first_beyond(arr.shape[0])})" if refs is not None else ""
        raise DataError(
            f"{source}: features of modality {modality!r} have {arr.shape[0]} rows but the "
            f"interactions reference {n_items} items{where}; row i must hold the features of "
            f"itemID i, so provide at least {n_items} rows or fix that itemID")
    if arr.shape[0] > n_items:
        _warn_extra(source, f"feature rows of modality {modality!r}", arr.shape[0], n_items)
        arr = arr[:n_items]
    stored = arr
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: reported below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        r = int(bad_rows[0])
        c = int(np.flatnonzero(~finite[r])[0])
        if np.isfinite(stored[r, c]):  # a float64 (or integer) value float32 cannot hold
            raise DataError(
                f"{source}: features of modality {modality!r} hold values beyond float32's range "
                f"(±3.4e38), which the models compute in ({bad_rows.size} rows affected; first "
                f"at row {r} = itemID {r}, column {c}: {stored[r, c].item()!r}); rescale them")
        raise DataError(
            f"{source}: features of modality {modality!r} contain NaN or Inf ({bad_rows.size} "
            f"rows affected; first at row {r} = itemID {r}, column {c}: {arr[r, c]}); replace "
            f"them (e.g. with zeros) before loading")
    return arr


def load_features(path, modality: str) -> np.ndarray:
    """A feature ``.npy`` as stored (shape and dtype checked; the row count is not)."""
    path = Path(path)
    return _feature_matrix(load_npy(path, f"{modality} feature"), str(path), modality)


def read_features(path, n_items: int, modality: str, refs: ItemRefs | None = None) -> np.ndarray:
    """A feature ``.npy`` checked against ``n_items`` (see :func:`check_features`)."""
    path = Path(path)
    return check_features(load_features(path, modality), n_items, source=str(path),
                          modality=modality, refs=refs)


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


#: Labels are category ids in ``[-LABEL_LIMIT, LABEL_LIMIT]`` (int64 without its minimum, which
#: :data:`NO_LABEL` takes); a larger value (10**30, 2**63 + 5) is refused, never wrapped.
LABEL_LIMIT = np.iinfo(np.int64).max

#: Marks an item a labels table gives no label (never a valid label: it is beyond LABEL_LIMIT).
NO_LABEL = np.iinfo(np.int64).min

_LABEL_RANGE = ("outside the 64-bit integer range ±(2^63 - 1); labels are category ids: "
                "renumber them, e.g. to 0..K-1")


def _integral(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype == np.bool_:  # True/False is a flag, not a category id
        raise DataError(f"{source}: labels must be integer category ids, got booleans (dtype "
                        f"bool); store one integer category id per item, e.g. "
                        f"labels.astype(np.int64) if True/False are the two categories")
    if np.issubdtype(arr.dtype, np.integer):
        big = np.flatnonzero((arr > LABEL_LIMIT) | (arr < -LABEL_LIMIT))  # uint64 would wrap
        if big.size:
            i = int(big[0])
            raise DataError(f"{source}: item {i} has label {arr[i].item()}, {_LABEL_RANGE}")
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{source}: labels must be integers; item {i} has label {arr[i].item()!r} "
                            f"({bad.size} non-integer values); store one integer category id "
                            f"per item")
        big = np.flatnonzero(np.abs(arr) >= 2.0 ** 63)  # astype(int64) would wrap
        if big.size:
            i = int(big[0])
            raise DataError(f"{source}: item {i} has label {arr[i].item()!r}, {_LABEL_RANGE}")
        return arr.astype(np.int64)
    raise DataError(f"{source}: labels must be integers, got dtype {arr.dtype}; store one integer "
                    f"category id per item")


def load_labels(path, n_items: int) -> tuple[np.ndarray, bool]:
    """Per-item labels as stored: a ``.npy`` (1-D ints, row = itemID) or a TSV ``itemID<TAB>label``
    (header optional). Returns ``(int64 labels, is_table)``. A table's array runs to its largest
    itemID below ``n_items`` (the dataset's item count: never sized by an id's value), with
    :data:`NO_LABEL` where an item has no row; its rows for itemIDs >= ``n_items`` are dropped
    with a DataWarning naming the first."""
    path = Path(path)
    require_file(path, "labels", f"give {LABELS_HINT}: a .npy of ints or a TSV itemID<TAB>label")
    if path.suffix.lower() == ".npy":  # .NPY as well
        arr = load_npy(path, "labels")
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(f"{path}: labels must be a 1-D array with one integer per item, got "
                            f"shape {arr.shape}")
        return _integral(arr, str(path)), False
    _, rows, numbers = read_table(path, header=False, what="labels")
    if len(rows[0]) < 2:
        raise DataError(f"{path} line {numbers[0]}: expected two columns itemID<TAB>label")
    if not any(c.isdigit() for c in rows[0][0]):  # a header line ("1_0" or "１" is a bad row)
        rows, numbers = rows[1:], numbers[1:]
        if not rows:
            raise DataError(f"{path}: has a header but no data rows")
    items = parse_ids([r[0] for r in rows], path=path, column="itemID", line_numbers=numbers)
    vals = []
    for r, no in zip(rows, numbers):
        v = r[1].strip()
        if not _is_decimal(v[1:] if v.startswith("-") else v):
            raise DataError(f"{path} line {no}: label {v!r} of itemID {r[0].strip()} is not an "
                            f"integer; labels must be integer category ids written with the "
                            f"digits 0-9 (and a leading '-')")
        if abs(int(v)) > LABEL_LIMIT:
            raise DataError(f"{path} line {no}: label {v} of itemID {r[0].strip()} is "
                            f"{_LABEL_RANGE}")
        vals.append(int(v))
    labels = np.full(min(int(items.max()) + 1, n_items), NO_LABEL, dtype=np.int64)
    beyond = {}  # itemID >= n_items: {itemID: label}, sized by the rows
    for it, v, no in zip(items.tolist(), vals, numbers):
        known = int(labels[it]) if it < n_items else beyond.get(it, NO_LABEL)
        if known != NO_LABEL and known != v:
            raise DataError(f"{path} line {no}: itemID {it} is labelled twice with different "
                            f"labels ({known} and {v}); keep one label per item")
        if it < n_items:
            labels[it] = v
        else:
            beyond[it] = v
    if beyond:
        k = int(np.flatnonzero(items >= n_items)[0])
        warn(f"{path}: labels of {len(beyond)} itemID(s) beyond the {n_items} items (itemID "
             f"0..{n_items - 1}; first at line {numbers[k]}: itemID {int(items[k])}) are dropped: "
             f"no interaction references them")
    return labels, True


def check_labels(labels: np.ndarray, n_items: int, *, source: str, table: bool = False,
                 refs: ItemRefs | None = None) -> np.ndarray:
    """Fit raw labels (from :func:`load_labels`) to ``n_items``: too few is a DataError (naming
    the first interaction row beyond them when ``refs`` is given); labels of items no interaction
    references are dropped, and negative labels kept as classes of their own, each with a
    DataWarning. Returns int64 (n_items,), values not yet remapped."""
    n = labels.shape[0]
    where = f" ({refs.first_beyond(n)})" if refs is not None and n < n_items else ""
    if table:
        seen = labels[:n_items] != NO_LABEL
        if n < n_items or not seen.all():
            miss = np.concatenate([np.flatnonzero(~seen), np.arange(n, n_items)])
            raise DataError(f"{source}: labels have the wrong length: {miss.size} of {n_items} "
                            f"items have no label (first missing itemID {int(miss[0])}){where}; "
                            f"give every item a label")
    elif n < n_items:
        raise DataError(f"{source}: labels have length {n} but the dataset has {n_items} "
                        f"items{where}; provide exactly one label per itemID 0..{n_items - 1}")
    if n > n_items:
        _warn_extra(source, "labels", n, n_items)
        labels = labels[:n_items]
    negative = labels < 0
    if negative.any():
        values, counts = np.unique(labels[negative], return_counts=True)
        listed = ", ".join(f"{int(v)} on {int(c)} item(s)" for v, c in zip(values, counts))
        warn(f"{source}: negative labels ({listed}; first itemID "
             f"{int(np.flatnonzero(negative)[0])}) are each kept as a class of their own; if a "
             f"negative value marks 'unknown', give those items a real category, or a category "
             f"id of its own on purpose")
    return np.ascontiguousarray(labels, dtype=np.int64)


def read_labels(path, n_items: int, refs: ItemRefs | None = None) -> np.ndarray:
    """Per-item labels of length ``n_items`` from a ``.npy`` or TSV (see :func:`load_labels`,
    :func:`check_labels`); raw values, not yet remapped."""
    labels, table = load_labels(path, n_items)
    return check_labels(labels, n_items, source=str(path), table=table, refs=refs)


def require_dir(path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: dataset directory not found; check {PATH_HINT}")
    if not path.is_dir():
        raise DataError(f"{path}: expected a dataset directory, found a file")
    return path


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


_MODALITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MODALITY_RULE = "letters, digits, '_' and '-' (starting with a letter or digit)"


def _check_unique(named, source: str) -> None:
    """``named``: ``(modality name, what names it)`` pairs. Names that differ only in case are one
    DataError: configs and exported files would not tell them apart (one was dropped before)."""
    seen = {}
    for name, what in named:
        other = seen.setdefault(name.lower(), (name, what))
        if other[1] != what:
            why = ("the .npy suffix is read in any case" if other[0] == name else
                   f"modality names ignore case: {other[0]!r}, {name!r}")
            raise DataError(f"{source}: {other[1]} and {what} both name modality {name.lower()!r} "
                            f"({why}); keep one, or give them distinct names: {MODALITIES_HINT}")


def discovered_modalities(root: Path, found) -> dict:
    """``{name: path}`` of the feature files a directory listing matched (``found``: ``(name,
    file name)`` pairs, in order). A name other than :data:`MODALITY_RULE` allows (a stray copy
    such as ``image copy_feat.npy``) is ignored with a DataWarning; two names that differ only
    in case (``FeatureImage_normal.npy`` and ``Featureimage_normal.npy``) are a DataError."""
    kept = []
    for name, file in found:
        if _MODALITY_NAME.fullmatch(name):
            kept.append((name, file))
        else:
            warn(f"{root / file}: ignored: its modality name {name!r} is not {MODALITY_RULE} "
                 f"(a stray copy?); rename the file to use it")
    _check_unique(kept, str(root))
    return {name: root / file for name, file in kept}


def explicit_modalities(root: Path, modalities) -> dict:
    """``{name: path}`` of ``modalities={name: file}``, files relative to ``root``; names follow
    :data:`MODALITY_RULE` and may not differ only in case."""
    files = {}
    for name, file in modalities.items():
        if not _MODALITY_NAME.fullmatch(str(name)):
            raise DataError(f"modality name {str(name)!r} ({file}): a name is {MODALITY_RULE}; "
                            f"it names the model's parameters and exported files")
        p = Path(file).expanduser()
        files[str(name)] = p if p.is_absolute() else root / p
    _check_unique([(name, repr(name)) for name in files], str(root))
    return files


def fit_to_items(feature_files: dict, labels_file: Path, n_items: int, refs: ItemRefs):
    """Load every feature file (``{modality: path}``) and the labels, and fit them to the
    ``n_items`` the interactions reference. When all of them stop at the same item count below
    ``n_items``, the interaction row beyond them is at fault and the error names it; otherwise
    the short file is named (with that row). Returns ``(features, raw labels)``."""
    raw = {m: load_features(p, m) for m, p in feature_files.items()}
    labels, table = load_labels(labels_file, n_items)
    counts = {Path(p).name: raw[m].shape[0] for m, p in feature_files.items()}
    counts[Path(labels_file).name] = labels.shape[0]
    low = min(counts.values())
    if low < n_items and len(set(counts.values())) == 1:
        raise DataError(f"{refs.first_beyond(low)}, beyond the {low} items that every feature "
                        f"and label file describes ({', '.join(counts)}: itemID 0..{low - 1}); "
                        f"fix the itemID in that row, or add the missing items to every file")
    feats = {m: check_features(raw[m], n_items, source=str(p), modality=m, refs=refs)
             for m, p in feature_files.items()}
    return feats, check_labels(labels, n_items, source=str(labels_file), table=table, refs=refs)


def resolve_labels(root, labels, start=None) -> Path:
    """The labels file ``labels`` names, for a dataset in directory ``root``: ``~`` expanded; a
    relative path in ``start`` (default: the current directory) when it exists there, else in
    ``root`` (``--labels labels.tsv`` finds ``DIR/labels.tsv``). The one rule of
    ``load_dataset``, ``data inspect``, ``train`` (which records the result in run.json) and
    study specs (``start``: the spec's directory)."""
    p = Path(labels).expanduser()
    if p.is_absolute():
        return p
    first = Path(start) / p if start is not None else p
    return Path(root) / p if not first.exists() and (Path(root) / p).exists() else first
