"""Data that used to be changed silently or blamed on the wrong file: extra rows and negative
labels warn with counts, unscorable splits fail at load time naming the file, each error names
the file and row at fault, and built-in datasets refuse options meant for --path."""

import re

import numpy as np
import pytest

from sgfd_fast.data import DataWarning, load_dataset
from sgfd_fast.data.__main__ import main
from sgfd_fast.errors import DataError


# ---- extra rows and negative labels: kept or dropped, but never silently --------------------

def test_extra_feature_rows_warn_with_counts(sgfd_dir):
    np.save(sgfd_dir / "FeatureText_normal.npy", np.ones((12, 3), np.float32))
    with pytest.warns(DataWarning, match=r"FeatureText_normal\.npy: 12 feature rows of modality "
                                         r"'text' for 9 items .*the last 3.*dropped"):
        ds = load_dataset(path=sgfd_dir)
    assert ds.features["text"].shape == (9, 3)


def test_extra_labels_warn_with_counts(sgfd_dir, mmrec_dir):
    np.save(sgfd_dir / "MetaData_normal.npy", np.arange(11) % 3)
    with pytest.warns(DataWarning, match=r"MetaData_normal\.npy: 11 labels for 9 items .*last 2"):
        assert load_dataset(path=sgfd_dir).labels.shape == (9,)
    d, lp = mmrec_dir  # a labels table naming items beyond the data: same rule
    with open(lp, "a") as fh:
        fh.write("9\t1\n10\t2\n")
    with pytest.warns(DataWarning, match=r"labels\.tsv: labels of 2 itemID\(s\) beyond the 9 "
                                         r"items \(itemID 0\.\.8; first at line 11: itemID 9\) "
                                         r"are dropped"):
        assert load_dataset(path=d, format="mmrec", labels=lp).labels.shape == (9,)



def test_a_labels_table_is_sized_by_the_items_not_by_an_item_id(mmrec_dir):
    # itemID 10**12 made an array of 10**12 + 1 labels (a 7 TiB allocation traceback)
    d, lp = mmrec_dir
    expected = load_dataset(path=d, format="mmrec", labels=lp).labels
    with open(lp, "a") as fh:
        fh.write(f"{10**12}\t1\n{10**12}\t1\n200000000\t0\n")
    with pytest.warns(DataWarning, match=r"labels of 2 itemID\(s\) beyond the 9 items .*first at "
                                         r"line 11: itemID 1000000000000\) are dropped"):
        np.testing.assert_array_equal(load_dataset(path=d, format="mmrec", labels=lp).labels,
                                      expected)
    with open(lp, "a") as fh:
        fh.write(f"{10**12}\t2\n")  # labelled twice beyond the items: still one error
    with pytest.raises(DataError, match=rf"labels\.tsv line 14: itemID {10**12} is labelled twice "
                                        rf"with different labels \(1 and 2\)"):
        load_dataset(path=d, format="mmrec", labels=lp)

def test_extra_mmrec_features_warn(mmrec_dir):
    d, lp = mmrec_dir
    np.save(d / "image_feat.npy", np.ones((10, 5), np.float32))
    with pytest.warns(DataWarning, match=r"image_feat\.npy: 10 feature rows of modality 'image'"):
        load_dataset(path=d, format="mmrec", labels=lp)


def test_negative_label_warns(sgfd_dir):
    np.save(sgfd_dir / "MetaData_normal.npy", np.array([0, -1, 1, -1, 2, 0, 1, 2, 0]))
    with pytest.warns(DataWarning, match=r"negative labels \(-1 on 2 item\(s\); first itemID 1\) "
                                         r"are each kept as a class"):
        ds = load_dataset(path=sgfd_dir)
    assert ds.n_labels == 4 and ds.meta["label_values"].tolist() == [-1, 0, 1, 2]


# ---- splits that cannot be scored fail at load time, naming the file -------------------------

def _renumber_users(path, offset):
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for ln in lines[1:]:
        item, user, *rest = ln.split(",")
        out.append(",".join([item, str(int(user) + offset), *rest]))
    path.write_text("\n".join(out) + "\n")


