"""Values and names in data files that used to be misread: ids that are not plain decimals, labels
beyond 64 bits, feature files whose names collide or are strays, ``.NPY`` suffixes, one label
class for every item, and ``--labels`` resolved alike by every caller."""

import json
import re
import warnings

import numpy as np
import pytest

from sgfd_fast.data import DataWarning, load_dataset
from sgfd_fast.data.__main__ import main
from sgfd_fast.errors import DataError


def _set_line(path, lineno, text):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


# ---- ids are ASCII decimals: nothing else is read as a number --------------------------------

@pytest.mark.parametrize("value", ["1_0", "１", "1２", "+3", " 1e1", "٣", "²"])
def test_ids_that_python_reads_as_numbers_are_refused(sgfd_dir, value):
    _set_line(sgfd_dir / "train.csv", 3, f"{value},1,A001")
    shown = re.escape(value.strip())
    with pytest.raises(DataError, match=rf"train\.csv line 3: itemID '{shown}' is not an "
                                        rf"integer; .*digits 0-9 only"):
        load_dataset(path=sgfd_dir)


def test_ids_in_an_mmrec_inter_and_an_id_mapping(mmrec_dir):
    d, lp = mmrec_dir
    _set_line(d / "mm.inter", 2, "1_0\t2\t0")
    with pytest.raises(DataError, match=r"mm\.inter line 2: userID '1_0' is not an integer"):
        load_dataset(path=d, format="mmrec", labels=lp)
    _set_line(d / "mm.inter", 2, "1\t2\t0")
    _set_line(d / "i_id_mapping.csv", 2, "A000\t０")
    with pytest.raises(DataError, match=r"i_id_mapping\.csv line 2: itemID '０' is not an"):
        load_dataset(path=d, format="mmrec", labels=lp)


def test_an_id_beyond_64_bits_names_its_line(sgfd_dir):
    _set_line(sgfd_dir / "test.csv", 2, f"{2**63 + 5},1,A001")
    with pytest.raises(DataError, match=rf"test\.csv line 2: itemID {2**63 + 5} is beyond the "
                                        rf"64-bit integer range"):
        load_dataset(path=sgfd_dir)


def test_leading_zeros_and_blanks_are_plain_decimals(sgfd_dir):
    before = load_dataset(path=sgfd_dir)
    lines = (sgfd_dir / "train.csv").read_text().splitlines()
    item, user, asin = lines[1].split(",")
    lines[1] = f"0{item}, {user} ,{asin}"
    (sgfd_dir / "train.csv").write_text("\n".join(lines) + "\n")
    assert np.array_equal(load_dataset(path=sgfd_dir).train, before.train)


@pytest.mark.parametrize("row", ["1_0\t1", "１\t1"])
def test_a_labels_table_row_with_such_an_id_is_not_taken_for_a_header(sgfd_dir, row):
    lab = sgfd_dir / "lab.tsv"
    lab.write_text(row + "\n" + "".join(f"{i}\t1\n" for i in range(9)))
    with pytest.raises(DataError, match=r"lab\.tsv line 1: itemID .* is not an integer"):
        load_dataset(path=sgfd_dir, labels=lab)


@pytest.mark.parametrize("label", ["1_0", "٣", "+1"])
def test_a_labels_table_value_must_be_a_plain_integer(sgfd_dir, label):
    lab = sgfd_dir / "lab.tsv"
    lab.write_text("".join(f"{i}\t{label if i == 4 else 1}\n" for i in range(9)))
    shown = re.escape(label)
    with pytest.raises(DataError, match=rf"lab\.tsv line 5: label '{shown}' of itemID 4 is not "
                                        rf"an integer"):
        load_dataset(path=sgfd_dir, labels=lab)


# ---- labels beyond 64 bits: refused, never an OverflowError or a wrapped value ---------------

@pytest.mark.parametrize("value", [10**30, 2**63 + 5, -(2**63)])
def test_a_huge_label_in_a_table(sgfd_dir, value):
    lab = sgfd_dir / "lab.tsv"
    lab.write_text("itemID\tlabel\n" + "".join(f"{i}\t{value if i == 2 else 1}\n"
                                               for i in range(9)))
    with pytest.raises(DataError, match=rf"lab\.tsv line 4: label {value} of itemID 2 is outside "
                                        rf"the 64-bit integer range"):
        load_dataset(path=sgfd_dir, labels=lab)


