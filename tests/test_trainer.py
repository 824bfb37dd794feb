"""Trainer: run-directory files, exact resume (between and inside epochs), grids, protocols,
negative sampling. A tiny matrix-factorisation model registered in MODELS keeps it fast."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from sgfd_fast import training
from sgfd_fast.training import runtime
from sgfd_fast.config import load_config
from sgfd_fast.data import Dataset
from sgfd_fast.errors import ConfigError, TrainingError
from sgfd_fast.models import MODELS
from sgfd_fast.models.base import Recommender


class TinyMF(Recommender):
    """BPR matrix factorisation with dropout (so the torch RNG matters for exact resume)."""

    n_negatives = 1
    interrupt_at = None   # send SIGINT to this process at this calculate_loss call
    calls = 0

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = config["embedding_size"]
        self.user = torch.nn.Embedding(dataset.n_users, d)
        self.item = torch.nn.Embedding(dataset.n_items, d)
        torch.nn.init.normal_(self.user.weight, std=0.1)
        torch.nn.init.normal_(self.item.weight, std=0.1)
        self.drop = torch.nn.Dropout(0.2)

    def calculate_loss(self, users, items, negatives=None):
        TinyMF.calls += 1
        if TinyMF.calls == TinyMF.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        u = self.drop(self.user(users))
        pos = (u * self.item(items)).sum(-1)
        neg = (u * self.item(negatives[:, 0])).sum(-1)
        bpr = -torch.nn.functional.logsigmoid(pos - neg).mean()
        reg = 1e-3 * u.pow(2).sum(-1).mean()
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def ranking_embeddings(self):
        return self.user.weight, self.item.weight

    def student_features(self):
        return {"image": self.item.weight[:, :2] * 2}


def tiny_dataset(n_users=40, n_items=30, seed=0, with_ids=True):
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=8, replace=False)
        train += [[u, int(i)] for i in items[:5]]
        valid.append([u, int(items[5])])
        test += [[u, int(i)] for i in items[6:]]
    return Dataset(name="tiny", n_users=n_users, n_items=n_items, train=np.asarray(train),
                   valid=np.asarray(valid), test=np.asarray(test),
                   features={"image": rng.standard_normal((n_items, 6)).astype(np.float32)},
                   labels=rng.integers(0, 3, n_items), n_labels=3,
                   user_ids=np.asarray([f"u{u}" for u in range(n_users)]) if with_ids else None,
                   item_ids=np.asarray([f"i{i}" for i in range(n_items)]) if with_ids else None)


def cfg(*overrides):
    base = ["epochs=4", "train_batch_size=32", "embedding_size=8", "learning_rate=0.05",
            "stopping_step=10", "device=cpu", "topk=[5,10,20]"]
    return load_config("TinyMF", None, overrides=base + list(overrides))


def run(tmp_path, name, *overrides, dataset=None):
    return training.train("TinyMF", cfg(*overrides), run_dir=tmp_path / name,
                          dataset=dataset or tiny_dataset(), progress=False, console=False)


def metric_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for x in lines:
        x.pop("epoch_time_s")
        x.pop("eval_time_s", None)
    return lines


def test_run_directory_files(tmp_path, tiny_model):
    res = run(tmp_path, "r")
    d = tmp_path / "r"
    assert {p.name for p in d.iterdir()} >= {"run.json", "train.log", "metrics.jsonl", "last.pt",
                                             "best.pt", "results.json"}
    assert not [p for p in d.iterdir() if "tmp" in p.name]
    on_disk = json.loads((d / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    for k in ("model", "dataset", "sgfd", "best_epoch", "valid", "test", "epoch_time_s",
              "eval_time_s", "config", "device", "sgfd_fast_version"):
        assert k in res, k
    assert res["model"] == "TinyMF" and res["device"] == "cpu"
    assert set(res["test"]) >= {"recall@20", "ndcg@20", "recall@10"}
    assert res["config"]["learning_rate"] == 0.05 and res["epoch_time_s"] > 0
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    assert all(set(x["losses"]) == {"loss", "bpr", "reg"} and "valid" in x and x["epoch_time_s"]
               > 0 and x["eval_time_s"] > 0 for x in lines)
    best = max(lines, key=lambda x: (x["valid"]["recall@20"], -x["epoch"]))
    assert res["best_epoch"] == best["epoch"] and res["valid"] == best["valid"]
    log = (d / "train.log").read_text()
    assert "epoch 4: loss" in log and "best epoch" in log
    ck = torch.load(d / "last.pt", weights_only=True)
    assert ck["epoch"] == 4 and ck["batch"] == 0 and "sampler" in ck and "optimizer" in ck
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    assert ck["optimizer"]["param_groups"][0]["fused"] is True  # one fused Adam kernel per step
    best = torch.load(d / "best.pt", weights_only=True)  # the model alone: no optimizer state
    assert set(best) == {"version", "model_name", "config", "model", "epoch", "valid", "data"}
    assert best["epoch"] == res["best_epoch"] and best["model"].keys() == ck["model"].keys()
    with pytest.raises(ConfigError, match="already holds a run"):
        run(tmp_path, "r")


def test_same_seed_same_result(tmp_path, tiny_model):
    a = run(tmp_path, "a", "epochs=2")
    b = run(tmp_path, "b", "epochs=2")
    assert a["test"] == b["test"]
    assert metric_lines(tmp_path / "a") == metric_lines(tmp_path / "b")


def test_resume_between_epochs_is_exact(tmp_path, tiny_model):
    full = run(tmp_path, "full", "epochs=5")
    run(tmp_path, "part", "epochs=2")
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "losses": {"lo')  # a line cut short by a crash
    resumed = training.resume(tmp_path / "part", ["epochs=5"], dataset=tiny_dataset(),
                              progress=False, console=False)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert metric_lines(tmp_path / "part") == metric_lines(tmp_path / "full")


def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, tiny_model):
    full = run(tmp_path, "full", "epochs=4")
    TinyMF.calls, TinyMF.interrupt_at = 0, 10   # 7 batches per epoch: inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", "epochs=4")
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["batch"]) == (1, 3)
    assert not (tmp_path / "cut" / "results.json").exists()
    assert "--resume" in (tmp_path / "cut" / "train.log").read_text()
    resumed = training.resume(tmp_path / "cut", dataset=tiny_dataset(), progress=False,
                              console=False)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert metric_lines(tmp_path / "cut") == metric_lines(tmp_path / "full")


def test_resume_rejects_changes(tmp_path, tiny_model):
    run(tmp_path, "r", "epochs=1")
    with pytest.raises(ConfigError, match="learning_rate cannot be changed when resuming"):
        training.resume(tmp_path / "r", ["learning_rate=0.1"])
    with pytest.raises(ConfigError, match="not a run directory"):
        training.resume(tmp_path / "nothing")


def test_post_step_hook_runs_after_every_step(tmp_path, tiny_model, monkeypatch):
    steps = []

    def post_step(self):
        assert self.user.weight.grad is not None  # after backward and the optimizer step
        steps.append(1)

    monkeypatch.setattr(TinyMF, "post_step", post_step, raising=False)
    run(tmp_path, "p", "epochs=2")
    assert len(steps) == 2 * 7


def test_early_stopping(tmp_path, tiny_model, monkeypatch):
    import sgfd_fast.evaluation as ev

    scores = iter([0.3, 0.5, 0.5, 0.4, 0.6, 0.9])  # best at epoch 2, then 2 without improvement
    monkeypatch.setattr(ev, "evaluate", lambda model, ds, split, config:
                        {"recall@20": next(scores) if split == "valid" else 0.1})
    res = run(tmp_path, "r", "epochs=6", "stopping_step=2", "valid_metric=recall@20")
    assert res["best_epoch"] == 2 and res["epochs_trained"] == 4 and res["early_stopped"]
    assert res["valid"] == {"recall@20": 0.5}


def test_grid_selects_on_validation(tmp_path, tiny_model, monkeypatch):
    import sgfd_fast.evaluation as ev

    calls = []

    def fake(model, ds, split, config):
        calls.append(split)
        lr = config["learning_rate"]
        # validation prefers lr 0.05, test would prefer lr 0.2: selection must follow validation
        return {"recall@20": {0.2: 0.1, 0.05: 0.3, 0.01: 0.2}[lr] if split == "valid"
                else {0.2: 0.9, 0.05: 0.4, 0.01: 0.5}[lr]}

    monkeypatch.setattr(ev, "evaluate", fake)
    res = run(tmp_path, "g", "epochs=1", "hyper_parameters=[learning_rate]",
              "learning_rate=[0.2, 0.05, 0.01]")
    assert res["config"]["learning_rate"] == 0.05 and res["test"] == {"recall@20": 0.4}
    assert [g["valid_score"] for g in res["grid"]] == [0.1, 0.3, 0.2]
    assert res["selected_point"] == 1 and res["checkpoint"] == "grid-1/best.pt"
    assert all((tmp_path / "g" / f"grid-{i}" / "best.pt").exists() for i in range(3))
    assert calls.count("test") == 3 and calls.count("valid") == 3


def test_grid_points_start_from_the_same_seed(tmp_path, tiny_model):
    # two batch sizes of evaluation: the same training twice (a grid value may not repeat)
    res = run(tmp_path, "g", "epochs=2", "hyper_parameters=[eval_batch_size]",
              "eval_batch_size=[16, 32]")
    a, b = (metric_lines(tmp_path / "g" / f"grid-{i}") for i in range(2))
    assert a == b and res["selected_point"] == 0


def test_legacy_protocol_validates_on_test(tmp_path, tiny_model, monkeypatch):
    import sgfd_fast.evaluation as ev

    splits = []
    monkeypatch.setattr(ev, "evaluate", lambda model, ds, split, config:
                        splits.append(split) or {"recall@20": 0.5})
    res = run(tmp_path, "l", "epochs=2", "protocol=legacy")
    assert set(splits) == {"test"} and res["protocol"] == "legacy"
    assert "validation uses the TEST split" in (tmp_path / "l" / "train.log").read_text()


def test_nan_loss_is_a_clear_error(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(TinyMF, "calculate_loss", lambda self, u, i, n=None: {
        "loss": (self.user(u).sum() * float("nan"))})
    with pytest.raises(TrainingError, match="loss became nan in epoch 1; lower learning_rate"):
        run(tmp_path, "n", "epochs=1")


def test_no_validation_split_is_refused_before_training(tmp_path, tiny_model):
    ds = tiny_dataset()
    ds.valid = ds.valid[:0]
    with pytest.raises(ConfigError, match="no validation interactions.*valid_ratio > 0"):
        run(tmp_path, "v", dataset=ds)
    assert not (tmp_path / "v").exists()


def test_device_cuda_without_gpu(tmp_path, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run(tmp_path, "c", "device=cuda")
    assert not (tmp_path / "c").exists()


def test_negatives_are_never_training_positives(tmp_path, tiny_model, monkeypatch):
    seen = []
    original = TinyMF.calculate_loss

    def spy(self, users, items, negatives=None):
        seen.append((users.clone(), negatives.clone()))
        return original(self, users, items, negatives)

    monkeypatch.setattr(TinyMF, "calculate_loss", spy)
    ds = tiny_dataset()
    run(tmp_path, "n", "epochs=1", dataset=ds)
    pos = {tuple(p) for p in ds.train.tolist()}
    assert sum(u.numel() for u, _ in seen) == ds.train.shape[0]
    for users, neg in seen:
        assert neg.shape == (users.numel(), 1) and neg.dtype == torch.int64
        assert not any((u, n) in pos for u, n in zip(users.tolist(), neg[:, 0].tolist()))


def test_only_rank0_writes(tmp_path, tiny_model, monkeypatch):
    ref = run(tmp_path, "r0", "epochs=2")
    monkeypatch.setattr(runtime, "rank", lambda: 1)
    res = run(tmp_path, "r1", "epochs=2")
    assert not (tmp_path / "r1").exists() and res["test"] == ref["test"]


@pytest.mark.slow
def test_bm3_resume_is_exact(tmp_path):
    ds = tiny_dataset()

    def bm3(name, epochs):
        c = load_config("BM3", None, overrides=[f"epochs={epochs}", "train_batch_size=32",
                                                "embedding_size=16", "device=cpu",
                                                "topk=[10,20]"])
        return training.train("BM3", c, run_dir=tmp_path / name, dataset=ds,
                              progress=False, console=False)

    full = bm3("full", 3)
    bm3("part", 1)
    resumed = training.resume(tmp_path / "part", ["epochs=3"], dataset=ds, progress=False,
                              console=False)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert metric_lines(tmp_path / "part") == metric_lines(tmp_path / "full")


@pytest.mark.slow
@pytest.mark.parametrize("name,sgfd", [("LATTICE", False), ("LATTICE", True), ("FREEDOM", False),
                                       ("MGCN", False)])
def test_backbone_interrupt_mid_epoch_then_resume_is_exact(tmp_path, monkeypatch, name, sgfd):
    """The backbones with per-epoch state: LATTICE's item graph (learned at an epoch's first
    step, reused detached after it), FREEDOM's pruned user-item graph (drawn from the epoch's
    key). A run cut inside epoch 2 and resumed equals the uninterrupted one."""
    rng = np.random.default_rng(1)
    ds = tiny_dataset()
    ds.features["text"] = rng.standard_normal((ds.n_items, 5)).astype(np.float32)  # MGCN: two
    c = load_config(name, None, overrides=[
        "epochs=3", "train_batch_size=32", "embedding_size=8", "device=cpu", "topk=[5,10,20]",
        f"sgfd={str(sgfd).lower()}", "knn_k=4"])
    cls, calls = MODELS[name], []
    original = cls.calculate_loss

    def counting(self, *args):
        calls.append(1)
        if len(calls) == 10:   # 7 batches per epoch: inside epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    full = training.train(name, c, run_dir=tmp_path / "full", dataset=ds, progress=False,
                          console=False)
    monkeypatch.setattr(cls, "calculate_loss", counting)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            training.train(name, c, run_dir=tmp_path / "cut", dataset=ds, progress=False,
                           console=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["batch"]) == (1, 3)
    resumed = training.resume(tmp_path / "cut", dataset=ds, progress=False, console=False)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert metric_lines(tmp_path / "cut") == metric_lines(tmp_path / "full")


@pytest.mark.slow
def test_lattice_checkpoint_without_graph_inputs_resumes_and_loads(tmp_path):
    """LATTICE checkpoints written before S's inputs were checkpointed (no ``graph_*`` entries)
    still resume and load, rebuilding S from the parameters as that version did."""
    from sgfd_fast.api import load_run
    ds = tiny_dataset()
    c = load_config("LATTICE", None, overrides=[
        "epochs=1", "train_batch_size=32", "embedding_size=8", "device=cpu", "topk=[5,10,20]",
        "knn_k=4"])
    training.train("LATTICE", c, run_dir=tmp_path / "old", dataset=ds, progress=False,
                   console=False)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / "old" / name, weights_only=True)
        assert any(k.startswith("graph_") for k in ck["model"])
        ck["model"] = {k: v for k, v in ck["model"].items() if not k.startswith("graph_")}
        torch.save(ck, tmp_path / "old" / name)
    resumed = training.resume(tmp_path / "old", ["epochs=2"], dataset=ds, progress=False,
                              console=False)
    assert resumed["best_epoch"] in (0, 1) and len(metric_lines(tmp_path / "old")) == 2
    assert load_run(tmp_path / "old", dataset=ds).model.graph_epoch.item() >= -1
