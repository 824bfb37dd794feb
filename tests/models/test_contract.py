"""The trainer-model contract, checked on every registered model (``models.MODELS``), with and
without SGFD where the model consumes item features: adding a model to the registry enrols it.

Per variant: one step gives finite scalar parts and a gradient on every trainable parameter; the
ranking has the evaluation's shape; a checkpoint round trip restores the same loss and ranking;
the loss split over 2 processes (in-process shards, as the trainer splits a batch) has the
gradient of the whole batch."""

import io
import re

import pytest
import torch

from sgfd_fast.config import load_config
from sgfd_fast.errors import ConfigError, DataError
from sgfd_fast.evaluation import LEGACY_METRICS, evaluate, top_k_items
from sgfd_fast.graph import CSR
from sgfd_fast.models import MODELS, build_model
from test_distributed import assert_shards_add_up

from conftest import make_dataset, training_batch


def _config(name, sgfd):
    return load_config(name, None, overrides=[("embedding_size", 8), ("sgfd", sgfd),
                                              ("topk", [1, 5]), ("valid_metric", "recall@5")]
                       ).points()[0]


def _build(name, sgfd, seed=0, ds=None):
    torch.manual_seed(seed)
    return build_model(name, ds or make_dataset(), _config(name, sgfd))


def _variants():
    """(model, sgfd) for every registered model: sgfd=true where it consumes item features."""
    out = []
    for name in MODELS:
        out.append((name, False))
        if _build(name, False).features is not None:
            out.append((name, True))
    return out


VARIANTS = _variants()


def _batch(model, ds):
    users, items, neg = training_batch(ds, n_neg=max(model.n_negatives, 1))
    return users, items, neg if model.n_negatives else None


@pytest.mark.parametrize("name", list(MODELS))
def test_sgfd_only_where_item_features_are_consumed(name):
    if _build(name, False).features is None:
        with pytest.raises(ConfigError, match="sgfd=true.*no item features"):
            _build(name, True)
    else:
        assert _build(name, True).sgfd is not None


@pytest.mark.parametrize("name,sgfd", VARIANTS)
def test_one_step_reaches_every_trainable_parameter(name, sgfd):
    ds = make_dataset()
    model = _build(name, sgfd, ds=ds)
    assert model.legacy_metrics in LEGACY_METRICS
    parts = model.calculate_loss(*_batch(model, ds))
    assert all(v.dim() == 0 and torch.isfinite(v) for v in parts.values()), parts
    assert ("sgfd" in parts) == sgfd
    parts["loss"].backward()
    for k, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, k
    model.post_step()
    model.begin_epoch(1, 7)


def _ranking(model, ds, k=5):
    known = CSR.from_coo(ds.train[:, 0], ds.train[:, 1], None, ds.n_users, ds.n_items)
    users = torch.arange(ds.n_users)
    with torch.no_grad():
        return top_k_items(model.eval(), users, known, k, 4)


@pytest.mark.parametrize("name,sgfd", VARIANTS)
def test_ranking_shape_and_checkpoint_round_trip(name, sgfd):
    ds = make_dataset()
    model = _build(name, sgfd, ds=ds)
    batch = _batch(model, ds)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.calculate_loss(*batch)["loss"].backward()
    opt.step()
    model.post_step()
    values, indices = _ranking(model, ds)
    assert values.shape == indices.shape == (ds.n_users, 5)
    assert ((indices >= -1) & (indices < ds.n_items)).all()
    metrics = evaluate(model, ds, "test", _config(name, sgfd))
    assert all(0 <= v <= 1 for v in metrics.values())

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = _build(name, sgfd, seed=1, ds=ds)   # other initial weights, then the checkpoint
    restored.load_state_dict(torch.load(buf))
    v2, i2 = _ranking(restored, ds)
    assert torch.equal(i2, indices) and torch.equal(v2, values)
    model.train()
    restored.train()
    want = model.calculate_loss(*batch)["loss"]
    assert torch.equal(restored.calculate_loss(*batch)["loss"], want)


@pytest.mark.parametrize("name,sgfd", VARIANTS)
def test_one_and_two_processes_give_the_same_gradient(name, sgfd):
    ds = make_dataset()
    model = _build(name, sgfd, ds=ds).double()
    assert_shards_add_up(model, *_batch(model, ds), world=2)


def test_the_backbones_an_error_suggests_do_what_it_says():
    """LightGCN's sgfd=true error and MGCN's one-modality error name the backbones to use
    instead, read from MODELS (a new backbone is never missing): each one named consumes item
    features, and MGCN's builds with SGFD on a one-modality dataset."""
    with pytest.raises(ConfigError) as e:
        _build("LightGCN", True)
    named = re.search(r"with item features \(([^)]*)\)", str(e.value)).group(1).split(", ")
    assert set(named) == {n for n in MODELS if _build(n, False).features is not None}
    one = make_dataset()
    one.features = dict(list(one.features.items())[:1])
    with pytest.raises(DataError) as e:
        _build("MGCN", False, ds=one)
    named = re.search(r"takes one modality \(([^)]*)\)", str(e.value)).group(1).split(", ")
    assert set(named) == set(MODELS) - {"MGCN", "LightGCN"}
    for name in named:
        assert _build(name, True, ds=one).sgfd is not None
