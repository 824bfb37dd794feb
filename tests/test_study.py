"""python -m sgfd_fast.study: the spec checks, skipping and resuming runs, the statistics against
hand computations, the report and the plots. A tiny matrix factorisation (test_trainer.TinyMF)
keeps it fast."""

import json
import math
import re

import pytest

from sgfd_fast import data, plot, study, training
from sgfd_fast.errors import ConfigError, RunDirectoryError
from sgfd_fast.study.report import diff_cells, fmt

from test_trainer import TinyMF, tiny_dataset

SHARED = {"epochs": 3, "train_batch_size": 32, "embedding_size": 8, "learning_rate": 0.05,
          "stopping_step": 10, "device": "cpu", "topk": [5, 10, 20]}


def write_spec(tmp_path, **changes):
    spec = {"name": "tiny", "model": "TinyMF", "seeds": [1, 2], "baseline": "base",
            "config": SHARED,
            "arms": {"base": {}, "fast": {"learning_rate": 0.1},
                     "grid": {"hyper_parameters": ["learning_rate"],
                              "learning_rate": [0.05, 0.1]}}}
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def run(tmp_path, name, **kw):
    spec = study.load_spec(write_spec(tmp_path), in_memory=True)
    return study.run_study(spec, tmp_path / name, dataset=tiny_dataset(), progress=False, **kw)


def per_run_results(out):
    return {str(f.relative_to(out)): json.loads(f.read_text())["test"]
            for f in sorted(out.glob("*/seed-*/results.json"))}


def test_rerun_skips_finished_runs_and_resumes_the_interrupted_one(tmp_path, tiny_model,
                                                                   monkeypatch):
    full = run(tmp_path, "full")
    assert full["runs"]["finished"] == 6 and not full["runs"]["pending"]
    # 200 pairs / 32 = 7 batches x 3 epochs = 21 calls per run: stop inside the second run
    monkeypatch.setattr(TinyMF, "calls", 0)
    monkeypatch.setattr(TinyMF, "interrupt_at", 21 + 10)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut")
    out = tmp_path / "cut"
    assert (out / "base/seed-1/results.json").exists()
    assert (out / "fast/seed-1/last.pt").exists()
    assert not (out / "fast/seed-1/results.json").exists()

    calls = {"train": [], "resume": []}
    real_train, real_resume = training.train, training.resume

    def spy_train(model, cfg, run_dir, **kw):
        calls["train"].append(run_dir.relative_to(out).as_posix())
        return real_train(model, cfg, run_dir=run_dir, **kw)

    def spy_resume(run_dir, overrides, **kw):
        calls["resume"].append(run_dir.relative_to(out).as_posix())
        return real_resume(run_dir, overrides, **kw)

    monkeypatch.setattr(training, "train", spy_train)
    monkeypatch.setattr(training, "resume", spy_resume)
    monkeypatch.setattr(TinyMF, "interrupt_at", None)
    again = run(tmp_path, "cut")
    assert calls["resume"] == ["fast/seed-1"]
    assert calls["train"] == ["grid/seed-1", "base/seed-2", "fast/seed-2", "grid/seed-2"]
    assert per_run_results(out) == per_run_results(tmp_path / "full")  # resume is exact
    for arm in full["arms"]:
        assert again["arms"][arm]["metrics"] == full["arms"][arm]["metrics"]

    calls["train"].clear()
    run(tmp_path, "cut")  # everything finished: nothing trains
    assert calls == {"train": [], "resume": ["fast/seed-1"]}


def test_a_changed_arm_is_not_silently_reused(tmp_path, tiny_model):
    run(tmp_path, "s")
    spec = study.load_spec(write_spec(tmp_path, arms={"base": {"learning_rate": 0.2}}),
                           in_memory=True)
    with pytest.raises(ConfigError, match=r"base/seed-1 was trained with another configuration "
                                          r"\(learning_rate: 0\.05 there, 0\.2 now\)"):
        study.run_study(spec, tmp_path / "s", dataset=tiny_dataset(), progress=False)


def test_raised_epochs_continue_the_finished_runs(tmp_path, tiny_model):
    run(tmp_path, "s")
    spec = study.load_spec(write_spec(tmp_path, config={**SHARED, "epochs": 5}), in_memory=True)
    assert study.run_study(spec, tmp_path / "s", report_only=True)["runs"]["finished"] == 0
    again = study.run_study(spec, tmp_path / "s", dataset=tiny_dataset(), progress=False)
    assert again["runs"]["finished"] == 6
    for f in (tmp_path / "s").glob("*/seed-*/results.json"):
        res = json.loads(f.read_text())
        assert res["config"]["epochs"] == 5 and res["epochs_trained"] == 5, f


