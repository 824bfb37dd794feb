"""Every bad input gives one DataError naming the file, the row/id and the fix; the CLI prints
``error: <message>`` and exits 2 without a traceback."""

import json
import shutil

import numpy as np
import pytest

from sgfd_fast.data import load_dataset
from sgfd_fast.data.__main__ import main
from sgfd_fast.errors import DataError


def _set_line(path, lineno, text):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


# each case: (id, mutate(dir) -> extra kwargs, regex the message must match)
def _missing_dir(d):
    shutil.rmtree(d)


def _missing_test(d):
    (d / "test.csv").unlink()


def _empty(d):
    (d / "train.csv").write_text("")


def _header_only(d):
    (d / "train.csv").write_text("itemID,userID,asin\n")


def _malformed(d):
    _set_line(d / "train.csv", 4, "1,2,A001,extra")


def _missing_col(d):
    _set_line(d / "test.csv", 1, "itemID,user,asin")


def _negative(d):
    _set_line(d / "train.csv", 3, "-4,1,A001")


def _non_integer(d):
    _set_line(d / "train.csv", 5, "1.5,1,A001")


def _non_integer_text(d):
    _set_line(d / "test.csv", 2, "3,alice,A003")


def _few_rows(d):
    np.save(d / "FeatureText_normal.npy", np.zeros((5, 3), np.float32))


def _nan(d):
    x = np.load(d / "FeatureImage_normal.npy")
    x[6, 2] = np.nan
    x[7, 0] = np.nan
    np.save(d / "FeatureImage_normal.npy", x)


def _inf(d):
    x = np.load(d / "FeatureText_normal.npy")
    x[4, 1] = np.inf
    np.save(d / "FeatureText_normal.npy", x)


def _labels_float(d):
    np.save(d / "MetaData_normal.npy", np.array([0, 1, 2.5, 0, 1, 2, 0, 1, 2]))


def _labels_length(d):
    np.save(d / "MetaData_normal.npy", np.arange(5))


def _labels_str(d):
    np.save(d / "MetaData_normal.npy", np.array(["a"] * 9))


def _no_labels(d):
    (d / "MetaData_normal.npy").unlink()


def _no_features(d):
    for f in d.glob("Feature*"):
        f.unlink()


def _corrupt_npy(d):
    (d / "FeatureImage_normal.npy").write_bytes(b"not a numpy file")


def _labels_tsv_missing(d):
    (d / "lab.tsv").write_text("itemID\tlabel\n" + "".join(f"{i}\t1\n" for i in range(8)))
    return {"labels": d / "lab.tsv"}


def _labels_tsv_text(d):
    (d / "lab.tsv").write_text("".join(f"{i}\tshoes\n" for i in range(9)))
    return {"labels": d / "lab.tsv"}


SGFD_CASES = [
    ("missing-dir", _missing_dir, r"dataset directory not found"),
    ("missing-test", _missing_test, r"test\.csv: test interactions file not found.*train\.csv and test\.csv"),
    ("empty-csv", _empty, r"train\.csv: the file is empty"),
    ("header-only", _header_only, r"train\.csv: has a header but no data rows"),
    ("malformed", _malformed, r"train\.csv line 4: malformed row .*expected 3 comma-separated fields, got 4"),
    ("missing-column", _missing_col, r"test\.csv line 1: missing column\(s\) userID"),
    ("negative-id", _negative, r"train\.csv line 3: itemID -4 is negative"),
    ("non-integer-id", _non_integer, r"train\.csv line 5: itemID '1\.5' is not an integer"),
    ("non-integer-user", _non_integer_text, r"test\.csv line 2: userID 'alice' is not an integer.*load_interactions"),
    ("few-feature-rows", _few_rows, r"FeatureText_normal\.npy: .* 5 rows but the interactions reference 9 items"),
    ("nan-features", _nan, r"FeatureImage_normal\.npy: .*NaN or Inf \(2 rows affected; first at row 6 = itemID 6, column 2"),
    ("inf-features", _inf, r"FeatureText_normal\.npy: .*first at row 4"),
    ("labels-non-integer", _labels_float, r"MetaData_normal\.npy: labels must be integers; item 2 has label 2\.5"),
    ("labels-wrong-length", _labels_length, r"MetaData_normal\.npy: labels have length 5 but the dataset has 9 items"),
    ("labels-strings", _labels_str, r"MetaData_normal\.npy: .*labels must be"),
    ("labels-absent", _no_labels, r"MetaData_normal\.npy not found.*labels=FILE"),
    ("no-features", _no_features, r"no feature files found.*FeatureImage_normal\.npy"),
    ("corrupt-npy", _corrupt_npy, r"FeatureImage_normal\.npy: .*\.npy"),
    ("labels-tsv-missing-item", _labels_tsv_missing, r"lab\.tsv: labels have the wrong length: 1 of 9 items have no label \(first missing itemID 8\)"),
    ("labels-tsv-text", _labels_tsv_text, r"lab\.tsv line 1: label 'shoes' of itemID 0 is not an integer"),
]


