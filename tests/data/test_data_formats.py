import warnings

import numpy as np
import pytest

from sgfd_fast.data import DataWarning, load_dataset, write_mmrec, write_sgfd


def _same(a, b, check_valid=True):
    assert (a.n_users, a.n_items, a.n_labels) == (b.n_users, b.n_items, b.n_labels)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    if check_valid:
        assert np.array_equal(a.valid, b.valid)
    assert a.features.keys() == b.features.keys()
    for m in a.features:
        assert np.array_equal(a.features[m], b.features[m])
    assert np.array_equal(a.labels, b.labels)


def test_sgfd_round_trip(tmp_path, tiny):
    write_sgfd(tiny, tmp_path / "d")
    ds = load_dataset(path=tmp_path / "d", format="sgfd")
    _same(tiny, ds)
    assert ds.meta["valid_source"] == "file"
    assert ds.item_ids.tolist() == tiny.item_ids.tolist()
    assert ds.name == "d" and ds.synthetic == ()
    # and again: write what we read
    write_sgfd(ds, tmp_path / "e")
    _same(ds, load_dataset(path=tmp_path / "e"))


def test_mmrec_round_trip(tmp_path, tiny):
    lp = write_mmrec(tiny, tmp_path / "mm")
    ds = load_dataset(path=tmp_path / "mm", format="mmrec", labels=lp)
    _same(tiny, ds)
    assert ds.item_ids.tolist() == tiny.item_ids.tolist()
    # labels also as .npy, relative to the directory
    np.save(tmp_path / "mm" / "lab.npy", tiny.labels)
    ds2 = load_dataset(path=tmp_path / "mm", format="mmrec", labels="lab.npy")
    assert np.array_equal(ds2.labels, tiny.labels)


def test_cross_format(tmp_path, tiny):
    ds = load_dataset(path=write_sgfd(tiny, tmp_path / "s"))
    lp = write_mmrec(ds, tmp_path / "m")
    _same(ds, load_dataset(path=tmp_path / "m", format="mmrec", labels=lp))


def test_valid_carved_when_absent(sgfd_dir, tiny):
    ds = load_dataset(path=sgfd_dir, valid_ratio=0.3, seed=11)
    assert ds.stats()["n_train_total"] == tiny.train.shape[0] + tiny.valid.shape[0]
    assert ds.valid.shape[0] > 0
    assert "carved" in ds.meta["valid_source"]
    again = load_dataset(path=sgfd_dir, valid_ratio=0.3, seed=11)
    assert np.array_equal(ds.valid, again.valid)


def test_cold_items_allowed(sgfd_dir):
    ds = load_dataset(path=sgfd_dir)
    s = ds.stats()
    assert s["n_items"] == 9 and s["n_test_only_items"] >= 1
    assert 8 not in set(ds.train[:, 1].tolist()) and 8 in set(ds.test[:, 1].tolist())


def test_crlf_item_first_and_extra_columns(tmp_path, tiny):
    d = tmp_path / "crlf"
    write_sgfd(tiny, d)
    for f in ("train.csv", "valid.csv", "test.csv"):
        lines = (d / f).read_text().splitlines()
        (d / f).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    assert (d / "train.csv").read_text().startswith("itemID,userID")
    _same(tiny, load_dataset(path=d))


def test_user_first_column_order(tmp_path, tiny):
    d = tmp_path / "uf"
    write_sgfd(tiny, d)
    for f in ("train.csv", "valid.csv", "test.csv"):
        rows = [ln.split(",") for ln in (d / f).read_text().splitlines()]
        (d / f).write_text("\n".join(f"{r[1]},{r[0]}" for r in rows) + "\n")
    ds = load_dataset(path=d)
    _same(tiny, ds)
    assert ds.item_ids is None


def test_extra_feature_rows_truncated_and_other_modalities(tmp_path, tiny):
    d = write_sgfd(tiny, tmp_path / "x")
    np.save(d / "FeatureImage_normal.npy", np.ones((20, 5), np.float64))
    np.save(d / "FeatureAudio_normal.npy", np.zeros((9, 2), np.float32))
    ds = load_dataset(path=d)
    assert ds.features["image"].shape == (9, 5) and ds.features["image"].dtype == np.float32
    assert ds.stats()["modalities"] == {"audio": 2, "image": 5, "text": 3}
    np.save(d / "mine.npy", np.ones((9, 7), np.float32))
    ds = load_dataset(path=d, modalities={"v": "mine.npy", "t": d / "FeatureText_normal.npy"})
    assert ds.stats()["modalities"] == {"v": 7, "t": 3}


def test_label_remapping(tmp_path, tiny):
    d = write_sgfd(tiny, tmp_path / "lab")
    raw = np.array([10, 30, 10, -1, 30, 7, 7, 10, 30])
    np.save(d / "MetaData_normal.npy", raw)
    ds = load_dataset(path=d)
    assert ds.n_labels == 4
    assert ds.labels.tolist() == [2, 3, 2, 0, 3, 1, 1, 2, 3]
    assert ds.meta["label_values"].tolist() == [-1, 7, 10, 30]
    np.save(d / "MetaData_normal.npy", raw.astype(np.float32))  # integral floats are accepted
    assert load_dataset(path=d).labels.tolist() == ds.labels.tolist()
    (d / "labels.tsv").write_text("".join(f"{i}\t{v}\n" for i, v in enumerate(raw)))
    assert load_dataset(path=d, labels=d / "labels.tsv").labels.tolist() == ds.labels.tolist()


