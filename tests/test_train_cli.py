"""``python -m sgfd_fast.train``: help, exit codes and messages, a real BM3 run and its resume."""

import json
import subprocess
import sys

import pytest
import torch

from sgfd_fast.data import write_sgfd
from sgfd_fast.train import main
from test_trainer import tiny_dataset


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sgfd_fast.train", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_sgfd(tiny_dataset(), tmp_path_factory.mktemp("data") / "tiny")


def assert_error(proc_or_rc, err, match):
    rc = proc_or_rc if isinstance(proc_or_rc, int) else proc_or_rc.returncode
    assert rc == 2
    assert err.startswith("error: ") and match in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("item, match", [
    ("dropout=1.5", "dropout=1.5"), ("n_layers=-1", "n_layers=-1"),
    ("seed=100000000000000000000", "seed=100000000000000000000"),
    ("sgfd_loss=foo", "sgfd_loss='foo'"), ("protocol=foo", "protocol='foo'"),
])
def test_bad_value_exits_2_before_the_run_directory(tmp_path, capsys, item, match):
    out = tmp_path / "run"
    assert_error(main(["--out", str(out), item]), capsys.readouterr().err, match)
    assert not out.exists()


def test_help():
    p = cli("--help")
    assert p.returncode == 0
    for text in ("overall.yaml", "key=value", "hyper_parameters", "--resume", "--data-path",
                 "valid_metric", "sgfd_loss", "examples:", "results.json", "modalities"):
        assert text in p.stdout, text


def test_unknown_key_subprocess():
    p = cli("lerning_rate=0.1")
    assert_error(p, p.stderr, "unknown config key 'lerning_rate' in the command line; did you "
                              "mean 'learning_rate'")


