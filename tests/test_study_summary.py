"""python -m sgfd_fast.study --summary: one table and forest plot of a contrast across finished
studies. Three tiny real studies (two backbones, two datasets, two seeds, one epoch) are trained
once; every row must repeat its study's own report, and every refusal is one line, exit 2,
with nothing written."""

import json
import shutil

import pytest

from sgfd_fast import study
from sgfd_fast.data import write_sgfd
from sgfd_fast.models import MODELS
from sgfd_fast.study.report import diff_cells

from test_trainer import TinyMF, tiny_dataset

pytest.importorskip("scipy")

SHARED = {"epochs": 1, "train_batch_size": 64, "embedding_size": 8, "stopping_step": 10,
          "device": "cpu", "topk": [5, 10, 20]}


def _spec(tmp, name, model, data, arms, **more):
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "model": model, "data_path": data, "seeds": [1, 2],
                                "baseline": "plain", "config": SHARED, "arms": arms, **more}))
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """``{name: study directory}``: TinyMF on data-a (with a named contrast) and on data-b, VBPR
    with and without SGFD on data-a, and ``partial``: TinyMF on data-a with only its plain arm
    trained."""
    tmp = tmp_path_factory.mktemp("studies")
    write_sgfd(tiny_dataset(seed=0), tmp / "data-a")
    write_sgfd(tiny_dataset(seed=1), tmp / "data-b")
    mf = {"plain": {"learning_rate": 0.05}, "sgfd": {"learning_rate": 0.1},
          "ctrl": {"learning_rate": 0.2}}
    specs = {"mf-a": _spec(tmp, "mf-a", "TinyMF", "data-a", mf,
                           contrasts={"distillation": ["sgfd", "ctrl"]}),
             "mf-b": _spec(tmp, "mf-b", "TinyMF", "data-b", mf),
             "vbpr-a": _spec(tmp, "vbpr-a", "VBPR", "data-a",
                             {"plain": {"sgfd": False}, "sgfd": {}})}
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODELS, "TinyMF", TinyMF)
        for name, spec in specs.items():
            out[name] = tmp / f"study-{name}"
            assert study.main([str(spec), "--out", str(out[name])]) == 0
        out["partial"] = tmp / "study-partial"
        assert study.main([str(specs["mf-a"]), "--out", str(out["partial"]), "--arms",
                           "plain"]) == 0
    return out


def _summary(capsys, *args):
    rc = study.main(["--summary", *map(str, args)])
    return rc, capsys.readouterr()


def test_each_row_repeats_its_studys_report(studies, tmp_path, capsys):
    out = tmp_path / "sum"
    rc, cap = _summary(capsys, studies["mf-b"], studies["vbpr-a"], studies["mf-a"],
                       "--out", out)
    assert rc == 0, cap.err
    table = json.loads((out / "summary.json").read_text())
    assert (table["contrast"], table["metric"]) == ("sgfd-plain", "test/recall@20")
    # sorted by dataset, then backbone
    assert [(r["study"], r["model"]) for r in table["rows"]] == \
        [("mf-a", "TinyMF"), ("vbpr-a", "VBPR"), ("mf-b", "TinyMF")]
    md = (out / "summary.md").read_text()
    for row in table["rows"]:
        report = json.loads((studies[row["study"]] / "study.json").read_text())
        theirs = report["arms"]["sgfd"]["vs_baseline"]["test/recall@20"]
        for k in ("seeds", "diffs", "n", "mean", "std", "ci95", "wilcoxon_p", "min_p"):
            assert row[k] == theirs[k], (row["study"], k)
        assert row["n"] == 2 and row["ci95"][0] < row["mean"] < row["ci95"][1]
        assert row["arm_mean"] == report["arms"]["sgfd"]["metrics"]["test/recall@20"]["mean"]
        assert (row["arm"], row["reference"]) == ("sgfd", "plain")
        # the table prints the cell the study's own study.md prints
        cell, p = diff_cells(theirs)
        assert f"| {cell} | {p} |" in (studies[row["study"]] / "study.md").read_text()
        assert f"| {row['model']} | {row['dataset']} | {row['study']} | sgfd − plain | {cell} | " \
               f"{p} |" in md
    assert str(out / "summary.md") in cap.out


