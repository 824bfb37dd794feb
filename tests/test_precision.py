"""``precision: bf16``: the bf16 products against first principles, every backbone trained in
bf16 next to fp32 (finite, close, not equal), what stays float32 (weights, Adam's state) and
what is held in bf16 (the raw features), the checkpoint's record, exact resume, the key's
checks, and runs recorded before the key existed."""

import gc
import json
import weakref

import pytest
import torch

from sgfd_fast import ops, training
from sgfd_fast._tensors import bf16_linear
from sgfd_fast.config import load_config
from sgfd_fast.errors import ConfigError, DataError
from sgfd_fast.models import MODELS, build_model
from sgfd_fast.models.heads import Linear
from sgfd_fast.train import main
from test_trainer import metric_lines, tiny_dataset

BF16 = torch.bfloat16


def _round(t):
    """t rounded to bfloat16 and back (round to nearest even), computed without torch's cast:
    the top 16 bits of the float32 pattern after adding 0x7FFF + the kept lowest bit."""
    bits = t.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(torch.int32).view(torch.float32)


def test_bf16_linear_is_a_rounded_product():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in [(37, 19), (5, 19), (5,)])
    got = bf16_linear(x, w, b)
    assert got.dtype == torch.float32
    # float64 product of the bf16-rounded operands, rounded once to bf16, plus the bias
    want = _round(_round(x).double() @ _round(w).double().T) + b
    assert torch.allclose(got, want, rtol=2 ** -8, atol=1e-6)
    assert not torch.allclose(got, x @ w.T + b, rtol=1e-5, atol=1e-6)  # it is not fp32
    # gradients: float32, the bf16 products' (rounded operands, so close to fp32, not equal)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    bf16_linear(xr, wr, b).square().sum().backward()
    x32, w32 = x.clone().requires_grad_(), w.clone().requires_grad_()
    (x32 @ w32.T + b).square().sum().backward()
    assert xr.grad.dtype == wr.grad.dtype == torch.float32
    assert (wr.grad - w32.grad).norm() < 1e-2 * w32.grad.norm()


def test_linear_layer_and_feature_head_follow_bf16():
    torch.manual_seed(0)
    layer = Linear(19, 5)
    x = torch.randn(11, 19)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert torch.equal(layer(x.to(BF16)), bf16_linear(x, layer.weight, layer.bias))
    layer.bf16 = True
    assert torch.equal(layer(x), bf16_linear(x, layer.weight, layer.bias))
    assert "bf16" in repr(layer)
    # feature_head on bfloat16 rows: the bf16 product, then the float32 epilogue
    got = ops.feature_head(x.to(BF16), layer.weight, layer.bias, 0.01)
    h = bf16_linear(x, layer.weight, layer.bias)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.nn.functional.normalize(torch.nn.functional.leaky_relu(h, 0.01)))
    with pytest.raises(Exception, match="bfloat16 with a float32 weight"):
        ops.feature_head(x.to(BF16), layer.weight.double(), None)
    # the collapsed chain in bf16: the rounded products of the float32 layers
    ws = [torch.randn(8, 19), torch.randn(5, 8)]
    w, _ = ops.collapse_linear_stack(ws, [None, None], bf16=True)
    assert torch.equal(w, bf16_linear(ws[1], ws[0].T))
    assert torch.allclose(w, ws[1] @ ws[0], rtol=3e-2, atol=5e-2)


def _data():
    ds = tiny_dataset(n_users=40, n_items=30)
    ds.features["text"] = ds.features["image"][:, ::-1].copy() * 2  # MGCN needs two modalities
    return ds


#: relative tolerance of bf16 against fp32 per logged loss part (others: 5 %). MAML's
#: ``feature`` term, ||V - f||^2 with V initialised to f, is a small difference of near-equal
#: terms where the bf16 rounding of f shows most (3-6 % measured on these data).
PART_TOLERANCE = {"loss": 2e-2, "feature": 0.15}

VARIANTS = [(name, sgfd) for name in MODELS for sgfd in (False, True)
            if not (sgfd and name == "LightGCN")]