@pytest.mark.parametrize("labels", [
    np.array([1, 2, 2**63 + 5, 1, 2, 0, 1, 2, 0], dtype=np.uint64),   # astype(int64) wrapped
    np.array([1, 2, 1e30, 1, 2, 0, 1, 2, 0]),                          # astype(int64) wrapped
    np.array([1, 2, -2.0**63, 1, 2, 0, 1, 2, 0]),
])
def test_a_huge_label_in_an_npy(sgfd_dir, labels):
    np.save(sgfd_dir / "MetaData_normal.npy", labels)
    with pytest.raises(DataError, match=r"MetaData_normal\.npy: item 2 has label .*outside the "
                                        r"64-bit integer range"):
        load_dataset(path=sgfd_dir)


def test_labels_at_the_64_bit_limits_are_classes(sgfd_dir):
    top = 2**63 - 1
    np.save(sgfd_dir / "MetaData_normal.npy",
            np.array([top, -top, 0, top, -top, 0, 0, 1, 1], dtype=np.int64))
    with pytest.warns(DataWarning, match="negative labels"):  # kept as classes
        ds = load_dataset(path=sgfd_dir)
    assert ds.n_labels == 4 and ds.meta["label_values"].tolist() == [-top, 0, 1, top]


def test_features_beyond_float32_are_not_called_nan(sgfd_dir):
    x = np.load(sgfd_dir / "FeatureImage_normal.npy").astype(np.float64)
    x[3, 1] = 1e300
    np.save(sgfd_dir / "FeatureImage_normal.npy", x)
    with pytest.raises(DataError, match=r"FeatureImage_normal\.npy: .* beyond float32's range "
                                        r".*row 3 = itemID 3, column 1: 1e\+300\); rescale"):
        load_dataset(path=sgfd_dir)


# ---- feature files: one modality per name, stray files ignored aloud -------------------------

def test_two_sgfd_feature_files_of_one_modality(sgfd_dir):
    np.save(sgfd_dir / "Featureimage_normal.npy", np.ones((9, 2), np.float32))
    with pytest.raises(DataError, match=r"FeatureImage_normal\.npy and Featureimage_normal\.npy "
                                        r"both name modality 'image'"):
        load_dataset(path=sgfd_dir)


def test_two_mmrec_feature_files_differing_in_case(mmrec_dir):
    d, lp = mmrec_dir
    np.save(d / "Image_feat.npy", np.ones((9, 2), np.float32))
    with pytest.raises(DataError, match=r"image_feat\.npy and Image_feat\.npy both name "
                                        r"modality 'image'"):
        load_dataset(path=d, format="mmrec", labels=lp)


def test_explicit_modalities_differing_in_case(sgfd_dir):
    with pytest.raises(DataError, match=r"'image' and 'Image' both name modality 'image'"):
        load_dataset(path=sgfd_dir, modalities={"image": "FeatureImage_normal.npy",
                                                "Image": "FeatureText_normal.npy"})


@pytest.mark.parametrize("fmt,stray", [("sgfd", "FeatureImage copy_normal.npy"),
                                       ("mmrec", "image copy_feat.npy"),
                                       ("mmrec", "text.old_feat.npy")])
def test_a_stray_feature_file_is_ignored_with_a_warning(sgfd_dir, mmrec_dir, fmt, stray):
    d, kw = (sgfd_dir, {}) if fmt == "sgfd" else (mmrec_dir[0], {"labels": mmrec_dir[1]})
    np.save(d / stray, np.ones((9, 2), np.float32))
    with pytest.warns(DataWarning, match=rf"{stray}: ignored: its modality name '.*' is not "
                                         rf"letters, digits, '_' and '-'"):
        ds = load_dataset(path=d, format=fmt, **kw)
    assert list(ds.features) == ["image", "text"]


