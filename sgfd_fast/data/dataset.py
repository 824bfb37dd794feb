"""The in-memory dataset every other part of sgfd_fast consumes, ``load_dataset`` and ``load_data``
(the dataset a run records)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .builtin import builtin_parts
from .formats.common import read_table, remap_labels, select_modalities, warn
from .registry import DATASETS, DEFAULT_FORMAT, FORMATS
from .splits import carve_valid, random_split

__all__ = ["Dataset", "load_dataset", "load_data", "load_interactions", "assemble"]


def _pairs(arr, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"Dataset.{name} must have shape (n, 2) [user, item], got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


@dataclass
class Dataset:
    """One recommendation dataset, ids 0-based and contiguous.

    ``train``/``valid``/``test`` are ``(n, 2)`` int64 rows ``[user, item]``; ``features`` maps a
    modality name to an ``(n_items, d)`` float32 matrix (row = item; after
    :meth:`hand_over_features`, the copy a model holds in its place); ``labels`` holds one category
    in ``[0, n_labels)`` per item. ``synthetic`` names the parts that are generated (``()`` when all
    are real). ``meta`` carries load details (``n_train_total`` before validation carving,
    ``valid_source``, dropped-row counts, label value map).
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: dict
    labels: np.ndarray
    n_labels: int
    synthetic: tuple = ()
    description: str = ""
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.n_users = int(self.n_users)
        self.n_items = int(self.n_items)
        self.n_labels = int(self.n_labels)
        self.synthetic = tuple(self.synthetic)
        for split in ("train", "valid", "test"):
            arr = _pairs(getattr(self, split), split)
            if arr.shape[0]:
                if arr[:, 0].min() < 0 or arr[:, 0].max() >= self.n_users:
                    raise DataError(f"Dataset {self.name!r}: {split} has a user id outside "
                                    f"0..{self.n_users - 1}")
                if arr[:, 1].min() < 0 or arr[:, 1].max() >= self.n_items:
                    raise DataError(f"Dataset {self.name!r}: {split} has an item id outside "
                                    f"0..{self.n_items - 1}")
            setattr(self, split, arr)
        feats = {}
        for m, arr in dict(self.features).items():
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape[0] != self.n_items:
                raise DataError(f"Dataset {self.name!r}: features {m!r} must have shape "
                                f"({self.n_items}, d), got {arr.shape}")
            feats[m] = np.ascontiguousarray(arr, dtype=np.float32)
        self.features = feats
        labels = np.ascontiguousarray(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != self.n_items:
            raise DataError(f"Dataset {self.name!r}: labels have length {labels.shape[0]}, "
                            f"expected {self.n_items}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_labels):
            raise DataError(f"Dataset {self.name!r}: labels must lie in [0, {self.n_labels})")
        self.labels = labels

    def hand_over_features(self, held: dict) -> None:
        """Let a model's copies stand for the feature matrices from now on, dropping the float32
        arrays so that they no longer take memory beside them (``precision: bf16``: the model
        holds its own bfloat16 copy; ``training.train`` hands over once the last model it builds
        from this Dataset exists).

        Args:
            held: ``{modality: tensor}``, what a model built from this Dataset holds in place of
                that modality's matrix, of its shape (any dtype and device; modalities not named
                keep their arrays).

        After it, ``features`` holds those tensors (names and shapes as before, which is what
        ``stats``, the checkpoints' data shape and the budget read), and building another model
        that consumes item features from this Dataset is a DataError: its constants (kNN graphs,
        MAML's initial item embeddings) come from the float32 values.

        Raises:
            DataError: a modality this Dataset lacks, or a tensor of another shape.
        """
        for m, t in held.items():
            if m not in self.features or tuple(t.shape) != tuple(self.features[m].shape):
                have = tuple(self.features[m].shape) if m in self.features else "no such modality"
                raise DataError(f"Dataset {self.name!r}: cannot hand features {m!r} over to a "
                                f"tensor of shape {tuple(t.shape)} ({have} here)")
        self.features = {**self.features, **held}

    # ------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        n_train, n_valid, n_test = (int(a.shape[0]) for a in (self.train, self.valid, self.test))
        total = n_train + n_valid + n_test
        in_train = np.bincount(self.train[:, 1], minlength=self.n_items) > 0
        seen_tv = in_train.copy()
        if n_valid:
            seen_tv |= np.bincount(self.valid[:, 1], minlength=self.n_items) > 0
        in_test = np.bincount(self.test[:, 1], minlength=self.n_items) > 0 if n_test else \
            np.zeros(self.n_items, dtype=bool)
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": n_train,
            "n_valid": n_valid,
            "n_test": n_test,
            "n_train_total": int(self.meta.get("n_train_total", n_train)),
            "valid_source": self.meta.get("valid_source", "file" if n_valid else "none"),
            "modalities": {m: int(a.shape[1]) for m, a in self.features.items()},
            "n_labels": self.n_labels,
            "sparsity": (1.0 - total / (self.n_users * self.n_items))
            if self.n_users and self.n_items else 1.0,
            "n_cold_items": int((~in_train).sum()),
            "n_test_only_items": int((in_test & ~seen_tv).sum()),
            "synthetic": list(self.synthetic),
            "description": self.description,
        }

    def __repr__(self) -> str:  # keep the repr short: the arrays are large
        s = self.stats()
        return (f"Dataset(name={self.name!r}, n_users={s['n_users']}, n_items={s['n_items']}, "
                f"n_train={s['n_train']}, n_valid={s['n_valid']}, n_test={s['n_test']}, "
                f"modalities={s['modalities']}, n_labels={s['n_labels']}, "
                f"synthetic={self.synthetic})")


# ----------------------------------------------------------------------------------------------
# assembly: dedupe, drop users without training items, carve validation, remap labels
# ----------------------------------------------------------------------------------------------


def _dedupe(splits: dict, n_items: int, source: str) -> dict:
    """Drop repeated (user, item) pairs: within a split keep the first, across splits keep the
    earliest split in the order train, valid, test (a test pair already in train can never be
    ranked, since training items are masked)."""
    seen = np.zeros(0, dtype=np.int64)
    within = {}
    across = {}
    out = {}
    rows = [splits[k] for k in ("train", "valid", "test") if splits.get(k) is not None]
    # one int64 key per distinct (user, item), from the pairs themselves: a user id times
    # n_items could overflow int64
    _, keys = np.unique(np.concatenate(rows), axis=0, return_inverse=True)
    keys = keys.reshape(-1).astype(np.int64)
    offset = 0
    for name in ("train", "valid", "test"):
        arr = splits.get(name)
        if arr is None:
            continue
        key = keys[offset:offset + arr.shape[0]]
        offset += arr.shape[0]
        _, first = np.unique(key, return_index=True)
        keep = np.zeros(arr.shape[0], dtype=bool)
        keep[first] = True
        within[name] = int(arr.shape[0] - first.size)
        dup_prev = np.isin(key, seen) & keep
        across[name] = int(dup_prev.sum())
        keep &= ~dup_prev
        out[name] = np.ascontiguousarray(arr[keep])
        seen = np.union1d(seen, key[keep])
    n_within, n_across = sum(within.values()), sum(across.values())
    if n_within or n_across:
        parts = [f"{v} in {k}" for k, v in within.items() if v]
        msg = f"{source}: dropped {n_within + n_across} duplicate interactions"
        if parts:
            msg += f" ({', '.join(parts)} repeated within the split"
            msg += ")" if not n_across else f"; {n_across} already in an earlier split)"
        else:
            msg += f" ({n_across} valid/test pairs already in an earlier split)"
        warn(msg + "; each (user, item) pair is kept once")
    return out, n_within + n_across


_X_LABEL = {"train": 0, "valid": 1, "test": 2}


def _split_file(parts: dict, split: str) -> str:
    """The file a split's rows come from, for error messages."""
    files = parts.get("files") or {}
    if split in files:
        return files[split]
    if "inter" in files:
        return f"{files['inter']} (x_label {_X_LABEL[split]})"
    return f"{parts.get('source', 'dataset')} ({split} split)"


def assemble(parts: dict, *, name: str, valid_ratio: float = 0.1, seed: int = 2023,
             split=None, synthetic=(), description: str = "") -> Dataset:
    """Turn raw parts (from a reader) into a validated Dataset."""
    source = parts.get("source", name)
    n_users, n_items = int(parts["n_users"]), int(parts["n_items"])
    splits = {"train": parts["train"], "valid": parts.get("valid"), "test": parts["test"]}
    if split is not None:
        pooled = np.concatenate([a for a in splits.values() if a is not None], axis=0)
        pooled, n_dup = _dedupe({"train": pooled}, n_items, source)
        tr, va, te = random_split(pooled["train"], n_users, split, seed)
        splits = {"train": tr, "valid": va, "test": te}
        valid_source = f"random split {split} (seed {seed})"
        n_train_total = tr.shape[0]
    else:
        splits, n_dup = _dedupe(splits, n_items, source)
        valid_source = "file" if splits.get("valid") is not None else None
        n_train_total = splits["train"].shape[0]

    # users with no training interaction cannot be scored: drop their valid/test rows (looked
    # up among the training users, never in an array sized by the ids' values)
    train_users = np.unique(splits["train"][:, 0])
    n_dropped = 0
    for s in ("valid", "test"):
        arr = splits.get(s)
        if arr is None or not arr.shape[0]:
            continue
        bad = ~np.isin(arr[:, 0], train_users)
        if bad.all():
            raise DataError(
                f"{_split_file(parts, s)}: none of the {int(np.unique(arr[:, 0]).size)} users of "
                f"the {s} split has a training interaction (first: userID {int(arr[0, 0])}), so "
                f"no {s} row can be scored; the {s} rows must use the same user ids as "
                f"{_split_file(parts, 'train')} (0-based, the same mapping)")
        if bad.any():
            first_user = int(arr[bad][0, 0])
            n_users_bad = int(np.unique(arr[bad][:, 0]).size)
            warn(f"{source}: {n_users_bad} user(s) in {s} have no training interaction (first: "
                 f"userID {first_user}); their {int(bad.sum())} {s} row(s) are dropped from "
                 f"evaluation")
            n_dropped += int(bad.sum())
            splits[s] = np.ascontiguousarray(arr[~bad])

    if splits.get("valid") is None:
        splits["train"], splits["valid"] = carve_valid(splits["train"], n_users, valid_ratio, seed)
        if valid_ratio > 0 and not splits["valid"].shape[0]:
            raise DataError(
                f"{source}: valid_ratio={valid_ratio} carves no validation rows, because no user "
                f"has 2 or more training interactions (each user keeps one); give the dataset a "
                f"validation split, or set valid_ratio=0 and validate on test (protocol=legacy)")
        valid_source = (f"carved from train: valid_ratio={valid_ratio}, seed={seed}"
                        if splits["valid"].shape[0] else "none")

    labels_source = parts.get("labels_source", "labels")
    labels, n_labels, values = remap_labels(np.asarray(parts["raw_labels"]), source=labels_source)
    if n_labels == 1 and n_items > 1:
        warn(f"{labels_source}: all {n_items} items carry one label ({int(values[0])}): SGFD's "
             f"teacher classification loss is then constant (a one-class classifier has nothing "
             f"to learn) and the labels guide no distillation; give the items their categories "
             f"(one integer id per item), or train the plain backbone (sgfd=false)")
    present = [a[:, 0] for a in splits.values() if a is not None]
    meta = {
        "n_users_present": int(np.unique(np.concatenate(present)).size),
        "n_train_total": int(n_train_total),
        "valid_source": valid_source,
        "n_duplicates_dropped": int(n_dup),
        "n_eval_rows_dropped": int(n_dropped),
        "label_values": values,
        "source": source,
    }
    return Dataset(name=name, n_users=n_users, n_items=n_items, train=splits["train"],
                   valid=splits["valid"], test=splits["test"], features=parts["features"],
                   labels=labels, n_labels=n_labels, synthetic=tuple(synthetic),
                   description=description, user_ids=parts.get("user_ids"),
                   item_ids=parts.get("item_ids"), meta=meta)


# ----------------------------------------------------------------------------------------------
# public loaders
# ----------------------------------------------------------------------------------------------


def load_dataset(name: str | None = None, *, path=None, format: str = DEFAULT_FORMAT, labels=None,
                 modalities=None, valid_ratio: float = 0.1, seed: int = 2023,
                 split=None) -> Dataset:
    """Load a built-in dataset by ``name`` or a directory by ``path``.

    * ``load_dataset("office")`` — a built-in dataset, one of ``DATASETS`` (``office``,
      ``scientific``, ``toysgames-synthetic``: :mod:`sgfd_fast.data.registry`).
    * ``load_dataset(path=DIR, format="sgfd", labels=FILE, modalities={...})`` — a directory in
      one of the ``FORMATS`` (``sgfd``, ``mmrec``).

    ``modalities``: a dict ``{name: file.npy}`` (paths relative to DIR) reads exactly those files;
    a list of names keeps only those of the discovered (or built-in) modalities, in that order.

    Validation: the dataset's own split when present, else carved from each user's training
    items (``valid_ratio``, ``seed``; see :mod:`sgfd_fast.data.splits`). ``split="8:1:1"``
    pools every interaction and re-splits it per user at random.
    """
    if (name is None) == (path is None):
        raise DataError("load_dataset needs exactly one of name (a built-in dataset: "
                        f"{', '.join(DATASETS)}) or path= (a dataset directory)")
    if name is not None:
        if name not in DATASETS:
            p = Path(name)
            hint = (f"; to load the directory {name!r} use load_dataset(path={name!r})"
                    if p.exists() else "")
            raise DataError(f"unknown dataset {name!r}; built-in datasets are "
                            f"{', '.join(DATASETS)}{hint}")
        if labels is not None:
            raise DataError(f"labels= applies to datasets loaded with path=; the built-in dataset "
                            f"{name!r} brings its own labels")
        if isinstance(modalities, dict):
            raise DataError(f"modalities={{name: file}} applies to datasets loaded with path=; for "
                            f"{name!r} pass a list of modality names to keep")
        parts = builtin_parts(name)
        synthetic, description, meta = (parts.pop(k) for k in ("synthetic", "description", "meta"))
        ds = assemble(parts, name=name, valid_ratio=valid_ratio, seed=seed, split=split,
                      synthetic=synthetic, description=description)
        ds.meta.update(meta)
        ds.features = select_modalities(ds.features, modalities, name)
        return ds
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise DataError(f"unknown format {format!r}; use "
                        + " or ".join(repr(f) for f in FORMATS))
    parts = FORMATS[fmt].read(path, labels=labels, modalities=modalities)
    root = Path(path).expanduser().resolve()
    desc = f"{fmt.upper()}-format dataset loaded from {root}"
    return assemble(parts, name=root.name, valid_ratio=valid_ratio, seed=seed, split=split,
                    synthetic=(), description=desc)


def load_data(spec: dict, config: dict) -> Dataset:
    """Load the dataset a run records (``run.json``'s ``data``): ``spec`` = ``{"name": ...}`` (a
    built-in dataset) or ``{"path": ..., "format": ..., "labels": ...}`` (a directory; format
    default ``DEFAULT_FORMAT``), split as ``config``'s ``valid_ratio``, ``split_seed``,
    ``modalities`` and ``protocol`` say. Used by training, resume, ``load_run`` and studies.

    Raises:
        ConfigError: the run was trained on a Dataset in memory (``{"in_memory": name}``), which
            only the caller can pass again.
        DataError: the data cannot be loaded (see :func:`load_dataset`).
    """
    if "in_memory" in spec:
        raise ConfigError(f"this run was trained on the in-memory dataset "
                          f"{spec['in_memory']!r}; pass that Dataset as dataset=")
    # legacy protocol validates on test, so like the released code it trains on all of train
    valid_ratio = 0.0 if config.get("protocol") == "legacy" else config["valid_ratio"]
    kw = dict(valid_ratio=valid_ratio, seed=config["split_seed"],
              modalities=config.get("modalities"))
    if spec.get("name"):
        return load_dataset(spec["name"], **kw)
    return load_dataset(path=spec["path"], format=spec.get("format", DEFAULT_FORMAT),
                        labels=spec.get("labels"), **kw)


def load_interactions(path, *, user_col: str = "userID", item_col: str = "itemID",
                      sep: str | None = None):
    """Read a raw interaction file (CSV or TSV, header naming ``user_col`` and ``item_col``; ids
    may be any strings) and map ids to contiguous 0-based indices in order of first appearance.

    Returns ``(pairs (n, 2) int64, user_ids, item_ids)``; ``user_ids[k]`` is the original id of
    internal user k. Split it with ``sgfd_fast.data.splits.random_split(pairs, len(user_ids),
    "8:1:1", seed)``.
    """
    path = Path(path).expanduser()
    columns, rows, numbers = read_table(path, sep=sep, required=(user_col, item_col))
    ui, ii = columns.index(user_col), columns.index(item_col)

    def _remap(col):
        raw = np.asarray([r[col].strip() for r in rows])
        empty = np.flatnonzero(raw == "")
        if empty.size:
            raise DataError(f"{path} line {numbers[int(empty[0])]}: empty {columns[col]}")
        uniq, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return rank[inverse.reshape(-1)].astype(np.int64), uniq[order]

    users, user_ids = _remap(ui)
    items, item_ids = _remap(ii)
    return np.stack([users, items], axis=1), user_ids, item_ids