def _config(name, sgfd, precision, *extra):
    return load_config(name, None, overrides=[
        "epochs=2", "train_batch_size=64", "embedding_size=8", "device=cpu", "topk=[5,10]",
        "valid_metric=recall@10", f"sgfd={str(sgfd).lower()}", f"precision={precision}",
        *(["knn_k=5"] if name in ("FREEDOM", "LATTICE", "MGCN") else []), *extra])


@pytest.mark.parametrize("name,sgfd", VARIANTS)
def test_every_backbone_trains_in_bf16(tmp_path, name, sgfd):
    """2 epochs in fp32 and in bf16 from one seed: finite losses, the totals within 2 % of each
    other and each part within :data:`PART_TOLERANCE`, test metrics within 0.1 (the rankings of 30 items may swap near-ties); the bf16 run's checkpoint
    records the precision and holds float32 weights and Adam state; its model holds the raw
    features in bfloat16 (LightGCN has none: bf16 changes nothing there), and once the dataset
    has handed its features over to it (what a run that loads its data does), nothing keeps the
    float32 matrices alive: no constant the backbone built from them holds on to them."""
    ds = _data()
    res = {p: training.train(name, _config(name, sgfd, p), run_dir=tmp_path / p, dataset=ds,
                             progress=False, console=False) for p in ("fp32", "bf16")}
    lines = {p: metric_lines(tmp_path / p) for p in res}
    for a, b in zip(lines["fp32"], lines["bf16"]):
        for k, v in a["losses"].items():
            got = b["losses"][k]
            assert torch.isfinite(torch.tensor(got)), (k, got)
            assert got == pytest.approx(v, rel=PART_TOLERANCE.get(k, 5e-2), abs=1e-4), k
    for k, v in res["fp32"]["test"].items():
        assert res["bf16"]["test"][k] == pytest.approx(v, abs=0.1), k
    assert res["bf16"]["config"]["precision"] == "bf16"
    ck = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)
    assert ck["config"]["precision"] == "bf16"
    assert {t.dtype for t in ck["model"].values() if t.is_floating_point()} == {torch.float32}
    state = [t for s in ck["optimizer"]["state"].values() for t in s.values()
             if torch.is_tensor(t) and t.is_floating_point() and t.dim() > 0]
    assert state and {t.dtype for t in state} == {torch.float32}
    torch.manual_seed(0)
    model = build_model(name, ds, _config(name, sgfd, "bf16").points()[0])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    if model.features is None:
        assert not any(isinstance(m, Linear) for m in model.modules())
    else:
        f = model.features
        assert {f.feature(j).dtype for j in range(len(f.modalities))} == {BF16}
        assert all(m.bf16 for m in model.modules() if isinstance(m, Linear))
        fp32 = build_model(name, ds, _config(name, sgfd, "fp32").points()[0]).features
        assert fp32.feature(0).dtype == torch.float32
        own = _data()
        arrays = [weakref.ref(a) for a in own.features.values()]
        model = build_model(name, own, _config(name, sgfd, "bf16").points()[0])
        own.hand_over_features(model.features.held())
        gc.collect()
        assert [r() for r in arrays] == [None] * len(arrays)
        assert [t.data_ptr() for t in own.features.values()] == \
            [model.features.feature(j).data_ptr() for j in range(len(arrays))]
        with pytest.raises(DataError, match="handed its float32 features over"):
            build_model(name, own, _config(name, sgfd, "fp32").points()[0])