def test_an_explicit_modality_name_with_a_space_is_refused(sgfd_dir, capsys):
    assert main(["inspect", "--path", str(sgfd_dir), "--modality",
                 "my text=FeatureText_normal.npy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: modality name 'my text' (FeatureText_normal.npy): a name is "
                          "letters, digits"), err


# ---- .NPY is .npy ----------------------------------------------------------------------------

def _upper_suffix(path):
    path.rename(path.with_suffix(".NPY"))


def test_upper_case_npy_suffixes_are_read_alike(sgfd_dir, mmrec_dir):
    want = load_dataset(path=sgfd_dir)
    for f in list(sgfd_dir.glob("*.npy")):
        _upper_suffix(f)
    got = load_dataset(path=sgfd_dir)
    assert list(got.features) == ["image", "text"] and np.array_equal(got.labels, want.labels)
    d, lp = mmrec_dir
    for f in list(d.glob("*_feat.npy")):
        _upper_suffix(f)
    np.save(d / "lab.npy", want.labels)
    _upper_suffix(d / "lab.npy")
    (d / "mm.inter").rename(d / "mm.INTER")
    ds = load_dataset(path=d, format="mmrec", labels=d / "lab.NPY")
    assert list(ds.features) == ["image", "text"] and np.array_equal(ds.labels, want.labels)


def test_npy_and_NPY_side_by_side_is_one_clear_error(sgfd_dir):
    np.save(sgfd_dir / "x.npy", np.load(sgfd_dir / "MetaData_normal.npy"))
    (sgfd_dir / "x.npy").rename(sgfd_dir / "MetaData_normal.NPY")
    with pytest.raises(DataError, match=r"MetaData_normal\.NPY and MetaData_normal\.npy are "
                                        r"both the labels file; keep one"):
        load_dataset(path=sgfd_dir)
    (sgfd_dir / "MetaData_normal.NPY").unlink()
    np.save(sgfd_dir / "x.npy", np.ones((9, 2), np.float32))
    (sgfd_dir / "x.npy").rename(sgfd_dir / "FeatureText_normal.NPY")
    with pytest.raises(DataError, match=r"both name modality 'text'"):
        load_dataset(path=sgfd_dir)


# ---- one label class ------------------------------------------------------------------------

def test_one_label_for_every_item_warns_that_sgfd_learns_nothing_from_it(sgfd_dir, capsys):
    np.save(sgfd_dir / "MetaData_normal.npy", np.full(9, 7))
    with pytest.warns(DataWarning, match=r"MetaData_normal\.npy: all 9 items carry one label "
                                         r"\(7\): SGFD's teacher classification loss is then "
                                         r"constant"):
        assert load_dataset(path=sgfd_dir).n_labels == 1
    assert main(["inspect", "--path", str(sgfd_dir)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1 and "all 9 items carry one label" in err, err


def test_two_label_classes_do_not_warn(sgfd_dir):
    np.save(sgfd_dir / "MetaData_normal.npy", np.array([7] * 8 + [8]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(path=sgfd_dir).n_labels == 2


# ---- --labels FILE: one rule for load_dataset, data inspect and train ------------------------

def test_labels_are_resolved_alike_by_inspect_and_train(tmp_path, mmrec_dir, monkeypatch,
                                                        capsys):
    from sgfd_fast import training
    from sgfd_fast.config import load_config

    d, lp = mmrec_dir
    monkeypatch.chdir(tmp_path)  # labels.tsv is not here, only in the dataset directory
    assert main(["inspect", "--path", str(d), "--format", "mmrec", "--labels", lp.name]) == 0
    inspected = json.loads(capsys.readouterr().out)
    cfg = load_config("BM3", None, overrides=["epochs=1", "embedding_size=8", "device=cpu",
                                              "train_batch_size=64", "topk=[5]",
                                              "valid_metric=recall@5"])
    res = training.train("BM3", cfg, run_dir=tmp_path / "run", progress=False, console=False,
                         data={"path": str(d), "format": "mmrec", "labels": lp.name})
    assert res["data"]["labels"] == str(lp.resolve())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["labels"] == \
        str(lp.resolve())
    assert inspected["n_labels"] == 3
    (tmp_path / lp.name).write_text("itemID\tlabel\n" + "".join(f"{i}\t{i % 2}\n"
                                                                for i in range(9)))
    # the current directory first, by both
    assert main(["inspect", "--path", str(d), "--format", "mmrec", "--labels", lp.name]) == 0
    assert json.loads(capsys.readouterr().out)["n_labels"] == 2
    res = training.train("BM3", cfg, run_dir=tmp_path / "run2", progress=False, console=False,
                         data={"path": str(d), "format": "mmrec", "labels": lp.name})
    assert res["data"]["labels"] == str(tmp_path / lp.name)


def test_home_relative_paths_are_expanded(tmp_path, sgfd_dir, tiny, monkeypatch):
    from sgfd_fast.data import write_mmrec, write_sgfd

    monkeypatch.setenv("HOME", str(sgfd_dir.parent))
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(path=f"~/{sgfd_dir.name}", labels=f"~/{sgfd_dir.name}/MetaData_normal.npy")
    assert ds.name == sgfd_dir.name and ds.n_items == 9
    assert write_sgfd(tiny, "~/again") == tmp_path / "again"
    assert write_mmrec(tiny, "~/mm2") == tmp_path / "mm2" / "labels.tsv"
    assert not (tmp_path / "~").exists()


# ---- train prints each data warning once -----------------------------------------------------

def test_train_prints_each_data_warning_once(sgfd_dir, tmp_path, capsys, monkeypatch):
    from sgfd_fast.train import main as train_main
    from sgfd_fast.training import runner

    with open(sgfd_dir / "train.csv", "a") as fh:
        fh.write("0,0,A000\n0,0,A000\n")
    args = ["--data-path", str(sgfd_dir), "epochs=1", "sgfd=false", "embedding_size=8",
            "train_batch_size=64", "topk=[5]", "valid_metric=recall@5", "--device", "cpu"]
    assert train_main([*args, "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err.count("duplicate interactions") == 1
    assert train_main([*args, "--out", str(tmp_path / "none"), "valid_ratio=0"]) == 2
    err = capsys.readouterr().err  # a run refused after loading shows them with its error
    assert err.count("duplicate interactions") == 1 and "error: " in err, err
    # under torchrun every process loads the data; rank 0 alone speaks for them, as its log does
    monkeypatch.setattr(runner, "is_main", lambda: False)
    assert train_main([*args, "--out", str(tmp_path / "none"), "valid_ratio=0"]) == 2
    assert "duplicate interactions" not in capsys.readouterr().err


@pytest.mark.parametrize("fmt,name", [("sgfd", "FeatureText_normal"), ("mmrec", "text_feat")])
def test_a_feature_file_twice_with_npy_and_NPY_is_one_clear_error(sgfd_dir, mmrec_dir, fmt, name):
    d, kw = (sgfd_dir, {}) if fmt == "sgfd" else (mmrec_dir[0], {"labels": mmrec_dir[1]})
    np.save(d / "x.npy", np.ones((9, 2), np.float32))
    (d / "x.npy").rename(d / f"{name}.NPY")
    with pytest.raises(DataError, match=rf"{name}\.NPY and {name}\.npy both name modality 'text' "
                                        rf"\(the \.npy suffix is read in any case\); keep one"):
        load_dataset(path=d, format=fmt, **kw)


@pytest.mark.parametrize("fmt", ["sgfd", "mmrec"])
def test_boolean_labels_are_refused(sgfd_dir, mmrec_dir, fmt):
    d, kw = (sgfd_dir, {}) if fmt == "sgfd" else (mmrec_dir[0], {"labels": mmrec_dir[0] / "b.npy"})
    np.save(d / ("MetaData_normal.npy" if fmt == "sgfd" else "b.npy"), np.arange(9) % 2 == 0)
    with pytest.raises(DataError, match=r"\.npy: labels must be integer category ids, got "
                                        r"booleans \(dtype bool\)"):
        load_dataset(path=d, format=fmt, **kw)


def test_inspect_warns_when_a_user_id_leaves_most_users_empty(sgfd_dir, capsys):
    with (sgfd_dir / "train.csv").open("a") as f:
        f.write("1,1000000,A001\n")
    assert main(["inspect", "--path", str(sgfd_dir)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n_users"] == 1000001
    assert err.count("warning: ") == 1 and re.search(
        r"n_users is 1,000,001: the user ids run to 1,000,000 while 8 distinct users appear, and "
        r"ids are row indices .*; renumber the users 0\.\.7", err), err
