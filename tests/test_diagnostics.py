"""SGFD diagnostics in metrics.jsonl: the SGFD losses' share of the student's gradient and the
teacher's/student's label accuracy are what they say, and recording them changes no number."""

import json

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast import training
from sgfd_fast.config import load_config
from sgfd_fast.models import build_model
from sgfd_fast.training import diagnostics

from test_trainer import tiny_dataset


def _config(*overrides):
    return load_config("BM3", None, overrides=["epochs=3", "train_batch_size=32",
                                               "embedding_size=16", "device=cpu", "topk=[10,20]",
                                               *overrides])


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(tmp_path, name, *overrides):
    return training.train("BM3", _config(*overrides), run_dir=tmp_path / name,
                          dataset=tiny_dataset(), progress=False, console=False)


def test_recorded_every_epoch_without_changing_training(tmp_path, monkeypatch):
    on = _train(tmp_path, "on")
    lines = _lines(tmp_path / "on")
    for line in lines:
        d = line["sgfd"]
        assert d["grad_share"] > 0
        assert set(d["teacher_acc"]) == set(d["student_acc"]) == {"image"}
        assert 0 <= d["teacher_acc"]["image"] <= 1
    monkeypatch.setattr(diagnostics, "gradient_share", lambda model, parts: None)
    monkeypatch.setattr(diagnostics, "label_accuracy", lambda model: None)
    off = _train(tmp_path, "off")
    assert off["valid"] == on["valid"] and off["test"] == on["test"]
    for a, b in zip(lines, _lines(tmp_path / "off"), strict=True):
        assert "sgfd" not in b
        assert a["losses"] == b["losses"] and a["valid"] == b["valid"]


def test_absent_without_sgfd_and_zero_without_sgfd_losses(tmp_path):
    _train(tmp_path, "plain", "sgfd=false")
    assert all("sgfd" not in line for line in _lines(tmp_path / "plain"))
    _train(tmp_path, "control", "ce_weight=0", "kd_weight=0")
    assert all(line["sgfd"]["grad_share"] == 0 for line in _lines(tmp_path / "control"))


def _student_grads(model, loss):
    params = list(model.sgfd.students.parameters())
    for p in params:
        p.grad = None
    loss.backward(retain_graph=True)
    return torch.cat([p.grad.flatten() for p in params])


def test_values_match_a_direct_computation():
    ds = tiny_dataset()
    torch.manual_seed(0)
    model = build_model("BM3", ds, _config("kd_weight=1", "ce_weight=1").points()[0])
    users, items = torch.as_tensor(ds.train[:32, 0]), torch.as_tensor(ds.train[:32, 1])
    parts = model.calculate_loss(users, items)
    share = diagnostics.gradient_share(model, parts)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    want = _student_grads(model, parts["sgfd"]).norm() / _student_grads(model, parts["loss"]).norm()
    assert share == pytest.approx(want.item(), rel=1e-5)

    acc = diagnostics.label_accuracy(model)
    s = model.sgfd
    with torch.no_grad():
        for key, f in (("teacher_acc", s.teacher(0)), ("student_acc", s.student(0))):
            pred = F.linear(f, s.classifiers[0].weight, s.classifiers[0].bias).argmax(1)
            assert acc[key]["image"] == (pred == s.labels).sum().item() / ds.n_items
    assert model.training