def test_a_run_that_loads_its_data_hands_the_features_over(tmp_path, monkeypatch):
    """``training.train`` and ``resume`` with data they load themselves, FREEDOM (kNN graphs) in
    bf16 over a grid of two ``knn_k``: the first point is built while the dataset still holds
    its float32 matrices, the last takes them over: while it trains, the dataset holds that
    model's bfloat16 buffers and no float32 matrix is alive. Both points' kNN graphs are those of
    the float32 features. In fp32 the dataset keeps its arrays (the model's buffers share
    them), and a dataset passed in by the caller keeps them under bf16 too."""
    from sgfd_fast.data import write_sgfd
    from sgfd_fast.training import runner
    from sgfd_fast.training.loop import Trainer

    data = {"path": str(write_sgfd(_data(), tmp_path / "data"))}
    loaded, seen = [], []
    load, fit = runner.load_data, Trainer.fit

    def load_and_watch(spec, config):
        ds = load(spec, config)
        loaded.append([weakref.ref(a) for a in ds.features.values()])
        return ds

    def fit_and_look(self):
        gc.collect()
        held = [t.data_ptr() if torch.is_tensor(t) else None
                for t in self.dataset.features.values()]
        model = self.model.features
        fp32 = build_model("FREEDOM", load(data, self.config),
                           {**self.config, "precision": "fp32"})
        seen.append({"precision": self.config["precision"], "knn_k": self.config["knn_k"],
                     "alive": [r() is not None for r in loaded[-1]],
                     "held": held == [model.feature(j).data_ptr()
                                      for j in range(len(model.modalities))],
                     "graph": all(torch.equal(getattr(self.model.item_graph, k),
                                              getattr(fp32.item_graph, k))
                                  for k in ("rowptr", "col", "val"))})
        return fit(self)

    monkeypatch.setattr(runner, "load_data", load_and_watch)
    monkeypatch.setattr(Trainer, "fit", fit_and_look)
    grid = ["epochs=1", "hyper_parameters=[knn_k]", "knn_k=[3,5]"]
    for p in ("bf16", "fp32"):
        training.train("FREEDOM", _config("FREEDOM", False, p, *grid), run_dir=tmp_path / p,
                       data=data, progress=False, console=False)
    training.resume(tmp_path / "bf16", ["epochs=2"], progress=False, console=False)
    training.train("FREEDOM", _config("FREEDOM", False, "bf16", *grid), run_dir=tmp_path / "in",
                   dataset=load_and_watch(data, _config("FREEDOM", False, "bf16").values),
                   progress=False, console=False)
    first, last = {"alive": [True, True], "held": False, "graph": True}, \
        {"alive": [False, False], "held": True, "graph": True}
    kept = {"alive": [True, True], "held": False, "graph": True}
    assert seen == [{"precision": "bf16", "knn_k": 3, **first},
                    {"precision": "bf16", "knn_k": 5, **last},
                    {"precision": "fp32", "knn_k": 3, **kept},
                    {"precision": "fp32", "knn_k": 5, **kept},
                    {"precision": "bf16", "knn_k": 3, **first},   # the resume
                    {"precision": "bf16", "knn_k": 5, **last},
                    {"precision": "bf16", "knn_k": 3, **kept},    # the caller's dataset
                    {"precision": "bf16", "knn_k": 5, **kept}]


def test_bf16_resume_inside_an_epoch_is_exact(tmp_path, monkeypatch):
    """BM3+SGFD in bf16, interrupted inside epoch 2 and resumed: bit for bit the uninterrupted
    run (the bf16 products are as repeatable as the float32 ones)."""
    import os
    import signal

    from sgfd_fast.models.bm3 import BM3

    ds = _data()
    cfg = _config("BM3", True, "bf16", "epochs=3", "train_batch_size=32")
    full = training.train("BM3", cfg, run_dir=tmp_path / "full", dataset=ds, progress=False,
                          console=False)
    calls, loss = [0], BM3.calculate_loss

    def interrupted(self, *a):
        calls[0] += 1
        if calls[0] == 10:  # 7 batches per epoch: inside epoch 2 (the trainer ends the step)
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, *a)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(BM3, "calculate_loss", interrupted)
        with pytest.raises(KeyboardInterrupt):
            training.train("BM3", cfg, run_dir=tmp_path / "cut", dataset=ds, progress=False,
                           console=False)
        monkeypatch.setattr(BM3, "calculate_loss", loss)
        ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
        assert ck["epoch"] == 1 and ck["batch"] > 0
        with pytest.raises(ConfigError, match="precision cannot be changed when resuming"):
            training.resume(tmp_path / "cut", ["precision=fp32"], dataset=ds)
        resumed = training.resume(tmp_path / "cut", dataset=ds, progress=False, console=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert metric_lines(tmp_path / "cut") == metric_lines(tmp_path / "full")


def test_a_run_recorded_before_the_key_resumes_as_fp32(tmp_path):
    """run.json and checkpoints written before ``precision`` existed (no such key) continue,
    as the float32 runs they were."""
    ds = _data()
    cfg = _config("VBPR", False, "fp32", "epochs=1")
    training.train("VBPR", cfg, run_dir=tmp_path / "old", dataset=ds, progress=False,
                   console=False)
    run = json.loads((tmp_path / "old" / "run.json").read_text())
    del run["config"]["precision"]
    (tmp_path / "old" / "run.json").write_text(json.dumps(run))
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / "old" / name, weights_only=True)
        del ck["config"]["precision"]
        torch.save(ck, tmp_path / "old" / name)
    res = training.resume(tmp_path / "old", ["epochs=2"], dataset=ds, progress=False,
                          console=False)
    assert res["epochs_trained"] == 2 and res["config"]["precision"] == "fp32"