def test_no_test_user_in_train(sgfd_dir, capsys):
    _renumber_users(sgfd_dir / "test.csv", 100)
    with pytest.raises(DataError, match=r"test\.csv: none of the 7 users of the test split has a "
                                        r"training interaction \(first: userID 10\d\).*same user "
                                        r"ids as .*train\.csv"):
        load_dataset(path=sgfd_dir)
    assert main(["inspect", "--path", str(sgfd_dir)]) == 2  # was: n_test 0, exit 0
    assert "none of the 7 users of the test split" in capsys.readouterr().err


def test_no_valid_user_in_train(sgfd_dir):
    (sgfd_dir / "valid.csv").write_text("itemID,userID\n1,50\n2,51\n")
    with pytest.raises(DataError, match=r"valid\.csv: none of the 2 users of the valid split"):
        load_dataset(path=sgfd_dir)


def test_no_mmrec_test_user_in_train(mmrec_dir):
    d, lp = mmrec_dir
    inter = d / "mm.inter"
    lines = inter.read_text().splitlines()
    out = [lines[0]] + [f"{int(u) + 100 if x == '2' else u}\t{i}\t{x}"
                        for u, i, x in (ln.split("\t") for ln in lines[1:])]
    inter.write_text("\n".join(out) + "\n")
    with pytest.raises(DataError, match=r"mm\.inter \(x_label 2\): none of the 7 users"):
        load_dataset(path=d, format="mmrec", labels=lp)


def test_valid_ratio_that_carves_nothing(tmp_path):
    from sgfd_fast.data import Dataset, write_sgfd

    one = Dataset(name="one", n_users=3, n_items=4, train=[[0, 0], [1, 1], [2, 2]], valid=[],
                  test=[[0, 3], [1, 3], [2, 0]], features={"t": np.ones((4, 2))},
                  labels=[0, 1, 0, 1], n_labels=2)
    d = write_sgfd(one, tmp_path / "one")
    with pytest.raises(DataError, match=r"valid_ratio=0\.1 carves no validation rows, because no "
                                        r"user has 2 or more training interactions"):
        load_dataset(path=d, valid_ratio=0.1)
    assert load_dataset(path=d, valid_ratio=0).valid.shape == (0, 2)


# ---- each error names the right file, row and fix --------------------------------------------

def test_mmrec_item_beyond_the_data_blames_the_inter_row(mmrec_dir):
    d, lp = mmrec_dir
    with open(d / "mm.inter", "a") as fh:
        fh.write("3\t40\t0\n")
    n = len((d / "mm.inter").read_text().splitlines())
    with pytest.raises(DataError, match=rf"mm\.inter line {n} has itemID 40, beyond the 9 items "
                                        r"that every feature and label file describes .*fix the "
                                        r"itemID in that row") as exc:
        load_dataset(path=d, format="mmrec", labels=lp)
    assert not str(exc.value).startswith(str(lp))


def test_sgfd_item_beyond_the_features_names_the_csv_row(sgfd_dir):
    with open(sgfd_dir / "test.csv", "a") as fh:
        fh.write("12,1,A012\n")
    n = len((sgfd_dir / "test.csv").read_text().splitlines())
    with pytest.raises(DataError, match=rf"test\.csv line {n} has itemID 12, beyond the 9 items"):
        load_dataset(path=sgfd_dir)
    # only one file short: that file is at fault, and the row that needs it is named too
    np.save(sgfd_dir / "FeatureText_normal.npy", np.ones((13, 3), np.float32))
    np.save(sgfd_dir / "MetaData_normal.npy", np.arange(13) % 3)
    with pytest.raises(DataError, match=rf"FeatureImage_normal\.npy: .*9 rows but the interactions "
                                        rf"reference 13 items \(.*test\.csv line {n} has itemID "
                                        rf"12\).*fix that itemID"):
        load_dataset(path=sgfd_dir)