@pytest.mark.parametrize("args, match", [
    (["protocol=paper"], "protocol='paper' (from the command line) is not one of standard"),
    (["-m", "BM4"], "unknown model 'BM4'"),
    (["-d", "offcie"], "unknown dataset 'offcie'"),
    (["--format", "mmrec"], "--format and --labels describe a --data-path"),
    (["--data-path", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--resume", "/nonexistent/run"], "is not a run directory"),
    (["--resume", "/x", "-d", "office"], "--resume continues a run as it was configured"),
    (["--out", ""], "--out is empty; give a path"),
    (["--resume", ""], "--resume is empty; give a path"),
    (["--data-path", ""], "--data-path is empty; give a path"),
    (["--resume", "/x", "-m", "BM3"], "so -m cannot be given"),
    (["--resume", "/x", "--format", "mmrec"], "so --format cannot be given"),
    (["--resume", "/x", "--labels", "l.npy"], "so --labels cannot be given"),
    (["--resume", "/x", "-m", "GRCN", "--out", "o"], "so -m, --out cannot be given"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
    (["epochs"], "must look like key=value"),
    pytest.param(["--device", "cuda"], "no CUDA GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is present")),
])
def test_errors_in_process(args, match, capsys):
    rc = main(args)
    assert_error(rc, capsys.readouterr().err, match)


def test_config_file_invalid_yaml_is_one_line_naming_file_line_column(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text("epochs: 3\nn_layers: [1, 2\nsgfd: true\n")
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "<unicode string>" not in err, err
    assert err.startswith(f"error: config file {f} is not valid YAML: line 3, column 5: "
                          f"expected ','"), err


def test_config_file_not_utf8_is_one_line(tmp_path, capsys):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe")
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: config file {f} is not UTF-8 text")


def test_config_file_unknown_key_names_the_file(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text("epochs: 3\nbatch_size: 10\n")
    rc = main(["--config", str(f), "epochs=2"])
    assert_error(rc, capsys.readouterr().err, f"unknown config key 'batch_size' in {f}")


def test_bm3_run_then_resume(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    args = ["--data-path", data_dir, "--format", "sgfd", "--out", out, "epochs=1",
            "train_batch_size=64", "embedding_size=16", "--device", "cpu", "topk=[10,20]"]
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert "test recall@20" in p.stdout and "test ndcg@20" in p.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "BM3" and res["sgfd"] is True and res["dataset"] == "tiny"
    assert res["best_epoch"] == 1 and 0 <= res["test"]["recall@20"] <= 1
    assert res["data"]["path"] == str(data_dir.resolve())
    assert res["world_size"] == 1 and "dist_backend" not in res
    log = (out / "train.log").read_text().splitlines()
    assert "device cpu, 1 process, run directory" in log[0], log[0]
    # the same run directory again is refused; resuming with more epochs continues it
    assert_error(main(list(map(str, args))), capsys.readouterr().err, "already holds a run")
    assert main(["--resume", str(out), "epochs=2"]) == 0
    assert "test recall@20" in capsys.readouterr().out
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert json.loads((out / "results.json").read_text())["epochs_trained"] == 2
    assert f"resuming {out} on device cpu, 1 process" in (out / "train.log").read_text()
    assert_error(main(["--resume", str(out), "sgfd=false"]), capsys.readouterr().err,
                 "sgfd cannot be changed when resuming")


def test_default_out_dir(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--data-path", str(data_dir), "epochs=1", "sgfd=false",
                 "train_batch_size=128", "embedding_size=8", "topk=[10,20]"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("BM3-tiny-") and (run / "results.json").exists()
    assert json.loads((run / "results.json").read_text())["sgfd"] is False


def test_overrides_may_follow_options(tmp_path, capsys):
    # key=value after an option used to be argparse's "unrecognized arguments"
    out = tmp_path / "never"
    rc = main(["--device", "cpu", "dropout=1.5", "--out", str(out), "epochs=1"])
    assert_error(rc, capsys.readouterr().err, "dropout=1.5")
    assert not out.exists()


# --- issue 22 ---------------------------------------------------------------------------------

TINY = ["--device", "cpu", "epochs=1", "train_batch_size=128", "embedding_size=8", "sgfd=false"]


def test_topk_beyond_the_items_is_refused_at_load(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert_error(main(["--data-path", str(data_dir), "--out", str(out), *TINY]),
                 capsys.readouterr().err, "configs/overall.yaml) asks for the top "
                                          "50 items, but dataset 'tiny' has 30 items")
    assert not out.exists()


def test_two_runs_in_one_second_get_two_directories(tmp_path, data_dir, monkeypatch, capsys):
    """The default name is a timestamp of seconds: the second run takes -2, made atomically."""
    import time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-120000")
    for _ in range(2):
        assert main(["--data-path", str(data_dir), *TINY, "topk=[10,20]"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["BM3-tiny-20260101-120000", "BM3-tiny-20260101-120000-2"]
    assert "run directory: runs/BM3-tiny-20260101-120000-2" in capsys.readouterr().out
    from sgfd_fast.training.rundir import RunDirectory

    with RunDirectory.create(tmp_path / "runs" / "x", unique=True) as a, \
            RunDirectory.create(tmp_path / "runs" / "x", unique=True) as b:  # both alive
        assert (a.path.name, b.path.name) == ("x", "x-2")


def test_a_run_that_cannot_fit_is_refused_with_its_estimate(tmp_path, data_dir, capsys):
    """embedding_size far beyond the memory: refused before any allocation, with the figure."""
    out = tmp_path / "run"
    tiny = [x for x in TINY if not x.startswith("embedding_size=")]  # a key is given once
    assert_error(main(["--data-path", str(data_dir), "--out", str(out), *tiny, "topk=[10,20]",
                       "embedding_size=100000000"]), capsys.readouterr().err,
                 "this run needs at least 243.2 GB of CPU memory per grid point (7,600,000,000 "
                 "parameters at least")
    assert not out.exists()


def test_a_grid_that_cannot_fit_the_disk_is_refused_first(tmp_path, data_dir, capsys,
                                                           monkeypatch):
    from sgfd_fast.training import budget

    monkeypatch.setattr(budget, "_free_disk", lambda path: (10**9, tmp_path))
    grid = ["hyper_parameters=[seed,learning_rate,reg_weight]",
            "seed=[" + ",".join(map(str, range(100))) + "]",
            "learning_rate=[" + ",".join(str(0.001 * i) for i in range(1, 101)) + "]",
            "reg_weight=[" + ",".join(str(0.001 * i) for i in range(1, 101)) + "]"]
    out = tmp_path / "run"
    assert_error(main(["--data-path", str(data_dir), "--out", str(out), *TINY, "topk=[10,20]",
                       *grid]), capsys.readouterr().err,
                 "this run writes about 9.7 GB of checkpoints (1,000,000 points (seed: 100 "
                 "values × learning_rate: 100 values × reg_weight: 100 values), last.pt and "
                 "best.pt of 9.7 KB each), but 1.0 GB are free")
    assert not out.exists()


def test_the_run_logs_its_size(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main(["--data-path", str(data_dir), "--out", str(out), *TINY, "topk=[10,20]",
                 "hyper_parameters=[n_layers]", "n_layers=[0,1]"]) == 0
    assert "size: 2 points (n_layers: 2 values); at least 608 parameters" in \
        (out / "train.log").read_text()


def _sparse_user_ids(data_dir, dest):
    """The tiny data with user 0 renamed 200000000 (a raw id, not a row index), no valid.csv."""
    import shutil

    shutil.copytree(data_dir, dest)
    (dest / "valid.csv").unlink()
    for f in ("train.csv", "test.csv"):
        lines = (dest / f).read_text().splitlines()
        rows = [ln.split(",") for ln in lines[1:]]
        (dest / f).write_text("\n".join([lines[0]] + [",".join(
            [r[0], "200000000" if r[1] == "0" else r[1], *r[2:]]) for r in rows]) + "\n")
    return dest


def test_a_raw_user_id_never_sizes_an_array(tmp_path, data_dir, capsys):
    data = _sparse_user_ids(data_dir, tmp_path / "sparse")
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1500 * 2**20, resource.RLIM_INFINITY))\n"
            "from sgfd_fast.data.__main__ import main\n"
            f"sys.exit(main(['inspect', '--path', {str(data)!r}]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]  # 1.5 GB of address space is plenty
    assert json.loads(p.stdout)["n_users"] == 200_000_001
    out = tmp_path / "run"
    assert_error(main(["--data-path", str(data), "--out", str(out), *TINY, "topk=[10,20]"]),
                 capsys.readouterr().err, "the user ids run to 200,000,000 while 40 distinct "
                                          "users appear, and ids are row indices")
    assert not out.exists()


def test_an_allocation_beyond_the_estimate_is_one_error(tmp_path, data_dir, capsys, monkeypatch):
    """The estimate is a lower bound: an allocation failure past it is still no traceback."""
    from sgfd_fast.training import loop

    def fit(self):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 102 GB")
    monkeypatch.setattr(loop.Trainer, "fit", fit)
    out = tmp_path / "run"
    assert_error(main(["--data-path", str(data_dir), "--out", str(out), *TINY, "topk=[10,20]"]),
                 capsys.readouterr().err.splitlines()[-1] + "\n",
                 "out of memory training grid point 1 (the estimate was 1 point; at least")
    assert not out.exists()


# --- review of issue 22 -----------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    (["epochs=1", "epochs=2"], "epochs is given twice on the command line (epochs=1 and "
                               "epochs=2); give it once"),
    (["--config", "epochs=1", "epochs=2"], "epochs is given twice on the command line"),
    (["--device", "cpu", "device=cuda"], "device is given twice on the command line (--device "
                                         "cpu and device=cuda); give it once"),
])
def test_a_key_given_twice_on_the_command_line_exits_2(tmp_path, data_dir, capsys, args, match):
    out = tmp_path / "run"
    assert_error(main(["--data-path", str(data_dir), "--out", str(out), "topk=[10,20]",
                       "train_batch_size=128", "embedding_size=8", "sgfd=false", *args]),
                 capsys.readouterr().err, match)
    assert not out.exists()


def test_resume_refuses_a_key_given_twice_before_reading_the_run(tmp_path, capsys):
    run = tmp_path / "never"
    assert_error(main(["--resume", str(run), "--device", "cpu", "device=cpu"]),
                 capsys.readouterr().err, "device is given twice on the command line")
    assert not run.exists()


@pytest.mark.parametrize("model, item, match", [
    ("FREEDOM", "knn_k=100000000", "knn_k=100000000 (from the command line) asks for 100000000 "
                                   "neighbours per item, but dataset 'tiny' has 30 items; use "
                                   "knn_k up to 30"),
    ("LATTICE", "knn_k=[5,31]", "knn_k=[5, 31] (from the command line) asks for 31 neighbours"),
    ("MAML", "hidden_layer_dim=100000000", "the model's hidden_layer_dim tables; weights"),
])
def test_a_model_size_key_beyond_the_data_or_memory_is_refused_first(tmp_path, data_dir, capsys,
                                                                      model, item, match):
    """knn_k is bounded by the items like topk; hidden_layer_dim enters the estimate and its
    advice (it estimated KBs, then ran out of memory advising embedding_size)."""
    out = tmp_path / "run"
    grid = ["hyper_parameters=[knn_k]"] if item.startswith("knn_k=[") else []
    rc = main(["-m", model, "--data-path", str(data_dir), "--out", str(out), *TINY,
               "topk=[10,20]", item, *grid])
    err = capsys.readouterr().err
    assert_error(rc, err, match)
    assert not out.exists()
    if model == "MAML":
        assert "lower embedding_size or hidden_layer_dim or use a larger machine" in err, err


def test_the_estimate_counts_the_models_own_size_keys():
    from sgfd_fast.config import load_config
    from sgfd_fast.training import budget

    ds = tiny_dataset()
    plain = budget.estimate(ds, load_config("BM3", None, overrides=["embedding_size=8"]))
    maml = budget.estimate(ds, load_config("MAML", None, overrides=[
        "embedding_size=8", "hidden_layer_dim=64", "sgfd=false"]))
    width = sum(int(f.shape[1]) for f in ds.features.values())
    assert maml.parameters - plain.parameters == width * 64 + 64 * 32 + 32 * 32 + 32 * 8
    assert maml.keys == ["embedding_size", "hidden_layer_dim"]
    freedom = [budget.estimate(ds, load_config("FREEDOM", None, overrides=[
        "embedding_size=8", f"knn_k={k}"])) for k in (10, 20)]
    assert freedom[1].memory - freedom[0].memory == len(ds.features) * ds.n_items * 10 * 12


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, data_dir, capsys):
    """Review of issue 22: SIGTERM (timeout, SLURM, docker stop) ended a run with no message."""
    import signal

    out = tmp_path / "run"
    args = ["--data-path", str(data_dir), "--out", str(out), "--device", "cpu", "epochs=2",
            "train_batch_size=32", "embedding_size=8", "sgfd=false", "topk=[10,20]"]
    code = ("import os, signal, sys\n"
            "from sgfd_fast.train import main\n"
            "from sgfd_fast.training.loop import Trainer\n"
            "diagnose, calls = Trainer._diagnose, []\n"
            "def diagnose_then_term(self, *a):\n"  # runs once per batch
            "    calls.append(1)\n"
            "    if len(calls) == 3:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return diagnose(self, *a)\n"
            "Trainer._diagnose = diagnose_then_term\n"
            f"sys.exit(main({args!r}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 143, p.stderr[-2000:]
    assert "SIGTERM: stopping after this batch to save last.pt" in p.stderr, p.stderr
    assert "stopped at epoch 1, batch 3; last.pt saved" in p.stderr, p.stderr
    assert (f"interrupted; nothing completed is lost. Resume with:\n  python -m sgfd_fast.train "
            f"--resume {out}") in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (out / "results.json").exists()
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--resume", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["epochs_trained"] == 2
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lived for the run only