def test_duplicates_warn_and_drop(tmp_path, tiny):
    d = write_sgfd(tiny, tmp_path / "dup")
    with open(d / "train.csv", "a") as fh:
        for _ in range(2):
            fh.write(f"{tiny.train[0, 1]},{tiny.train[0, 0]},A{tiny.train[0, 1]:03d}\n")
    with open(d / "test.csv", "a") as fh:  # a test pair that is also a training pair
        fh.write(f"{tiny.train[1, 1]},{tiny.train[1, 0]},A{tiny.train[1, 1]:03d}\n")
    with pytest.warns(DataWarning, match="dropped 3 duplicate interactions") as rec:
        ds = load_dataset(path=d)
    assert "2 in train" in str(rec[0].message)
    _same(tiny, ds)
    assert ds.meta["n_duplicates_dropped"] == 3


def test_user_without_training_items_dropped_from_eval(tmp_path, tiny):
    d = write_sgfd(tiny, tmp_path / "nu")
    with open(d / "test.csv", "a") as fh:
        fh.write("2,7,A002\n3,7,A003\n")
    with pytest.warns(DataWarning, match=r"no training interaction \(first: userID 7\)"):
        ds = load_dataset(path=d)
    assert ds.n_users == 8  # inferred from all splits
    assert 7 not in set(ds.test[:, 0].tolist())
    assert ds.meta["n_eval_rows_dropped"] == 2


def test_clean_load_emits_no_warning(sgfd_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(path=sgfd_dir)


def test_dataset_contract_types(sgfd_dir):
    ds = load_dataset(path=sgfd_dir)
    for a in (ds.train, ds.valid, ds.test):
        assert a.dtype == np.int64 and a.ndim == 2 and a.shape[1] == 2
    s = ds.stats()
    for k in ("n_users", "n_items", "n_train", "n_valid", "n_test", "modalities", "n_labels",
              "sparsity", "n_train_total", "n_cold_items"):
        assert k in s


def test_modality_selection(sgfd_dir):
    from sgfd_fast.errors import DataError

    ds = load_dataset(path=sgfd_dir, modalities=["text"])
    assert list(ds.features) == ["text"]
    with pytest.raises(DataError, match="modality 'audio' not found; available modalities: image, text"):
        load_dataset(path=sgfd_dir, modalities=["audio"])
    ds = load_dataset("office", modalities=["relation"])
    assert list(ds.features) == ["relation"]


def test_tsv_train_csv_accepted(tmp_path, tiny):
    d = write_sgfd(tiny, tmp_path / "tsv")
    for f in ("train.csv", "valid.csv", "test.csv"):
        (d / f).write_text((d / f).read_text().replace(",", "\t"))
    _same(tiny, load_dataset(path=d))


def test_sgfd_round_trip_with_trailing_item_without_interactions(tmp_path):
    # The SGFD format infers n_items from the CSVs; labels/features of a trailing item that no
    # interaction mentions are dropped together, as feature rows are.
    from sgfd_fast.data import Dataset, load_dataset, write_sgfd

    rng = np.random.default_rng(0)
    ds = Dataset(name="t", n_users=3, n_items=5, train=[[0, 0], [0, 1], [1, 2], [2, 3], [1, 1]],
                 valid=np.zeros((0, 2)), test=[[0, 2], [2, 0]],
                 features={"text": rng.standard_normal((5, 4))}, labels=[0, 1, 2, 1, 0],
                 n_labels=3)
    write_sgfd(ds, tmp_path / "d")
    back = load_dataset(path=tmp_path / "d", format="sgfd", valid_ratio=0.0)
    assert back.n_items == 4
    np.testing.assert_array_equal(back.labels, [0, 1, 2, 1])
    np.testing.assert_allclose(back.features["text"], ds.features["text"][:4], rtol=1e-6)


# ---- writers: all or nothing (a full disk leaves no partial file and no changed file) ----------

def _disk_full_on_file(monkeypatch, n):
    """The n-th file opened for writing gets 3 bytes and then ENOSPC (text and .npy alike)."""
    import builtins
    import errno

    real, calls = builtins.open, []

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:3])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real(path, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        calls.append(path)
        return Full(f) if len(calls) == n else f

    monkeypatch.setattr(builtins, "open", fake_open)


def _files_in(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("n", [1, 5])  # a .csv / .inter file, a .npy file
@pytest.mark.parametrize("write", [write_sgfd, write_mmrec])
def test_writers_onto_a_full_disk_leave_no_partial_file(tmp_path, tiny, monkeypatch, write, n):
    from sgfd_fast.errors import DataError

    out = tmp_path / "new" / "d"
    with monkeypatch.context() as m:
        _disk_full_on_file(m, n)
        with pytest.raises(DataError, match=rf"{write.__name__}: cannot write {out}/\S+: No space "
                                            rf"left on device; nothing was written"):
            write(tiny, out)
    assert not out.exists()  # the directory it created is removed again
    write(tiny, out)
    before = _files_in(out)
    with monkeypatch.context() as m:
        _disk_full_on_file(m, n)
        kwargs = {"write_valid": False} if write is write_sgfd else {}  # would drop valid.csv
        with pytest.raises(DataError, match="nothing was written"):
            write(tiny, out, **kwargs)
    assert _files_in(out) == before  # the earlier files intact, no temporaries left


@pytest.mark.parametrize("write", [write_sgfd, write_mmrec])
def test_writers_name_a_directory_they_cannot_create(tmp_path, tiny, write):
    from sgfd_fast.errors import DataError

    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=rf"{write.__name__}: cannot create {tmp_path}/f/d: "):
        write(tiny, tmp_path / "f" / "d")