@pytest.mark.parametrize("value", ["test", "-1", "", "1.0"])
def test_mmrec_x_label_gets_the_split_hint(mmrec_dir, value):
    d, lp = mmrec_dir
    lines = (d / "mm.inter").read_text().splitlines()
    u, i, _ = lines[2].split("\t")
    lines[2] = f"{u}\t{i}\t{value}"
    (d / "mm.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        load_dataset(path=d, format="mmrec", labels=lp)
    msg = str(exc.value)
    assert re.search(r"mm\.inter line 3: x_label .* is invalid; use 0 = train, 1 = valid, 2 = test",
                     msg), msg
    assert "ids must be" not in msg


def test_text_saved_as_npy(sgfd_dir, tmp_path):
    lab = tmp_path / "labels.npy"
    lab.write_text("itemID\tlabel\n0\t1\n")
    with pytest.raises(DataError, match=r"labels\.npy: not a \.npy file: it is a text file.*a "
                                        r"labels table itemID<TAB>label is read from a \.tsv"):
        load_dataset(path=sgfd_dir, labels=lab)
    (sgfd_dir / "FeatureText_normal.npy").write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n")
    with pytest.raises(DataError, match=r"FeatureText_normal\.npy: not a \.npy file: it is a text "
                                        r"file \(first line '0\.1,0\.2,0\.3'\); save the text "
                                        r"feature with numpy\.save") as exc:
        load_dataset(path=sgfd_dir)
    assert "pickle" not in str(exc.value)


# ---- options a built-in dataset cannot use are errors, not ignored ---------------------------

@pytest.mark.parametrize("extra", [["--labels", "x.tsv"], ["--format", "mmrec"],
                                   ["--modality", "v=v.npy"]])
def test_inspect_builtin_refuses_path_options(extra, capsys):
    assert main(["inspect", "--dataset", "office", *extra]) == 2
    err = capsys.readouterr().err
    assert f"error: {extra[0]} applies to --path datasets only" in err


# ---- a data warning is printed once ----------------------------------------------------------

def test_cli_prints_each_data_warning_once(sgfd_dir, cli):
    with open(sgfd_dir / "train.csv", "a") as fh:
        fh.write("0,0,A000\n0,0,A000\n")
    r = cli("inspect", "--path", sgfd_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("duplicate interactions") == 1, r.stderr
    assert r.stderr.startswith("warning: ")



# ---- original user ids: a table sized by the rows, never by one user id's value ----------------

def _with_user(lines, col, user, rename):
    """CSV/TSV lines with user 0 renamed ``rename`` in column ``col``; ``user(id)`` gives a
    reviewerID to append to each row (None: none)."""
    sep = "\t" if "\t" in lines[0] else ","
    head = lines[0].split(sep)
    j = head.index(col)
    out = [lines[0] + ("" if user is None else f"{sep}reviewerID")]
    for ln in lines[1:]:
        r = ln.split(sep)
        extra = "" if user is None else f"{sep}{user(r[j])}"
        r[j] = str(rename) if r[j] == "0" else r[j]
        out.append(sep.join(r) + extra)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("fmt", ["sgfd", "mmrec"])
def test_original_user_ids_are_never_sized_by_a_user_id(sgfd_dir, mmrec_dir, fmt):
    # a user id of 10**12 made an object array of 10**12 + 1 original ids (8 TB)
    if fmt == "sgfd":  # a reviewerID column in train.csv and test.csv
        d, kw, files, add = sgfd_dir, {}, ["train.csv", "test.csv"], lambda u: f"R{u}"
    else:  # a u_id_mapping.csv
        (d, lp), add = mmrec_dir, None
        kw, files = dict(format="mmrec", labels=lp), [f"{d.name}.inter"]
        (d / "u_id_mapping.csv").write_text(
            "reviewerID\tuserID\n" + "".join(f"R{u}\t{u}\n" for u in range(7)))
    for f in files:  # first: original ids on the data as it is
        (d / f).write_text(_with_user((d / f).read_text().splitlines(), "userID", add, 0))
    assert load_dataset(path=d, **kw).user_ids.tolist() == [f"R{u}" for u in range(7)]
    for f in files:
        (d / f).write_text(_with_user((d / f).read_text().splitlines(), "userID", None, 10**12))
    with pytest.warns(DataWarning, match=r"the user ids run to 1,000,000,000,000 while the "
                                         r"interactions have \d+ rows, so the original user ids "
                                         r"\((reviewerID|u_id_mapping\.csv)\) are not kept"):
        ds = load_dataset(path=d, **kw)
    assert ds.n_users == 10**12 + 1 and ds.user_ids is None
