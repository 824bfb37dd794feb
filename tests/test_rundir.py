"""The run directory's life through ``python -m sgfd_fast.train`` (in process, tiny data): what is
created when, the lock, failed writes, corrupt records, and every ``--resume`` case."""

import errno
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

from sgfd_fast.data import write_sgfd
from sgfd_fast.data.formats.sgfd import SGFD_LABELS
from sgfd_fast.models import MODELS
from sgfd_fast.train import main
from sgfd_fast.training import checkpoint
from sgfd_fast.training.rundir import LOCK_NAME, RunDirectory
from test_trainer import tiny_dataset

FAST = ["--device", "cpu", "epochs=1", "train_batch_size=64", "embedding_size=8",
        "topk=[10,20]"]  # the tiny data have 30 items


@pytest.fixture
def data_dir(tmp_path):
    return write_sgfd(tiny_dataset(), tmp_path / "data" / "tiny")


def train(data_dir, out, *more):
    given = {m.partition("=")[0] for m in more}  # each key once on a command line
    fast = [f for f in FAST if f.partition("=")[0] not in given]
    return main(["--data-path", str(data_dir), "--out", str(out), *fast, *more])


def assert_failed(rc, err, match):
    """Exit 2, the error as the last line (after what the run logged), no traceback."""
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last, err