def test_out_must_be_new_empty_or_the_studys_own(tmp_path, tiny_model, capsys):
    spec = write_spec(tmp_path, dataset="office")
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for d in ("arm/base", "seed/base/seed-1"):  # foreign content one and two levels down
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "notes.txt").write_text("mine")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "study.md").write_text("my own notes")  # no study.json beside it
    for out, message in [("file", "is a file"), ("file/sub", "cannot create the study directory"),
                         ("other", "holds notes.txt, which no study wrote"),
                         ("arm", "holds base, which no study wrote"),
                         ("seed", "base/seed-1 holds notes.txt but no run.json"),
                         ("report", "holds study.md, which no study wrote")]:
        assert study.main([str(spec), "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    for f in ("other/notes.txt", "arm/base/notes.txt", "seed/base/seed-1/notes.txt",
              "report/study.md"):
        assert (tmp_path / f).read_text() in ("mine", "my own notes"), f
    assert not (tmp_path / "seed/base/seed-1/run.json").exists()
    assert study.main([str(spec), "--out", str(tmp_path / "none"), "--report"]) == 2
    assert "--report: " in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert study.main([str(spec), "--out", str(tmp_path / "file"), "--report"]) == 2
    err = capsys.readouterr().err  # the study directory is asked for, not a new one
    assert "is not a directory; give the --out the study ran in" in err, err
    run(tmp_path, "s")  # its own directory, with arms and report files, is accepted again
    assert run(tmp_path, "s")["runs"]["finished"] == 6


def test_lower_epochs_is_refused_and_keeps_the_report(tmp_path, tiny_model):
    run(tmp_path, "s")
    before = (tmp_path / "s/study.md").read_text()
    spec = study.load_spec(write_spec(tmp_path, config={**SHARED, "epochs": 2}), in_memory=True)
    for kw in ({"report_only": True}, {}):
        with pytest.raises(ConfigError, match=r"base/seed-1 was trained with epochs=3, the spec "
                                              r"now says 2; a study can keep or raise epochs"):
            study.run_study(spec, tmp_path / "s", dataset=tiny_dataset(), progress=False, **kw)
    assert (tmp_path / "s/study.md").read_text() == before


def test_a_failed_start_leaves_no_directory(tmp_path, tiny_model, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "s"
    spec = write_spec(tmp_path, dataset="office")
    assert study.main([str(spec), "--out", str(out), "--device", "cuda"]) == 2
    assert "device=cuda" in capsys.readouterr().err and not out.exists()
    spec = write_spec(tmp_path, data_path="nowhere")
    assert study.main([str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data_path 'nowhere' is not a directory" in err and not out.exists(), err
    # a failure inside the first run (here: the dataset) removes the directory it made
    monkeypatch.setattr(data, "load_data", lambda *a, **k: (_ for _ in ()).throw(
        ConfigError("no such data")))
    assert study.main([str(write_spec(tmp_path, dataset="office")), "--out", str(out)]) == 2
    assert "no such data" in capsys.readouterr().err and not out.exists()


def test_damaged_results_are_one_clear_error(tmp_path, tiny_model, capsys):
    run(tmp_path, "s")
    (tmp_path / "s/fast/seed-2/results.json").write_text("[]")
    with pytest.raises(RunDirectoryError, match=r"fast/seed-2/results.json holds a JSON list, "
                                                r"not an object"):
        run(tmp_path, "s")
    (tmp_path / "s/fast/seed-2/results.json").unlink()
    (tmp_path / "s/base/seed-1/metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n')
    with pytest.raises(RunDirectoryError, match=r"base/seed-1/metrics.jsonl, line 2: "):
        run(tmp_path, "s")


def test_shards_split_the_runs(tmp_path, tiny_model):
    first = run(tmp_path, "s", shard=(1, 2))
    assert first["runs"]["finished"] == 3
    assert first["runs"]["pending"] == ["fast/seed-1", "base/seed-2", "grid/seed-2"]
    assert run(tmp_path, "s", shard=(2, 2))["runs"]["finished"] == 6


def test_arms_train_only_those_arms_and_shards_split_them(tmp_path, tiny_model, capsys):
    first = run(tmp_path, "s", arms=["base", "grid"], shard=(2, 2))
    # of base/seed-1, grid/seed-1, base/seed-2, grid/seed-2 shard 2/2 trains the grid runs
    assert first["runs"]["finished"] == 2
    assert first["runs"]["pending"] == ["base/seed-1", "fast/seed-1", "base/seed-2",
                                        "fast/seed-2"]
    assert run(tmp_path, "s", arms=["fast"])["runs"]["finished"] == 4
    out = tmp_path / "x"
    capsys.readouterr()  # the studies' size lines
    assert study.main(["office-grcn", "--out", str(out), "--arms", "plain,sgfd_contrl"]) == 2
    assert capsys.readouterr().err == ("error: --arms: study office-grcn has no arm "
                                       "'sgfd_contrl' (did you mean 'sgfd_control'?); its arms: "
                                       "plain, sgfd, sgfd_control\n")
    for empty in ("", " ", ","):
        assert study.main(["office-grcn", "--out", str(out), "--arms", empty]) == 2
        assert capsys.readouterr().err == ("error: --arms is empty; give arm names, e.g. "
                                           "--arms plain,sgfd\n")
    assert not out.exists()


T975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables)


def test_statistics_match_hand_computation(tmp_path, tiny_model):
    """A 3-seed table with known per-seed values: base 0.10, 0.12, 0.11; better = base + 0.01,
    0.03, 0.02; worse = base - 0.01 on every seed."""
    spec = study.load_spec(write_spec(tmp_path, seeds=[1, 2, 3], arms={
        "base": {}, "better": {"learning_rate": 0.1}, "worse": {"learning_rate": 0.2}},
        contrasts={"better_vs_worse": ["better", "worse"]}), in_memory=True)
    values = {"base": [0.10, 0.12, 0.11], "better": [0.11, 0.15, 0.13],
              "worse": [0.09, 0.11, 0.10]}
    out = tmp_path / "s"
    for arm, vs in values.items():
        for seed, v in zip([1, 2, 3], vs):
            d = out / arm / f"seed-{seed}"
            d.mkdir(parents=True)
            m = {"recall@20": v, "ndcg@20": v / 2}
            (d / "results.json").write_text(json.dumps({
                "model": "TinyMF", "dataset": "tiny", "sgfd": False, "protocol": "standard",
                "valid_metric": "recall@20",
                "valid": m, "test": m, "best_epoch": 2, "epochs_trained": 5 + seed,
                "early_stopped": seed != 3, "checkpoint": "best.pt",
                "config": {"epochs": SHARED["epochs"]}, "data": None}))
    s = study.run_study(spec, out, report_only=True, progress=False)
    base = s["arms"]["base"]["metrics"]["test/recall@20"]
    assert base["n"] == 3 and base["mean"] == pytest.approx(0.11)
    assert base["std"] == pytest.approx(0.01)                      # sqrt((1e-4 + 1e-4 + 0) / 2)
    d = s["arms"]["better"]["vs_baseline"]["test/recall@20"]
    assert d["diffs"] == pytest.approx([0.01, 0.03, 0.02])
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    half = T975_2 * 0.01 / math.sqrt(3)                             # 0.024841
    assert d["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    assert d["wilcoxon_p"] == pytest.approx(0.25)  # exact: 2 * P(all 3 signs +) = 2 / 8
    assert d["min_p"] == pytest.approx(0.25)
    w = s["arms"]["worse"]["vs_baseline"]["test/ndcg@20"]
    assert w["mean"] == pytest.approx(-0.005) and w["std"] == pytest.approx(0.0, abs=1e-12)
    assert w["ci95"] == pytest.approx([-0.005, -0.005])
    assert s["arms"]["base"]["epochs_trained"]["mean"] == pytest.approx(7.0)
    assert s["arms"]["base"]["at_cap"] == 1 and s["runs"]["at_epoch_cap"] == 3
    md = (out / "study.md").read_text()
    row = "| better | 3 | 0.1300 ± 0.0200 | +0.0200 [-0.0048, 0.0448] (n=3) | 0.250 (min 0.250) |"
    assert row in md
    assert "3 of 9 finished runs (33 %) stopped at the epoch cap" in md
    assert json.loads((out / "study.json").read_text())["arms"]["better"]["vs_baseline"]
    c = s["contrasts"]["better_vs_worse"]                           # better - worse: 0.02, 0.04, 0.03
    assert (c["arm"], c["reference"]) == ("better", "worse")
    assert c["test/recall@20"]["diffs"] == pytest.approx([0.02, 0.04, 0.03])
    assert c["test/recall@20"]["ci95"] == pytest.approx([0.03 - half, 0.03 + half])
    assert ("| better_vs_worse | better − worse | test/recall@20 | +0.0300 [0.0052, 0.0548] (n=3) "
            "| 0.250 (min 0.250) |") in md


def test_paired_difference_edge_cases():
    d = study.paired_difference([0.1, 0.2], [0.1, 0.2])
    assert d["mean"] == 0 and d["wilcoxon_p"] is None     # no non-zero difference to rank
    one = study.paired_difference([0.2], [0.1])
    assert one["std"] is None and one["ci95"] is None and one["min_p"] == 1.0


@pytest.mark.parametrize("changes,message", [
    ({"arms": {"base": {}, "sgfd": {"ce_wieght": 1}}},
     r"arm 'sgfd' sets 'ce_wieght', which is not a config key; did you mean 'ce_weight'"),
    ({"baseline": None}, r"no baseline; name the arm the others are compared with"),
    ({"baseline": "plain"}, r"baseline 'plain' is not an arm \(arms: base, fast, grid\)"),
    ({"dataset": "ofice"}, r"dataset 'ofice' is not a built-in dataset"),
    ({"model": "BM4"}, r"model 'BM4' is not one of .*did you mean 'BM3'"),
    ({"arms": {"base": {"ce_weight": -1}}}, r"arm 'base': ce_weight=-1.0 must not be negative"),
    ({"arms": {"base": {"seed": 3}}}, r"arm 'base' sets seed; a study sets it from seeds"),
    ({"seeds": []}, r"seeds must be a non-empty list"),
    ({"metrics": ["recall@30"]}, r"metric 'recall@30' must look like recall@20 with k in topk"),
    ({"arm": {}}, r"unknown key 'arm'; did you mean 'arms'"),
    ({"contrasts": {"d": ["fast", "nope"]}}, r"contrast 'd' names 'nope', which is not an arm"),
    ({"contrasts": {"d": "fast"}}, r"contrast 'd' must be \[arm, reference\]"),
    ({"contrasts": {"d": ["fast", "fast"]}}, r"contrast 'd' compares 'fast' with itself"),
])
def test_spec_errors_are_one_clear_message_and_exit_2(tmp_path, tiny_model, capsys, changes,
                                                      message):
    changes = {"dataset": "office", **changes}
    assert study.main([str(write_spec(tmp_path, **changes))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study spec ") and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_spec_not_utf8_is_one_line(tmp_path, capsys):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe")
    assert study.main([str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: study spec {f} is not UTF-8 text")


def test_spec_invalid_yaml_is_one_line_naming_file_line_column(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("model: BM3\nseeds: [1, 2\n")
    assert study.main([str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "<unicode string>" not in err, err
    assert err.startswith(f"error: study spec {f} is not valid YAML: line 3, column 1: "), err


def test_bad_backend_variable_creates_nothing(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("SGFD_FAST_BACKEND", "bogus")
    out = tmp_path / "study"
    assert study.main([str(write_spec(tmp_path, dataset="office")), "--out", str(out)]) == 2
    assert "SGFD_FAST_BACKEND='bogus'" in capsys.readouterr().err
    assert not out.exists()


def test_help_and_empty_out(tmp_path, capsys):
    assert "paired differences with 95% CIs" in study.build_parser().format_help()
    assert study.main(["office-bm3", "--out", ""]) == 2
    assert capsys.readouterr().err == "error: --out is empty; give a path\n"


def test_shipped_specs_are_valid_and_listed(capsys):
    shipped = study.shipped_specs()
    assert {"office-bm3", "office-bm3-text", "office-grcn", "office-maml"} <= set(shipped)
    for path in shipped.values():
        spec = study.load_spec(path)
        assert len(spec.seeds) >= 3
        # a report names a shipped spec, not where this machine installed it
        assert study.summarise(spec, [])["spec"] == f"{path.stem} (shipped)"
    assert study.find_spec("office-bm3") == shipped["office-bm3"]
    assert study.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "office-bm3 " in out
    for line in out.splitlines():  # the description says the model and dataset once
        assert len(re.findall(r" on (office|scientific)\b", line)) == 1, line
    assert study.main(["office-bm4"]) == 2
    assert "did you mean 'office-bm3'" in capsys.readouterr().err


def test_plots(tmp_path, tiny_model):
    pytest.importorskip("matplotlib")
    run(tmp_path, "s")
    assert (tmp_path / "s/bars.png").stat().st_size > 0
    assert (tmp_path / "s/curves.png").stat().st_size > 0
    assert plot.main([str(tmp_path / "s/base/seed-1")]) == 0
    assert (tmp_path / "s/base/seed-1/curves.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "grid.png"
    assert plot.main([str(tmp_path / "s/grid/seed-1"), str(tmp_path / "s/base/seed-2"),
                      "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert plot.main([str(tmp_path / "nothing")]) == 2


def test_plot_errors_and_out_choices(tmp_path, tiny_model, capsys):
    pytest.importorskip("matplotlib")
    run(tmp_path, "s")
    one = str(tmp_path / "s/base/seed-1")
    (tmp_path / "figs").mkdir()
    assert plot.main([one, "--out", str(tmp_path / "figs")]) == 0  # a directory: DIR/curves.png
    assert (tmp_path / "figs/curves.png").read_bytes()[:4] == b"\x89PNG"
    assert plot.main([one, "--metric", "ndcg@20", "--out", str(tmp_path / "n.svg")]) == 0
    assert (tmp_path / "n.svg").read_text().lstrip().startswith("<?xml")
    capsys.readouterr()
    for args, message in [
            (["--out", ""], "--out is empty; give a path"),
            (["--out", str(tmp_path / "c.txt")], "give a .png, .pdf or .svg file"),
            (["--out", str(tmp_path / "no/c.png")], f"{tmp_path / 'no'} does not exist"),
            (["--out", one + "/results.json/c.png"], "results.json is not a directory"),
            (["--metric", ""], "--metric is empty; give a validated metric such as ndcg@20"),
            (["--metric", "recal@20"], "no run here validated 'recal@20'; the metrics validated: "
                                       "hit@10, ")]:
        assert plot.main([one, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
        assert err.count("\n") == 1, err
    labels = [label for label, _ in plot._curves([tmp_path / "s/base/seed-1",
                                                  tmp_path / "s/fast/seed-1",
                                                  tmp_path / "s/grid/seed-2"])]
    assert labels == ["base/seed-1", "fast/seed-1", "grid/seed-2/grid-0", "grid/seed-2/grid-1"]
    with open(tmp_path / "s/base/seed-1/metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "valid"\n')
    assert plot.main([one]) == 2
    assert "metrics.jsonl, line 4: " in capsys.readouterr().err


def test_without_matplotlib_the_report_is_still_written(tmp_path, tiny_model, monkeypatch,
                                                        capsys):
    def unavailable():
        raise plot.PlotUnavailable("matplotlib is not installed")

    monkeypatch.setattr(plot, "_pyplot", unavailable)
    run(tmp_path, "s")
    assert (tmp_path / "s/study.md").exists() and not (tmp_path / "s/bars.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_matplotlib_is_imported_only_to_draw():
    import subprocess
    import sys

    code = ("import sys, sgfd_fast.study, sgfd_fast.plot; "
            "assert 'matplotlib' not in sys.modules and 'scipy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- a smaller study from the command line ---------------------------------------------------

@pytest.fixture
def data_spec(tmp_path):
    from sgfd_fast.data import write_sgfd

    write_sgfd(tiny_dataset(), tmp_path / "data")
    return write_spec(tmp_path, data_path="data")


def test_spec_labels_follow_the_data_rule(tmp_path, tiny_model, monkeypatch):
    """A relative labels file is looked up at the spec, then in data_path, as train's --labels
    is in the current directory, then the dataset's (prepare writes DIR/labels.tsv); '~' is
    expanded in data_path and labels."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.tsv").write_text("itemID\tlabel\n0\t1\n")
    spec = study.load_spec(write_spec(tmp_path, data_path="data", format="mmrec",
                                      labels="labels.tsv"))
    assert spec.data["labels"] == str(tmp_path / "data" / "labels.tsv")
    (tmp_path / "labels.tsv").write_text("itemID\tlabel\n0\t2\n")  # beside the spec: first
    spec = study.load_spec(write_spec(tmp_path, data_path="data", labels="labels.tsv"))
    assert spec.data["labels"] == str(tmp_path / "labels.tsv")
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = study.load_spec(write_spec(tmp_path, data_path="~/data", labels="~/data/labels.tsv"))
    assert (spec.data["path"], spec.data["labels"]) == \
        (str(tmp_path / "data"), str(tmp_path / "data" / "labels.tsv"))
    with pytest.raises(ConfigError, match="labels 'nope.tsv' is not a file .*then at data_path"):
        study.load_spec(write_spec(tmp_path, data_path="data", labels="nope.tsv"))


def test_a_report_names_runs_that_finished_under_other_epochs(tmp_path, tiny_model, data_spec,
                                                              capsys):
    """--report without the --epochs the runs were made with: they are pending under the
    spec's epochs (a study run continues them), and the report and the command say so."""
    out = tmp_path / "short"
    assert study.main([str(data_spec), "--out", str(out), "--epochs", "1", "--seeds", "1",
                       "--arms", "base"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert study.main([str(data_spec), "--out", str(out), "--report"]) == 0
    printed = capsys.readouterr().out
    assert "0/6 runs finished" in printed
    assert "note: 1 pending run(s) (base/seed-1) finished with epochs=1, not this report's" \
        in printed and "--epochs 1" in printed, printed
    s = json.loads((out / "study.json").read_text())
    assert s["runs"]["finished_with_other_epochs"] == {"base/seed-1": 1}
    assert "finished with epochs=1, not this report's: running the study continues them" in \
        (out / "study.md").read_text()
    # with the options they ran with, nothing is pending of them and no note is written
    assert study.main([str(data_spec), "--out", str(out), "--report", "--epochs", "1",
                       "--seeds", "1"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert "finished with epochs" not in (out / "study.md").read_text()


def test_seeds_epochs_and_overrides_from_the_command_line(tmp_path, tiny_model, data_spec,
                                                          capsys):
    out = tmp_path / "small"
    args = [str(data_spec), "--out", str(out), "embedding_size=4", "--seeds", "2", "--epochs",
            "2", "--arms", "base,grid"]
    assert study.main(args) == 0, capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed-*")) == \
        ["base/seed-2", "grid/seed-2"]
    for run_json in out.glob("*/seed-2/run.json"):
        config = json.loads(run_json.read_text())["config"]
        assert (config["epochs"], config["embedding_size"], config["seed"]) == (2, 4, 2)
    s = json.loads((out / "study.json").read_text())
    assert s["seeds"] == [2] and s["runs"]["total"] == 3 and s["runs"]["finished"] == 2
    assert s["command_line"] == {"spec_seeds": [1, 2],
                                 "config": {"embedding_size": 4, "epochs": 2}}
    md = (out / "study.md").read_text()
    assert ("**Changed from the command line, not the spec's study:** seeds [2] (the spec has "
            "[1, 2]); every arm: embedding_size=4, epochs=2.") in md, md
    # the same options again: nothing to train; the spec's own study cannot reuse these runs
    assert study.main(args) == 0
    assert "2/3 runs finished" in capsys.readouterr().out
    assert study.main([str(data_spec), "--out", str(out), "--report"]) == 2
    assert "trained with another configuration (embedding_size: 4 there, 8 now)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["seed=3"], "the command line sets seed; give the study's seeds with --seeds"),
    (["lerning_rate=0.1"], "the command line sets 'lerning_rate', which is not a config key; "
                           "did you mean 'learning_rate'"),
    (["dataset=scientific"], "the command line sets 'dataset', which is a key of the study spec ("),
    (["model=BM3"], "not a config key; copy the spec, change model there and run the copy"),
    (["--epochs", "2", "epochs=3"], "epochs is given twice on the command line"),
    (["--epochs", "-1"], "epochs=-1"),
    (["--seeds", "1,x"], "--seeds '1,x' must be comma-separated non-negative ints"),
    (["--seeds", "1,1"], "--seeds: seeds must be a non-empty list of distinct"),
    (["learning_rate"], "command-line override 'learning_rate' must look like key=value"),
])
def test_command_line_changes_are_checked_before_anything_trains(tmp_path, tiny_model,
                                                                 data_spec, capsys, args,
                                                                 message):
    out = tmp_path / "never"
    assert study.main([str(data_spec), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("args, key, flags", [
    (["-d", "scientific"], "dataset", "-d/--dataset"),
    (["--dataset", "scientific"], "dataset", "-d/--dataset"),
    (["--dataset=scientific"], "dataset", "-d/--dataset"),
    (["-m", "GRCN"], "model", "-m/--model"),
    (["--model", "GRCN"], "model", "-m/--model"),
    (["--model=GRCN"], "model", "-m/--model"),
    (["--data-path=data"], "data_path", "--data-path"),
])
def test_train_options_are_refused_with_the_spec_key_to_change(tmp_path, tiny_model, data_spec,
                                                                capsys, args, key, flags):
    """train's -d/-m (users try them): not argparse's 'unrecognized arguments' but where a
    study's model and dataset are set, with the words of 'study SPEC dataset=X'."""
    out = tmp_path / "never"
    assert study.main([str(data_spec), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {flags} is an option of python -m sgfd_fast.train; a study's {key} "
                   f"is a key of its spec ({data_spec}): copy the spec, change {key} there and "
                   f"run the copy (python -m sgfd_fast.study my-spec.yaml)\n"), err
    assert not out.exists()
    # before the spec, with --list, or with no spec at all: the same advice, no path to name
    for argv in ([*args, str(data_spec)], ["--list", *args], args):
        assert study.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flags} is an option of python -m sgfd_fast.train; ")
        assert f"change {key} there" in err and err.count("\n") == 1, err


def test_help_describes_the_spec_format():
    text = study.build_parser().format_help()
    for line in ("spec format (YAML", "  model: BM3", "  # data_path: data/baby",
                 "  seeds: [1, 2, 3, 4, 5]", "  baseline: plain", "  arms:",
                 "    sgfd_control: {ce_weight: 0, kd_weight: 0}", "  contrasts:",
                 "--seeds 1,2 --epochs 5", "key=value"):
        assert line in text, line


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path, tiny_model, capsys):
    spec = study.load_spec(write_spec(tmp_path, seeds=[1], arms={"base": {}}), in_memory=True)
    study.run_study(spec, tmp_path / "s", dataset=tiny_dataset())  # capsys: not a terminal
    captured = capsys.readouterr()
    assert [x.split(":")[0] for x in captured.err.splitlines() if x.startswith("epoch ")] == \
        ["epoch 1", "epoch 2", "epoch 3"], captured.err
    assert "run directory " + str(tmp_path / "s/base/seed-1") in captured.err
    assert "base seed 1: test recall@20" in captured.out
    spec = study.load_spec(write_spec(tmp_path, seeds=[2], arms={"base": {}}), in_memory=True)
    for progress in (True, False):  # the bar instead, or nothing
        study.run_study(spec, tmp_path / f"t{progress}", dataset=tiny_dataset(),
                        progress=progress)
        assert "epoch 1: " not in capsys.readouterr().err


# ---- the Wilcoxon floor and the bars ---------------------------------------------------------

def test_min_p_counts_only_the_differences_the_test_ranks():
    pytest.importorskip("scipy")
    base = [0.10, 0.11, 0.12, 0.13, 0.14, 0.15]
    diffs = [0, .15, .08, .07, 0, .10]
    d = study.paired_difference([b + x for b, x in zip(base, diffs)], base)
    assert d["n"] == 6 and d["n_nonzero"] == 4
    assert d["min_p"] == pytest.approx(0.125)          # 2 / 2^4, not 2 / 2^6 = 0.03125
    assert d["wilcoxon_p"] == pytest.approx(0.125)     # all four of one sign: the floor itself
    assert diff_cells(d)[1] == "0.125 (min 0.125)"
    assert study.paired_difference([0.1, 0.2], [0.1, 0.2])["min_p"] is None


def _hand_made_study(tmp_path, values):
    """A study directory whose runs finished with the given test recall@20 per arm and seed."""
    spec = study.load_spec(write_spec(tmp_path, seeds=[1, 2], arms={a: {} for a in values}),
                           in_memory=True)
    out = tmp_path / "s"
    for arm, vs in values.items():
        for seed, v in zip([1, 2], vs):
            d = out / arm / f"seed-{seed}"
            d.mkdir(parents=True)
            m = {"recall@20": v, "ndcg@20": v / 2}
            (d / "results.json").write_text(json.dumps({
                "valid": m, "test": m, "best_epoch": 2, "epochs_trained": 3,
                "early_stopped": True, "checkpoint": "best.pt",
                "config": {"epochs": SHARED["epochs"]}, "data": None, "model": "TinyMF",
                "dataset": "tiny", "sgfd": False, "protocol": "standard",
                "valid_metric": "recall@20"}))
    out.mkdir(exist_ok=True)
    return spec, out


def _drawn(monkeypatch):
    """The figures study_plots saves, by file name."""
    figures = {}
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.__setitem__(path.name, fig))
    return figures


def test_bars_start_at_zero_and_an_arm_without_runs_has_no_bar(tmp_path, tiny_model,
                                                                monkeypatch):
    pytest.importorskip("matplotlib")
    spec, out = _hand_made_study(tmp_path, {"base": [0.100, 0.101], "fast": [0.103, 0.104],
                                            "grid": []})
    figures = _drawn(monkeypatch)
    study.run_study(spec, out, report_only=True)
    ax = figures["bars.png"].axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 0.104
    assert len(ax.patches) == 2  # base and fast; grid has no finished run, so no bar at 0
    assert "no finished run" in [t.get_text() for t in ax.texts]


def test_an_empty_report_draws_no_bars(tmp_path, tiny_model, monkeypatch):
    pytest.importorskip("matplotlib")
    spec, out = _hand_made_study(tmp_path, {"base": [], "fast": []})
    figures = _drawn(monkeypatch)
    assert study.run_study(spec, out, report_only=True)["runs"]["finished"] == 0
    assert set(figures) == {"bars.png", "curves.png"}
    for fig in figures.values():
        (ax,) = fig.axes
        assert not ax.patches and not ax.lines
        assert [t.get_text() for t in ax.texts] == ["tiny: no finished runs yet (0 of 4)"]


def test_a_data_warning_is_one_line(tmp_path, tiny_model, data_spec, capsys):
    with open(tmp_path / "data/train.csv", "a") as fh:
        fh.write("0,0,i0\n0,0,i0\n")
    out = tmp_path / "s"
    assert study.main([str(data_spec), "--out", str(out), "--seeds", "1", "--arms", "base",
                       "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("duplicate interactions") == 1 and "DataWarning" not in err, err
    assert next(x for x in err.splitlines() if "duplicate" in x).startswith("warning: ")


def test_two_arms_of_one_name_are_refused(tmp_path, tiny_model):  # noqa: F811
    """Issue 22: PyYAML keeps the second of two same-named arms silently."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: tiny\nmodel: TinyMF\nseeds: [1, 2]\nbaseline: base\narms:\n"
                    "  base: {}\n  fast: {learning_rate: 0.1}\n  fast: {learning_rate: 0.2}\n")
    with pytest.raises(ConfigError, match=r"study spec .*spec.yaml, line 8, column 3: 'fast' is "
                                          r"given twice \(first on line 7\)"):
        study.load_spec(path, in_memory=True)


def test_a_large_study_says_its_size_first(tmp_path, tiny_model, capsys):  # noqa: F811
    """Issue 22: 2,000 seeds are planned without resolving a config per run, and the size is
    printed before anything runs."""
    spec = study.load_spec(write_spec(tmp_path, seeds=list(range(2_000))), in_memory=True)
    (tmp_path / "s").mkdir()
    summary = study.run_study(spec, tmp_path / "s", dataset=tiny_dataset(), report_only=True,
                              progress=False)
    assert "study tiny: 3 arms × 2,000 seeds = 6,000 runs; 0 to train here" in \
        capsys.readouterr().err
    assert summary["runs"]["total"] == 6_000
    with pytest.raises(ConfigError, match="seeds must be a non-empty list of distinct"):
        study.load_spec(write_spec(tmp_path, seeds=[1, 2**63]), in_memory=True)


# --- review of issue 22 -----------------------------------------------------------------------

def test_a_metric_or_an_arm_listed_twice_is_refused(tmp_path, tiny_model, data_spec,  # noqa: F811
                                                    capsys):
    with pytest.raises(ConfigError, match=r"study spec .*spec.yaml: metrics lists 'recall@5' "
                                          r"twice; list each metric once"):
        (tmp_path / "m").mkdir()
        study.load_spec(write_spec(tmp_path / "m", metrics=["recall@5", "recall@5"]),
                        in_memory=True)
    out = tmp_path / "never"
    assert study.main([str(data_spec), "--out", str(out), "--arms", "base,base"]) == 2
    assert "error: --arms base,base lists the arm 'base' twice" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu", "device=cuda"], "device is given twice on the command line (--device "
                                         "cpu and device=cuda); give it once"),
    (["--seeds", "99999999999999999999"], "seeds must be a non-empty list of distinct "
                                          "non-negative ints below 2**63"),
    # the command line's grid replaces arm 'grid''s, whose learning_rate list it then leaves
    (["hyper_parameters=[embedding_size]", "embedding_size=[4,8]"],
     "arm 'grid': learning_rate=[0.05, 0.1] lists several values, but learning_rate is not in "
     "hyper_parameters=['embedding_size'] (from the command line)"),
    (["valid_metric=recall@50"], "arm 'base': valid_metric='recall@50' (from the command line) "
                                 "uses k=50, which is not in topk=[5, 10, 20] (from the spec's "
                                 "config)"),
    (["topk=[5]"], "valid_metric='recall@20' (from "),
])
def test_errors_caused_by_the_command_line_name_it(tmp_path, tiny_model, data_spec,  # noqa: F811
                                                   capsys, args, message):
    out = tmp_path / "never"
    assert study.main([str(data_spec), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    if args[0] == "topk=[5]":
        assert "which is not in topk=[5] (from the command line)" in err, err
    assert not out.exists()


def test_a_zero_difference_prints_without_a_minus_sign():
    delta, _ = diff_cells({"mean": -1e-9, "ci95": [-4e-5, 3e-5], "n": 3,
                                  "wilcoxon_p": None, "min_p": None})
    assert delta == "+0.0000 [0.0000, 0.0000] (n=3)"
    assert fmt(-0.0) == "0.0000" and fmt(-0.00012) == "-0.0001"


@pytest.mark.parametrize("edit, match", [
    (lambda r: r.update(model="GRCN"), "reports model 'GRCN', not the spec's 'TinyMF': it is not "
                                       "a result of arm 'fast', seed 2"),
    (lambda r: r["config"].update(learning_rate=0.5), "reports config learning_rate=0.5 (the "
                                                      "arm: "),
    (lambda r: r["test"].update({"recall@20": "NaN"}), "holds NaN, which is not a "
                                                       "JSON number"),
    (lambda r: r.update(best_epoch="dup"), "has the key 'best_epoch' twice"),
])
def test_report_refuses_a_results_json_of_another_arm_or_with_nan(tmp_path, tiny_model, edit,
                                                                   match):
    """Review of issue 22: a GRCN result was compared as the arm's, a NaN metric gave nan rows
    and a study.json that is not JSON; now one error naming the file, and no report."""
    spec, out = _hand_made_study(tmp_path, {"base": [0.10, 0.11], "fast": [0.12, 0.13]})
    path = out / "fast" / "seed-2" / "results.json"
    r = json.loads(path.read_text())
    edit(r)
    text = json.dumps(r).replace('"NaN"', "NaN")
    if r["best_epoch"] == "dup":
        text = text.replace('"best_epoch": "dup"', '"best_epoch": 2, "best_epoch": 1')
    path.write_text(text)
    with pytest.raises(RunDirectoryError, match=re.escape(str(path)) + ".*" + re.escape(match)):
        study.run_study(spec, out, report_only=True, progress=False)
    assert not (out / "study.json").exists()


def test_report_refuses_a_metrics_line_with_nan(tmp_path, tiny_model):
    """Review of issue 22: a NaN in the best epoch's metrics line reached study.json bare (not
    JSON); now refused naming the line, and a report of good runs reads back as strict JSON."""
    from sgfd_fast.records import loads

    spec, out = _hand_made_study(tmp_path, {"base": [0.10, 0.11], "fast": [0.12, 0.13]})
    study.run_study(spec, out, report_only=True, progress=False)
    assert loads((out / "study.json").read_text())["arms"]["fast"]
    path = out / "fast" / "seed-2" / "metrics.jsonl"
    path.write_text('{"epoch": 2, "sgfd": {"grad_share": NaN}}\n')
    with pytest.raises(RunDirectoryError, match=re.escape(f"{path}, line 1: holds NaN")):
        study.run_study(spec, out, report_only=True, progress=False)