def test_precision_key_is_checked(capsys):
    assert load_config("BM3", None)["precision"] == "fp32"
    with pytest.raises(ConfigError, match=r"precision='fp16' .* is not one of fp32, bf16"):
        load_config("BM3", None, overrides=["precision=fp16"])
    with pytest.raises(ConfigError, match="names 'precision', which cannot vary over a grid"):
        load_config("BM3", None, overrides=["hyper_parameters=[precision]",
                                            "precision=[fp32,bf16]"])
    assert main(["precision=fp16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "precision" in err and "Traceback" not in err


def test_run_log_names_the_bf16_hardware(tmp_path, monkeypatch):
    from sgfd_fast.ops import _bf16_filter

    ds = _data()
    monkeypatch.setattr(_bf16_filter, "bf16_hardware", lambda device: "avx512_bf16")
    training.train("VBPR", _config("VBPR", False, "bf16", "epochs=1"), run_dir=tmp_path / "a",
                   dataset=ds, progress=False, console=False)
    assert "precision bf16: dense products on avx512_bf16" in \
        (tmp_path / "a" / "train.log").read_text()
    monkeypatch.setattr(_bf16_filter, "bf16_hardware", lambda device: None)
    training.train("VBPR", _config("VBPR", False, "bf16", "epochs=1"), run_dir=tmp_path / "b",
                   dataset=ds, progress=False, console=False)
    log = (tmp_path / "b" / "train.log").read_text()
    assert "no bf16 hardware" in log and "precision=fp32 trains faster here" in log


def test_torchrun_carries_bf16(tmp_path):
    """Two processes train BM3+SGFD in bf16 as one does: each rank builds its model from the same
    resolved config (features in bfloat16, bf16 products), and run.json records the key. Within
    1e-3 relative, not the 1e-5 of fp32 (test_distributed): a shard's rows go through GEMMs of
    another shape, whose bf16 outputs may round the other way in the last bit (8e-5 measured)."""
    from sgfd_fast.data import write_sgfd
    from test_distributed import BASE, epochs, one_process, torchrun

    data = write_sgfd(tiny_dataset(n_users=60, n_items=40), tmp_path / "tiny")
    args = ["--data-path", data, *BASE, "precision=bf16"]
    one_process(*args, "--out", tmp_path / "one")
    p = torchrun(*args, "--out", tmp_path / "two")
    assert p.returncode == 0, p.stderr[-3000:]
    ea, eb = epochs(tmp_path / "one"), epochs(tmp_path / "two")
    assert [e[0] for e in ea] == [e[0] for e in eb] == [1, 2]
    for (_, la, va), (_, lb, vb) in zip(ea, eb):
        assert list(la) == list(lb)
        for k in la:
            assert lb[k] == pytest.approx(la[k], rel=1e-3, abs=1e-6), k
        for k in va:
            assert vb[k] == pytest.approx(va[k], abs=1e-2), k
    for d in ("one", "two"):
        assert json.loads((tmp_path / d / "run.json").read_text())["config"]["precision"] == \
            "bf16"


def test_onednn_primitive_cache_is_off_unless_the_user_sets_it():
    """sgfd_fast turns oneDNN's primitive cache off (``_tensors``: cached bf16 GEMM primitives
    keep their scratchpads, and a step's shapes change with its batch) before torch creates a
    primitive, and keeps a capacity the user chose."""
    import subprocess
    import sys

    from test_distributed import ENV

    code = ("import torch, sgfd_fast._tensors, os; "
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in ENV.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    for given, want in ((None, "0"), ("64", "64")):
        extra = {} if given is None else {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": given}
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, **extra})
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.split() == [want]