def test_the_forest_plot(studies, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from sgfd_fast import plot

    out = tmp_path / "sum"
    assert _summary(capsys, studies["mf-a"], studies["vbpr-a"], "--out", out)[0] == 0
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = {}
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.__setitem__(path.name, fig))
    assert _summary(capsys, studies["mf-a"], studies["vbpr-a"], "--out", out)[0] == 0
    (ax,) = figures["forest.png"].axes
    rows = json.loads((out / "summary.json").read_text())["rows"]
    # top to bottom in the table's order; each interval drawn where the table says
    assert [t.get_text() for t in reversed(ax.get_yticklabels())] == \
        [f"{r['model']} · data-a" for r in rows]
    bars = [line.get_xdata() for line in ax.lines if len(line.get_xdata()) == 2
            and line.get_linestyle() == "-"]
    assert sorted(map(list, bars)) == sorted(r["ci95"] for r in rows)


def test_a_named_contrast_and_another_metric(studies, tmp_path, capsys):
    out = tmp_path / "sum"
    rc, cap = _summary(capsys, studies["mf-a"], "--contrast", "distillation", "--metric",
                       "ndcg@20", "--out", out)
    assert rc == 0, cap.err
    (row,) = json.loads((out / "summary.json").read_text())["rows"]
    theirs = json.loads((studies["mf-a"] / "study.json").read_text())["contrasts"]["distillation"]
    assert (row["arm"], row["reference"]) == ("sgfd", "ctrl")
    assert {k: row[k] for k in ("diffs", "mean", "ci95", "wilcoxon_p")} == \
        {k: theirs["test/ndcg@20"][k] for k in ("diffs", "mean", "ci95", "wilcoxon_p")}
    rc, cap = _summary(capsys, studies["mf-a"], "--contrast", "ctrl-plain", "--metric",
                       "valid/recall@20", "--out", out)  # ARM-REFERENCE of any two arms
    (row,) = json.loads((out / "summary.json").read_text())["rows"]
    assert rc == 0 and (row["arm"], row["reference"]) == ("ctrl", "plain")
    theirs = json.loads((studies["mf-a"] / "study.json").read_text())
    assert row["diffs"] == theirs["arms"]["ctrl"]["vs_baseline"]["valid/recall@20"]["diffs"]


def _refusals(studies, tmp_path):
    a, b, v = studies["mf-a"], studies["mf-b"], studies["vbpr-a"]
    copy = tmp_path / "copy-of-mf-a"
    shutil.copytree(a, copy)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "study.json").write_text("[]")
    return [
        ([], "--summary needs study directories"),
        ([tmp_path / "none"], "is not a directory (it does not exist)"),
        ([a / "plain" / "seed-1"], "holds no study.json, so it is not a finished study"),
        ([damaged], "study.json is not a study report"),
        ([a, v, "--contrast", "distillation"],
         "study vbpr-a (" + str(v) + ") has no contrast 'distillation'"),
        ([a, "--contrast", "sgfd-nope"], "has no contrast 'sgfd-nope': no arm 'nope'"),
        ([a, b, "--metric", "recall@50"], "does not record test/recall@50"),
        ([a, "--metric", ""], "--metric is empty"),
        ([a, b, copy], f"{a} and {copy} are both studies of TinyMF on "),
        ([studies["partial"]], "its report has no finished run of arm 'sgfd' for seeds 1, 2"),
        ([a, "--out", a / "summary"], f"lies in the study directory {a}"),
        # a study not summarised here is no place for the summary either
        ([a, "--out", v / "summary"], f"lies in the study directory {v}"),
        ([a, "--out", v], f"lies in the study directory {v}"),
        ([a, f"{a}/"], f"{a} is given twice; give each study once"),
        ([a, "embedding_size=8"], "so embedding_size=8 cannot be given with it"),
        ([a, "--out", ""], "--out is empty"),
        ([a, "--report"], "--summary reads finished studies and trains nothing, so --report"),
    ]


def test_refusals_are_one_line_and_write_nothing(studies, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in studies["mf-a"].rglob("*")}
    v_before = sorted(studies["vbpr-a"].iterdir())
    for args, message in _refusals(studies, tmp_path):
        out = tmp_path / "never"
        given_out = "--out" in map(str, args)
        rc, cap = _summary(capsys, *args, *([] if given_out else ["--out", out]))
        assert rc == 2, (args, cap.err)
        assert cap.err.startswith("error: ") and message in cap.err, (args, cap.err)
        assert cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
        assert not out.exists() and not (studies["mf-a"] / "summary").exists()
    assert {p: p.stat().st_mtime_ns for p in studies["mf-a"].rglob("*")} == before
    assert sorted(studies["vbpr-a"].iterdir()) == v_before


def test_summary_options_belong_to_summary(studies, capsys):
    assert study.main(["office-bm3", "--metric", "ndcg@20"]) == 2
    assert "--contrast and --metric choose what --summary shows" in capsys.readouterr().err
    assert study.main(["office-bm3", "--summary", str(studies["mf-a"])]) == 2
    assert "so a spec cannot be given with it" in capsys.readouterr().err
