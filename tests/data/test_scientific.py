"""The built-in ``scientific`` dataset: the shipped package data (never skipped) and its rebuild
from the public source files (skipped, with the reason, where those files are not at hand)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sgfd_fast.data import DATASETS, load_dataset
from sgfd_fast.data import prepare_scientific as ps
from sgfd_fast.data.__main__ import main
from sgfd_fast.data.builtin import SCIENTIFIC_ITEMS, SCIENTIFIC_NPZ
from sgfd_fast.errors import DataError
from test_prepare import mmrec_counts

N_USERS, N_ITEMS, N_EVENTS, N_PAIRS = 8442, 4385, 59427, 59136


@pytest.fixture(scope="module")
def shipped():
    z = np.load(SCIENTIFIC_NPZ, allow_pickle=False)
    return {k: z[k] for k in z.files}, ps.read_items(SCIENTIFIC_ITEMS)


@pytest.fixture(scope="module")
def ds():
    return load_dataset("scientific")


# ------------------------------------------------------------------------------------------------
# the shipped package data
# ------------------------------------------------------------------------------------------------


def test_counts_and_labels(ds):
    s = ds.stats()
    assert "scientific" in DATASETS
    assert (s["n_users"], s["n_items"]) == (N_USERS, N_ITEMS)
    assert s["n_train"] + s["n_valid"] + s["n_test"] == N_PAIRS
    assert s["valid_source"] == "file" and s["n_train_total"] == s["n_train"]
    assert s["modalities"] == {"text": 384} and s["synthetic"] == []
    assert s["n_labels"] == 26 and list(ds.meta["label_values"]) == list(range(26))
    assert ds.meta["label_names"] == ["unknown", *ps.DEPARTMENTS] and len(ps.DEPARTMENTS) == 25
    counts = np.bincount(ds.labels, minlength=26)
    assert counts[0] == 134 and counts[1:].sum() == 4251 and (counts > 0).all()
    small = {ds.meta["label_names"][k]: int(counts[k]) for k in np.flatnonzero(counts <= 3)}
    assert small == {"Commercial Door Products": 3, "Retail Store Fixtures & Equipment": 3,
                     "Robotics": 2}
    x = ds.features["text"]
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=2e-3)
    assert ds.item_ids[0] == "B00TNNWMXI" and len(set(ds.item_ids.tolist())) == N_ITEMS
    assert len(set(ds.user_ids.tolist())) == N_USERS


def test_events_and_chronological_split(shipped, ds):
    z, _ = shipped
    events = z["events"].astype(np.int64)
    assert z["text"].dtype == np.float16 and z["text"].shape == (N_ITEMS, 384)
    assert events.shape == (N_EVENTS, 2)
    users = events[:, 0]
    assert np.all(np.diff(users) >= 0)  # per user, in sequence order
    assert np.unique(users).size == N_USERS
    assert np.unique(events[:, 1]).size == N_ITEMS
    rebuilt = {"train": [], "valid": [], "test": []}
    n_distinct = []
    bounds = np.flatnonzero(np.diff(users)) + 1
    for u, seq in enumerate(np.split(events[:, 1], bounds)):
        seq = seq.tolist()
        distinct = list(dict.fromkeys(seq))  # first occurrences, in time order
        n_distinct.append(len(distinct))
        tr, va, te = mmrec_counts(len(distinct))
        rebuilt["train"] += [[u, i] for i in distinct[:tr]]
        rebuilt["valid"] += [[u, i] for i in distinct[tr:tr + va]]
        rebuilt["test"] += [[u, i] for i in distinct[tr + va:]]
    for split, rows in rebuilt.items():
        assert np.array_equal(getattr(ds, split), np.asarray(rows)), split
    assert sum(n_distinct) == N_PAIRS and N_EVENTS - N_PAIRS == 291  # re-purchases
    assert sum(n < 5 for n in n_distinct) == 75
    assert np.unique(ds.train[:, 0]).size == N_USERS  # every user is in train
    pairs = np.concatenate([ds.train, ds.valid, ds.test])
    assert np.bincount(pairs[:, 1], minlength=N_ITEMS).min() == 3  # min item degree


def test_item_table(shipped, ds):
    _, items = shipped
    assert items["asin"] == ds.item_ids.tolist()
    assert np.array_equal(items["label"], ds.labels)
    for k in range(N_ITEMS):
        path_ = items["category_path"][k]
        assert ps.department(path_) == items["label"][k]
        assert items["category"][k] == ps.LABEL_NAMES[items["label"][k]]
        text = ps.embedded_text(items["title"][k], items["brand"][k])
        assert text and (not path_ or path_ not in text)
    assert sum(1 for p in items["category_path"] if not p) == 134
    assert sum(1 for t in items["title"] if not t) == 24  # the source's broken titles


def test_text_features_are_title_and_brand_only(shipped):
    """Re-encode a few items with the real encoder: the shipped rows are the title + brand
    embeddings (up to float16), not those of the text with the category path."""
    from sgfd_fast.data.encoders import embed_texts

    z, items = shipped
    picks = [0, 1, 2]
    picks += [next(k for k, t in enumerate(items["title"]) if not t)]  # brand only
    picks += [next(k for k, b in enumerate(items["brand"]) if not b)]  # title only
    picks += [next(k for k, p in enumerate(items["category_path"]) if not p)]
    tb = [ps.embedded_text(items["title"][k], items["brand"][k]) for k in picks]
    full = [f"{items['title'][k]}. {items['category_path'][k]}. {items['brand'][k]}. "
            for k in picks if items["category_path"][k]]
    got = embed_texts(tb + full, progress=False)
    stored = z["text"][picks].astype(np.float32)
    assert np.abs(got[:len(picks)] - stored).max() < 3e-3
    with_path = [k for k, p in enumerate(picks) if items["category_path"][p]]
    assert np.abs(got[len(picks):] - stored[with_path]).max(axis=1).min() > 0.02


def test_inspect_prints_the_counts(capsys):
    assert main(["inspect", "--dataset", "scientific"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["n_users"], s["n_items"], s["n_labels"]) == (N_USERS, N_ITEMS, 26)
    assert s["n_train"] + s["n_valid"] + s["n_test"] == N_PAIRS


# ------------------------------------------------------------------------------------------------
# the rebuild from the source files
# ------------------------------------------------------------------------------------------------


def _source() -> Path:
    env = os.environ.get("SGFD_FAST_SCIENTIFIC_SOURCE")
    if not env or not all((Path(env) / f).is_file() for f in ps.SCIENTIFIC_FILES):
        pytest.skip(f"the rebuild checks need the six public Scientific files "
                    f"({', '.join(ps.SCIENTIFIC_FILES)}) in SGFD_FAST_SCIENTIFIC_SOURCE=DIR "
                    f"(now: {env!r})")
    return Path(env)


@pytest.fixture(scope="module")
def source():
    return _source()


@pytest.fixture(scope="module")
def rebuilt(source):
    return ps.read_scientific(source)


def _raw_rows(path):
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        u, hist, target = line.split("\t")
        rows.append((int(u), [int(i) for i in hist.split()], int(target)))
    return rows


def test_rebuild_equals_the_shipped_data(rebuilt, shipped, ds):
    z, items = shipped
    assert np.array_equal(rebuilt["events"], z["events"])
    for split in ("train", "valid", "test"):
        assert np.array_equal(rebuilt[split], getattr(ds, split)), split
    assert rebuilt["user_ids"].tolist() == z["user_ids"].tolist()
    for c in ps.ITEM_COLUMNS:
        assert list(rebuilt["items"][c]) == list(items[c]), c


def test_source_facts(source, rebuilt):
    """The source's published facts, measured here on the raw files."""
    events = rebuilt["events"]
    seqs = [s.tolist() for s in np.split(events[:, 1], np.flatnonzero(np.diff(events[:, 0])) + 1)]
    # every valid history is the last 50 of the train sequence, every test history that plus
    # the valid target; each valid/test target closes the sequence
    for split, offset in (("valid", 2), ("test", 1)):
        rows = _raw_rows(source / f"Scientific.{split}.inter")
        assert len(rows) == N_USERS
        for u, hist, target in rows:
            seq = seqs[u]
            assert seq[-offset] == target and hist == seq[:-offset][-50:]
    # one row per training target: all events but the first item, valid and test of each user
    assert len(_raw_rows(source / "Scientific.train.inter")) == N_EVENTS - 3 * N_USERS
    assert events.shape[0] == N_EVENTS
    assert len({(u, i) for u, i in events.tolist()}) == N_PAIRS
    labels = np.asarray(rebuilt["items"]["label"])
    assert (labels > 0).sum() == 4251 and (labels == 0).sum() == 134
    text = (source / "Scientific.text").read_text(encoding="utf-8")
    assert text.count(f"{ps.STORE} />") == 24
    assert sum(1 for line in text.splitlines()[1:] if ". . " in line and ps.STORE not in line) \
        == 134


def test_a_broken_sequence_is_refused(source, tmp_path):
    src = tmp_path / "raw"
    shutil.copytree(source, src)
    lines = (src / "Scientific.valid.inter").read_text(encoding="utf-8").splitlines()
    u, hist, target = lines[1].split("\t")
    lines[1] = "\t".join([u, " ".join(reversed(hist.split())), target])
    (src / "Scientific.valid.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"user 0's row at line 2 does not fit the rebuilt"):
        ps.read_scientific(src)


def test_prepare_scientific_errors(tmp_path, capsys):
    assert main(["prepare-scientific", "--source", str(tmp_path / "none")]) == 2
    assert "Scientific source directory not found" in capsys.readouterr().err
    (tmp_path / "Scientific.text").write_text("item_id:token\ttext:token_seq\n")
    with pytest.raises(DataError, match=r"missing Scientific.train.inter, .*github.com/ysh-1998/"
                                        r"CoWPiRec"):
        ps.read_scientific(tmp_path)