@pytest.mark.parametrize("mutate,pattern", [c[1:] for c in SGFD_CASES], ids=[c[0] for c in SGFD_CASES])
def test_sgfd_bad_input_api(sgfd_dir, mutate, pattern):
    kw = mutate(sgfd_dir) or {}
    with pytest.raises(DataError, match=pattern) as exc:
        load_dataset(path=sgfd_dir, format="sgfd", **kw)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("mutate,pattern", [c[1:] for c in SGFD_CASES], ids=[c[0] for c in SGFD_CASES])
def test_sgfd_bad_input_cli_inprocess(sgfd_dir, mutate, pattern, capsys):
    kw = mutate(sgfd_dir) or {}
    args = ["inspect", "--path", str(sgfd_dir), "--format", "sgfd"]
    if "labels" in kw:
        args += ["--labels", str(kw["labels"])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(pattern, err)


def _mmrec_no_features(d):
    for f in d.glob("*_feat.npy"):
        f.unlink()


# the data layer's messages reach train, data inspect and Python: each fix names all their options
@pytest.mark.parametrize("fmt, mutate, kw, spellings", [
    ("sgfd", _missing_dir, {}, ["--data-path (train)", "--path (data inspect)", "path= (Python)"]),
    ("sgfd", _no_labels, {}, ["--labels FILE (train, data inspect)", "labels=FILE (Python)"]),
    ("sgfd", lambda d: None, {"labels": "nope.npy"}, ["--labels FILE", "labels=FILE"]),
    ("sgfd", _no_features, {}, ["--modality NAME=FILE (data inspect)", "modalities={'NAME'",
                                "train finds features by these file names"]),
    ("mmrec", lambda d: None, {}, ["--labels FILE (train, data inspect)", "labels=FILE (Python)"]),
    ("mmrec", _mmrec_no_features, {"labels": True}, ["--modality NAME=FILE (data inspect)",
                                                     "modalities={'NAME'"]),
])
def test_fix_names_each_callers_option(sgfd_dir, mmrec_dir, fmt, mutate, kw, spellings):
    d = sgfd_dir if fmt == "sgfd" else mmrec_dir[0]
    mutate(d)
    if kw.get("labels") is True:
        kw = {"labels": mmrec_dir[1]}
    with pytest.raises(DataError) as exc:
        load_dataset(path=d, format=fmt, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and "CLI:" not in msg and "--path /" not in msg
    for s in spellings:
        assert s in msg, msg


def test_mmrec_without_labels(mmrec_dir):
    d, _ = mmrec_dir
    with pytest.raises(DataError, match=r"MMRec data has no item labels.*labels=FILE.*--labels"):
        load_dataset(path=d, format="mmrec")


def test_the_wrong_format_and_prepares_labels_are_pointed_out(sgfd_dir, mmrec_dir):
    """A directory in the other format (prepare writes MMRec's, --format defaults to sgfd), and
    an MMRec directory whose labels.tsv (prepare's) was not named: the error says what to add."""
    d, lp = mmrec_dir
    with pytest.raises(DataError, match=r"train interactions file not found; .* this one holds "
                                        r"mm\.inter, MMRec's layout: give --format mmrec"):
        load_dataset(path=d, format="sgfd")
    with pytest.raises(DataError, match=r"no <name>\.inter file found; .*this one holds "
                                        r"train\.csv, the SGFD release's layout: give "
                                        r"--format sgfd"):
        load_dataset(path=sgfd_dir, format="mmrec", labels=lp)
    saved = lp.read_bytes()  # write_mmrec, like prepare, writes DIR/labels.tsv
    lp.unlink()
    with pytest.raises(DataError) as exc:
        load_dataset(path=d, format="mmrec")
    assert "labels.tsv" not in str(exc.value)
    (d / "labels.tsv").write_bytes(saved)
    with pytest.raises(DataError, match=r"has no item labels.*this directory holds labels\.tsv "
                                        r".*: --labels labels\.tsv$"):
        load_dataset(path=d, format="mmrec")
    assert load_dataset(path=d, format="mmrec", labels="labels.tsv").n_items == 9


def test_mmrec_bad_x_label(mmrec_dir):
    d, lp = mmrec_dir
    inter = d / "mm.inter"
    _set_line(inter, 3, "1\t2\t5")
    with pytest.raises(DataError, match=r"mm\.inter line 3: x_label 5 is invalid; use 0 = train"):
        load_dataset(path=d, format="mmrec", labels=lp)


def test_mmrec_missing_inter(mmrec_dir):
    d, lp = mmrec_dir
    (d / "mm.inter").unlink()
    with pytest.raises(DataError, match=r"no <name>\.inter file found"):
        load_dataset(path=d, format="mmrec", labels=lp)


def test_mmrec_missing_labels_file(mmrec_dir):
    d, _ = mmrec_dir
    with pytest.raises(DataError, match=r"nope\.tsv: labels file not found"):
        load_dataset(path=d, format="mmrec", labels=d / "nope.tsv")


def test_unknown_name_and_format(sgfd_dir):
    with pytest.raises(DataError, match="unknown dataset 'offfice'; built-in datasets are office"):
        load_dataset("offfice")
    with pytest.raises(DataError, match="unknown format 'recbole'"):
        load_dataset(path=sgfd_dir, format="recbole")
    with pytest.raises(DataError, match="exactly one of name"):
        load_dataset()


# ---- the real CLI in a subprocess ------------------------------------------------------------


def test_cli_subprocess_errors(sgfd_dir, mmrec_dir, tmp_path, cli):
    run_cli = cli
    _nan(sgfd_dir)
    r = run_cli("inspect", "--path", sgfd_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "FeatureImage_normal.npy" in r.stderr
    assert "row 6" in r.stderr and r.stdout == ""
    d, _ = mmrec_dir
    r = run_cli("inspect", "--path", d, "--format", "mmrec")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: " in r.stderr and "--labels" in r.stderr
    r = run_cli("inspect", "--path", tmp_path / "nowhere")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr


def test_cli_subprocess_inspect_ok(mmrec_dir, cli):
    run_cli = cli
    d, lp = mmrec_dir
    r = run_cli("inspect", "--path", d, "--format", "mmrec", "--labels", lp)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["n_users"] == 7 and s["n_items"] == 9 and s["modalities"] == {"image": 5, "text": 3}
    assert s["n_train"] == 18 and s["n_valid"] == 3 and s["n_test"] == 7 and s["n_labels"] == 3


def test_cli_inspect_office_and_toys(capsys):
    assert main(["inspect", "--dataset", "office"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["n_users"], s["n_items"], s["n_train_total"], s["n_test"]) == (4874, 2406, 37027, 15930)
    assert s["synthetic"] == []
    assert main(["inspect", "--dataset", "toysgames-synthetic"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["n_users"], s["n_items"], s["n_test"]) == (18748, 11673, 48639)
    assert s["synthetic"] == ["image", "text", "labels"]


def test_cli_warning_format(sgfd_dir, capsys):
    with open(sgfd_dir / "train.csv", "a") as fh:
        fh.write("0,0,A000\n0,0,A000\n")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["inspect", "--path", str(sgfd_dir)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "duplicate interactions" in err


def test_cli_help(cli):
    run_cli = cli
    r = run_cli("--help")
    assert r.returncode == 0 and "inspect" in r.stdout and "prepare-office" in r.stdout
    r = run_cli("inspect", "--help")
    assert "--labels" in r.stdout and "--format" in r.stdout


def test_pickled_object_features(sgfd_dir):
    np.save(sgfd_dir / "FeatureText_normal.npy", np.array([[1.0]] * 9, dtype=object),
            allow_pickle=True)
    with pytest.raises(DataError, match=r"FeatureText_normal\.npy: .*pickled object array.*re-save"):
        load_dataset(path=sgfd_dir)


def test_prepare_office_errors(tmp_path, capsys):
    assert main(["prepare-office", "--source", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "Office source directory not found" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        src = tmp_path / "src"
        src.mkdir()
        assert main(["prepare-office", "--source", str(src), "--out", str(tmp_path)]) == 2
        assert "pip install 'sgfd_fast[prepare]'" in capsys.readouterr().err


def test_cli_modality_option(sgfd_dir, capsys):
    np.save(sgfd_dir / "v.npy", np.ones((9, 4), np.float32))
    assert main(["inspect", "--path", str(sgfd_dir), "--modality", "vis=v.npy"]) == 0
    assert json.loads(capsys.readouterr().out)["modalities"] == {"vis": 4}
    assert main(["inspect", "--path", str(sgfd_dir), "--modality", "vis"]) == 2
    assert "expected NAME=FILE" in capsys.readouterr().err


def test_prepare_needs_source(cli, tmp_path):
    # the raw-data source is an explicit argument: no default path of some machine
    for command in ("prepare-office", "prepare-toysgames"):
        r = cli(command, "--out", tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "the following arguments are required: --source" in r.stderr
    r = cli("prepare-office", "--help")
    assert "github.com/HuilinChenJN/SGFD" in r.stdout and "github.com/ysh-1998/LRD" in r.stdout


def test_prepare_source_files_named(tmp_path, capsys):
    from sgfd_fast.data import prepare_office as po

    src = tmp_path / "raw"
    src.mkdir()
    (src / "train.csv").write_text("itemID,userID\n0,0\n")
    assert main(["prepare-toysgames", "--source", str(src), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing test.csv" in err and "github.com/liufancs/DMRL" in err
    with pytest.raises(DataError, match="missing test.csv, Office.text, item_meta.csv, "
                                        "Office.item2index.*github.com/ysh-1998/LRD"):
        po.check_files(src, po.OFFICE_FILES)
    (src / "file").write_text("")
    with pytest.raises(DataError, match="Office source directory not found; it is a file"):
        po.prepare_office(src / "file", tmp_path)


def test_empty_path_is_an_error(capsys):
    assert main(["inspect", "--path", ""]) == 2
    assert capsys.readouterr().err == "error: --path is empty; give a path\n"