def snapshot(d: Path) -> dict:
    """Every file under ``d`` (but the lock) with its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def epochs_in(d: Path) -> list:
    return [json.loads(x)["epoch"] for x in (d / "metrics.jsonl").read_text().splitlines()]


# --- nothing is created before everything is checked; a failed start leaves nothing ---------


def test_bad_dataset_creates_nothing(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    out = tmp_path / "run"
    assert_failed(main(["--data-path", str(tmp_path / "broken"), "--out", str(out)]),
                 capsys.readouterr().err, str(tmp_path / "broken"))
    assert not out.exists()


def test_bad_backend_variable_creates_nothing(tmp_path, data_dir, capsys, monkeypatch):
    out = tmp_path / "a" / "run"
    assert train(data_dir, out) == 0 and capsys.readouterr()
    run = snapshot(out)
    lock = (out / LOCK_NAME).read_bytes()
    monkeypatch.setenv("SGFD_FAST_BACKEND", "bogus")
    assert_failed(train(data_dir, tmp_path / "b" / "run"), capsys.readouterr().err,
                  "SGFD_FAST_BACKEND='bogus': expected auto")
    assert not (tmp_path / "b").exists()
    assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err,
                  "SGFD_FAST_BACKEND='bogus'")
    assert snapshot(out) == run and (out / LOCK_NAME).read_bytes() == lock
    monkeypatch.setenv("SGFD_FAST_BACKEND", "spmm=cpp")   # an op name that does not exist
    assert_failed(train(data_dir, tmp_path / "c" / "run"), capsys.readouterr().err,
                  "no op is called 'spmm' (did you mean 'spmm_csr'?)")
    assert not (tmp_path / "c").exists()


def test_a_failed_resume_leaves_run_json_alone(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0 and capsys.readouterr()
    before = snapshot(out)
    if not __import__("torch").cuda.is_available():
        assert_failed(main(["--resume", str(out), "--device", "cuda", "epochs=3"]),
                      capsys.readouterr().err, "torch sees no CUDA GPU")
        assert snapshot(out) == before   # run.json still says device auto and epochs 1
    assert main(["--resume", str(out), "epochs=2"]) == 0
    assert epochs_in(out) == [1, 2]


def test_failed_sampler_leaves_no_run_behind(tmp_path, capsys):
    ds = tiny_dataset()
    ds.train = np.concatenate([ds.train, [[0, i] for i in range(ds.n_items)]])
    data = write_sgfd(ds, tmp_path / "full")  # user 0 has every item: no negative to sample
    out = tmp_path / "a" / "b" / "run"
    args = ["-m", "GRCN", "--data-path", str(data), *FAST]
    assert_failed(main([*args, "--out", str(out)]), capsys.readouterr().err,
                  f"has all 30 items as training positives, so no negative exists; drop such "
                  f"users from training ({out} was removed: nothing was saved yet)")
    assert not (tmp_path / "a").exists()  # the parents this call made are gone too
    kept = tmp_path / "kept"
    kept.mkdir()
    assert_failed(main([*args, "--out", str(kept)]), capsys.readouterr().err, "has all 30 items")
    assert kept.is_dir() and not any(kept.iterdir())  # the empty --out it was given stays


@pytest.mark.parametrize("content", [["best.pt"], ["keep.txt"], ["sub/x", "a", "b", "c"]])
def test_non_empty_out_is_refused_untouched(tmp_path, data_dir, capsys, content):
    out = tmp_path / "d"
    for name in content:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("precious")
    before = snapshot(out)
    shown = ", ".join(sorted({c.split("/")[0] for c in content})[:3])
    assert_failed(train(data_dir, out), capsys.readouterr().err,
                  f"the run directory {out} is not empty ({shown}")
    assert snapshot(out) == before and not (out / LOCK_NAME).exists()


def test_out_holding_only_a_lock_is_adopted(tmp_path, data_dir, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / LOCK_NAME).write_text("12345\n")  # left by a process killed before run.json
    assert train(data_dir, out) == 0
    assert (out / "results.json").exists()


@pytest.mark.parametrize("where", ["file", "below a file", "read-only"])
def test_unusable_out(tmp_path, data_dir, capsys, monkeypatch, where):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"file": f, "below a file": f / "run", "read-only": tmp_path / "ro" / "run"}[where]
    if where == "read-only":
        def mkdir(self, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        monkeypatch.setattr(Path, "mkdir", mkdir)  # chmod does not stop root
    match = {"file": f"the run directory {f} is a file",
             "below a file": f"cannot create the run directory {out}: {f} is a file",
             "read-only": f"cannot create the run directory {out}: Permission denied"}[where]
    assert_failed(train(data_dir, out), capsys.readouterr().err, match)
    assert f.read_text() == "x"


# --- failed writes keep what was saved ---------------------------------------------------


def _disk_full_for(name, monkeypatch, mode="w"):
    """Writes (``mode``) to files named ``name`` (or their temporary files) fill the disk
    half-way."""
    def fake_open(path, how="r", *a, **k):
        f = open(path, how, *a, **k)
        if name in Path(path).name and mode in how:
            real_write = f.write

            def write(data):
                real_write(data[:len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write = write
        return f
    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", ["last.pt", "metrics.jsonl", "results.json"])
def test_disk_full_keeps_what_was_saved(tmp_path, data_dir, capsys, monkeypatch, name):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    before = snapshot(out)
    with monkeypatch.context() as m:
        _disk_full_for(name, m, "a" if name == "metrics.jsonl" else "w")
        assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err,
                      f"cannot write {out / name}: No space left on device")
    if name == "last.pt":
        assert snapshot(out)["last.pt"] == before["last.pt"]
    if name == "metrics.jsonl":
        assert (out / "metrics.jsonl").read_bytes().startswith(before["metrics.jsonl"])
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert main(["--resume", str(out), "epochs=2"]) == 0  # free space, resume: nothing lost
    assert epochs_in(out) == [1, 2]


def test_disk_full_before_the_first_checkpoint_removes_the_run(tmp_path, data_dir, capsys,
                                                               monkeypatch):
    _disk_full_for("last.pt", monkeypatch)
    assert_failed(train(data_dir, tmp_path / "run"), capsys.readouterr().err,
                  "No space left on device")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["{\"model\": ", "[]", "{\"model\": \"BM3\"}"])
def test_corrupt_run_json(tmp_path, data_dir, capsys, content):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    (out / "run.json").write_text(content)
    before = snapshot(out)
    assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err,
                 f"{out / 'run.json'}")
    assert snapshot(out) == before


# --- one process per run directory -------------------------------------------------------


def _hold_lock(d: Path) -> int:
    fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"4242\n", 0)
    return fd


def test_a_second_process_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    before = snapshot(out)
    fd = _hold_lock(out)
    try:
        assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err,
                     f"{out} is in use by another training process (pid 4242")
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        fd2 = _hold_lock(fresh)
        assert_failed(train(data_dir, fresh), capsys.readouterr().err, "pid 4242")
        assert [p.name for p in fresh.iterdir()] == [LOCK_NAME]
        os.close(fd2)
    finally:
        os.close(fd)
    assert snapshot(out) == before
    assert main(["--resume", str(out), "epochs=2"]) == 0  # released by the holder


def test_the_lock_dies_with_its_process(tmp_path):
    code = ("import os, sys; from sgfd_fast.training.rundir import RunDirectory; "
            "RunDirectory.create(sys.argv[1]); os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], timeout=120)
    assert p.returncode == -9
    with RunDirectory.create(tmp_path / "run"):  # the killed process's lock is gone
        pass


# --- --resume, case by case ----------------------------------------------------------------


def test_resume_without_last_pt_but_with_metrics_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    (out / "last.pt").unlink()
    before = snapshot(out)
    assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err,
                 "1 epoch(s) in metrics.jsonl but no last.pt")
    assert snapshot(out) == before


def test_resume_before_the_first_checkpoint_starts_at_epoch_1(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    for name in ("last.pt", "best.pt", "metrics.jsonl", "results.json"):
        (out / name).unlink()
    assert main(["--resume", str(out), "epochs=2"]) == 0
    assert "training it from epoch 1" in capsys.readouterr().err
    assert epochs_in(out) == [1, 2]


def test_resume_on_changed_data(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    labels = np.load(data_dir / SGFD_LABELS)
    np.save(data_dir / SGFD_LABELS, (labels + 1) % 3)
    before = snapshot(out)
    assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err,
                 f"the data of {out} changed since it was trained")
    assert snapshot(out) == before
    assert main(["--resume", str(out), "epochs=2", "--allow-data-change"]) == 0
    assert "continuing on the new data" in (out / "train.log").read_text()
    assert main(["--resume", str(out), "epochs=3"]) == 0  # the new data are now the run's
    assert epochs_in(out) == [1, 2, 3]


def test_legacy_protocol_runs_and_resumes(tmp_path, data_dir):
    # protocol=legacy trains on all of train: its empty validation split is fingerprinted too
    (data_dir / "valid.csv").unlink()
    out = tmp_path / "run"
    assert train(data_dir, out, "protocol=legacy") == 0
    assert json.loads((out / "run.json").read_text())["data_fingerprint"]["n_valid"] == 0
    assert main(["--resume", str(out), "epochs=2"]) == 0
    assert epochs_in(out) == [1, 2]


def test_resume_cannot_lower_epochs_and_a_finished_run_does_nothing(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "epochs=2") == 0
    capsys.readouterr()
    before = snapshot(out)
    lock = out / LOCK_NAME
    lock.write_text("4242\n")  # the pid of the process that trained it
    os.utime(lock, ns=(10**18, 10**18))
    assert_failed(main(["--resume", str(out), "epochs=1"]), capsys.readouterr().err,
                 "epochs=1 is below the 2 epoch(s)")
    assert snapshot(out) == before
    assert main(["--resume", str(out)]) == 0
    cap = capsys.readouterr()
    assert "is finished" in cap.err and "nothing to train" in cap.err
    assert "test recall@20" in cap.out
    assert snapshot(out) == before  # run.json (its config), results, log: all untouched
    assert lock.read_text() == "4242\n" and lock.stat().st_mtime_ns == 10**18  # the lock too


# --- output a person reads ------------------------------------------------------------------


def test_run_log_names_sgfd_and_the_selected_grid_point(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "hyper_parameters=[embedding_size]",
                 "embedding_size=[8,16]") == 0
    log = (out / "train.log").read_text()
    assert "BM3+SGFD on tiny" in log
    res = json.loads((out / "results.json").read_text())
    i = res["selected_point"]
    chosen = f"embedding_size={res['grid'][i]['params']['embedding_size']}"
    assert f"of grid point {i + 1}/2 ({chosen})" in log and "<- selected" in log
    assert f"selected grid point {i + 1}/2: {chosen}" in capsys.readouterr().out


def test_data_warnings_are_one_line_and_logged(tmp_path, data_dir):
    labels = np.load(data_dir / SGFD_LABELS)
    np.save(data_dir / SGFD_LABELS, np.concatenate([labels, [0, 1]]))  # 2 labels too many
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "sgfd_fast.train", "--data-path", str(data_dir),
                        "--out", str(out), *FAST], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "DataWarning" not in p.stderr and "warn(" not in p.stderr
    assert p.stderr.count("32 labels for 30 items") == 1
    assert "WARNING" in (out / "train.log").read_text() and \
        "32 labels for 30 items" in (out / "train.log").read_text()


@pytest.mark.parametrize("args, match", [
    (["-m", "bm3"], f"unknown model 'bm3'; available: {', '.join(MODELS)} (did you mean 'BM3'?)"),
    (["-d", "Office"], "(did you mean 'office'?)"),
])
def test_did_you_mean_ignores_case(args, match, capsys):
    assert_failed(main(args), capsys.readouterr().err, match)


def test_no_valid_split_hint_is_never_already_satisfied(tmp_path, capsys):
    ds = tiny_dataset()
    ds.train = np.concatenate([ds.train, ds.valid])
    data = write_sgfd(ds, tmp_path / "novalid", write_valid=False)
    assert_failed(main(["--data-path", str(data), "--out", str(tmp_path / "r"), *FAST,
                        "valid_ratio=0"]), capsys.readouterr().err,
                 "set valid_ratio > 0 or give the dataset a valid split, or set protocol=legacy")
    assert not (tmp_path / "r").exists()


def test_empty_test_split_gives_no_validation_hint():
    from sgfd_fast.config import load_config
    from sgfd_fast.errors import DataError
    from sgfd_fast.evaluation import evaluate

    ds = tiny_dataset()
    ds.test = ds.test[:0]
    with pytest.raises(DataError) as e:
        evaluate(None, ds, "test", load_config("BM3", None).values)
    assert str(e.value) == "dataset 'tiny' has no test interactions to evaluate"


# --- issue 22, kind 3: records that must agree ---------------------------------------------


def test_resume_onto_data_of_another_shape_rewrites_nothing(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    before = snapshot(out)
    original = {f: (data_dir / f).read_bytes() for f in ("test.csv",)}
    with open(data_dir / "test.csv", "a") as f:  # a 41st user: another embedding table
        f.write("0,40,i0\n1,40,i1\n")
    (data_dir / "train.csv").write_text((data_dir / "train.csv").read_text() + "2,40,i2\n")
    assert_failed(main(["--resume", str(out), "epochs=2", "--allow-data-change"]),
                  capsys.readouterr().err, "the data now have another shape (41 users, 30 items")
    assert snapshot(out) == before  # run.json still records the data it was trained on
    (data_dir / "test.csv").write_bytes(original["test.csv"])
    lines = (data_dir / "train.csv").read_text().splitlines()[:-1]
    (data_dir / "train.csv").write_text("\n".join(lines) + "\n")
    assert main(["--resume", str(out), "epochs=2"]) == 0  # the original data still resume
    assert epochs_in(out) == [1, 2]


RUN_EDITS = [
    (lambda r: r.update(model="GRCN"), "does not hold a valid configuration (unknown config key"),
    (lambda r: r.update(model="NoSuch"), "names the model 'NoSuch', which is not one of"),
    (lambda r: r["config"].pop("learning_rate"), "lacks the config key learning_rate"),
    (lambda r: r["config"].update(topk=5), "topk (from"),
    (lambda r: r["config"].update(embedding_size="8"), "embedding_size (from"),
    (lambda r: r.update(data="tiny"), "has data='tiny', which is not"),
    (lambda r: r.update(data_fingerprint=7), "has data_fingerprint=7 of the wrong type"),
]


def test_a_hand_edited_run_json_is_one_clear_error(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    original = (out / "run.json").read_text()
    for edit, match in RUN_EDITS:
        run = json.loads(original)
        edit(run)
        (out / "run.json").write_text(json.dumps(run))
        before = snapshot(out)
        assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err, match)
        assert snapshot(out) == before


@pytest.mark.parametrize("other, match", [
    (["-m", "GRCN"], "holds a GRCN model, but the run trains BM3"),
    (["embedding_size=16"], "was written with another configuration than the run's "
                            "(embedding_size: 16 there, 8 in run.json)"),
    ("data", "another shape (40 users, 30 items, 3 labels, features image 6-d) than its "
             "checkpoints were trained on (45 users"),
    ("old data", "last.pt does not fit this model and data (user_embedding.weight: (45, 8) "
                 "there, (40, 8) here); it comes from another run or other data"),
])
def test_a_last_pt_of_another_run_is_refused(tmp_path, data_dir, capsys, other, match):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    if other in ("data", "old data"):  # the same model and config, on data with more users
        ds = tiny_dataset(n_users=45)
        assert train(write_sgfd(ds, tmp_path / "more"), tmp_path / "other") == 0
    if other == "old data":  # checkpoints record no data shape: the tensors' shapes still tell
        ck = torch.load(tmp_path / "other" / "last.pt", weights_only=True)
        del ck["data"]
        torch.save(ck, tmp_path / "other" / "last.pt")
        ck = torch.load(tmp_path / "other" / "best.pt", weights_only=True)
        del ck["data"]
        torch.save(ck, tmp_path / "other" / "best.pt")
        run = json.loads((out / "run.json").read_text())
        del run["data_fingerprint"]["features"]  # an old fingerprint
        (out / "run.json").write_text(json.dumps(run))
    elif other != "data":
        assert train(data_dir, tmp_path / "other", *other) == 0
    for name in ("last.pt", "best.pt"):
        (out / name).write_bytes((tmp_path / "other" / name).read_bytes())
    capsys.readouterr()
    rc = main(["--resume", str(out), "epochs=2"])
    assert_failed(rc, capsys.readouterr().err, match)


def test_a_damaged_last_pt_is_one_clear_error(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    ck = torch.load(out / "last.pt", weights_only=True)
    for content, match in [(b"not a checkpoint", "cannot read checkpoint"),
                           ([1, 2], "holds a list, not a checkpoint's dict"),
                           ({k: v for k, v in ck.items() if k != "epoch"}, "lacks epoch")]:
        if isinstance(content, bytes):
            (out / "last.pt").write_bytes(content)
        else:
            torch.save(content, out / "last.pt")
        before = snapshot(out)
        assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err, match)
        assert snapshot(out) == before


def test_a_killed_writes_temporary_file_is_removed_on_resume(tmp_path, data_dir):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    (out / ".last.pt.tmp99999").write_bytes(b"half a checkpoint")   # SIGKILL mid-write
    (out / ".metrics.jsonl.tmp99999").write_text("{")
    assert main(["--resume", str(out), "epochs=2"]) == 0
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_a_hand_edited_results_json_is_one_clear_error(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    original = (out / "results.json").read_text()
    for edit, match in [
        (lambda r: r.update(selected_point=5, grid=[]), "selected_point=5, which is not one of"),
        (lambda r: r.update(test={"recall@20": "high"}), "test={'recall@20': 'high'}, which is"),
        (lambda r: r.pop("model"), "lacks model"),
    ]:
        res = json.loads(original)
        edit(res)
        (out / "results.json").write_text(json.dumps(res))
        assert_failed(main(["--resume", str(out)]), capsys.readouterr().err, match)


def test_a_hand_edited_metrics_line_is_one_clear_error(tmp_path, data_dir, capsys):
    from sgfd_fast.records import read_metrics
    from sgfd_fast.errors import RunDirectoryError

    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    line = json.loads((out / "metrics.jsonl").read_text())
    line["epoch_time_s"] = "fast"
    (out / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(RunDirectoryError, match=r"metrics.jsonl, line 1: epoch_time_s='fast' is "
                                                r"of the wrong type"):
        read_metrics(out)


# --- review of issue 22: every record read strictly ---------------------------------------


@pytest.mark.parametrize("edit, match", [
    (lambda r: r.pop("data_fingerprint"), "run.json lacks data_fingerprint"),
    (lambda r: r["data_fingerprint"].pop("sha256"), "which lacks sha256"),
])
def test_resume_refuses_a_run_json_without_its_data_fingerprint(tmp_path, data_dir, capsys,
                                                                edit, match):
    """Without the fingerprint a resume trained on other data without a word."""
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    labels = np.load(data_dir / SGFD_LABELS)
    np.save(data_dir / SGFD_LABELS, (labels + 1) % 3)  # other data of the same shape
    run = json.loads((out / "run.json").read_text())
    edit(run)
    (out / "run.json").write_text(json.dumps(run))
    before = snapshot(out)
    assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err, match)
    assert snapshot(out) == before


@pytest.mark.parametrize("text, match", [
    ('{"model": "BM3", "model": "GRCN"}', "run.json has the key 'model' twice in one object"),
    ('{"x": NaN}', "run.json holds NaN, which is not a JSON number"),
])
def test_resume_refuses_a_run_json_with_a_key_twice_or_nan(tmp_path, data_dir, capsys, text,
                                                           match):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    original = (out / "run.json").read_text()
    (out / "run.json").write_text(original.replace('{', text[:-1] + ", ", 1))
    before = snapshot(out)
    assert_failed(main(["--resume", str(out), "epochs=2"]), capsys.readouterr().err, match)
    assert snapshot(out) == before


def test_resume_refuses_a_metrics_line_with_a_key_twice_before_rewriting(tmp_path, data_dir,
                                                                        capsys):
    """{"epoch": 1, "epoch": 7} was read as epoch 7 and deleted by the resume's trim."""
    out = tmp_path / "run"
    assert train(data_dir, out, "epochs=2") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('{"epoch": 1', '{"epoch": 1, "epoch": 7', 1)
    assert '"epoch": 7' in lines[0]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(out)
    assert_failed(main(["--resume", str(out), "epochs=3"]), capsys.readouterr().err,
                  "metrics.jsonl, line 1 has the key 'epoch' twice in one object")
    assert snapshot(out) == before


def test_resume_still_drops_a_metrics_line_cut_short_by_a_crash(tmp_path, data_dir):
    out = tmp_path / "run"
    assert train(data_dir, out) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "los')
    assert main(["--resume", str(out), "epochs=2"]) == 0
    assert epochs_in(out) == [1, 2]
