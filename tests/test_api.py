"""Python API: load a run, recommend on original ids without training items, export .npy."""

import numpy as np
import pytest
import torch

from sgfd_fast import training
from sgfd_fast.api import load_run
from sgfd_fast.config import load_config
from sgfd_fast.data import write_sgfd
from sgfd_fast.errors import ConfigError, InputError
from test_trainer import tiny_dataset, tiny_model  # noqa: F401  (tiny_model is a fixture)

OVERRIDES = ["epochs=2", "train_batch_size=32", "embedding_size=8", "device=cpu"]


@pytest.fixture
def run_dir(tmp_path, tiny_model):  # noqa: F811
    data = write_sgfd(tiny_dataset(), tmp_path / "data")
    out = tmp_path / "run"
    training.train("TinyMF", load_config("TinyMF", None, overrides=OVERRIDES), run_dir=out,
                   data={"path": data, "format": "sgfd"}, progress=False, console=False)
    return out


def known_items(ds, u):
    both = np.concatenate([ds.train, ds.valid])
    return set(both[both[:, 0] == u, 1].tolist())


def test_recommend_excludes_known_items_and_maps_ids(run_dir):
    tm = load_run(run_dir)
    ds = tm.dataset
    assert ds.item_ids is not None  # written as the asin column
    item_index = {v: i for i, v in enumerate(ds.item_ids.tolist())}
    users = list(range(ds.n_users)) if ds.user_ids is None else ds.user_ids.tolist()
    recs = tm.recommend(users, k=10)
    u_emb, i_emb = tm.model.ranking_embeddings()
    for u, rec in enumerate(recs):
        internal = [item_index[x] for x in rec]
        assert all(isinstance(x, str) and x.startswith("i") for x in rec)
        assert len(rec) == 10 and len(set(internal)) == 10
        assert not set(internal) & known_items(ds, u)
        # best first, and nothing better left out
        scores = (u_emb[u] @ i_emb.T).detach()
        rest = sorted(set(range(ds.n_items)) - known_items(ds, u) - set(internal))
        assert scores[internal].diff().le(0).all()
        assert scores[internal].min() >= scores[rest].max()


def test_recommend_more_than_available(run_dir):
    tm = load_run(run_dir)
    rec = tm.recommend([0], k=1000)[0]
    assert len(rec) == tm.dataset.n_items - len(known_items(tm.dataset, 0))


def test_recommend_with_original_user_ids(tmp_path, tiny_model):  # noqa: F811
    ds = tiny_dataset()
    out = tmp_path / "mem"
    training.train("TinyMF", load_config("TinyMF", None, overrides=OVERRIDES), run_dir=out,
                   dataset=ds, progress=False, console=False)
    with pytest.raises(ConfigError, match="in-memory dataset 'tiny'; pass that Dataset"):
        load_run(out)
    tm = load_run(out, dataset=ds)
    recs = tm.recommend(["u3", "u0"], k=5)
    for uid, rec in zip((3, 0), recs):
        assert not {int(x[1:]) for x in rec} & known_items(ds, uid)
    assert recs[1] == tm.recommend(["u0"], k=5)[0]
    with pytest.raises(InputError, match="unknown user id 'nobody'"):
        tm.recommend(["nobody"], k=5)
    with pytest.raises(InputError, match="k must be a positive int"):
        tm.recommend(["u0"], k=0)
    with pytest.raises(InputError, match="a list of user ids"):
        tm.recommend("u0", k=3)


def test_export(run_dir, tmp_path):
    tm = load_run(run_dir)
    files = tm.export(tmp_path / "exp")
    assert set(files) >= {"user_embeddings", "item_embeddings", "student_image", "item_ids"}
    u = np.load(files["user_embeddings"])
    i = np.load(files["item_embeddings"])
    assert u.shape == (tm.dataset.n_users, 8) and i.shape == (tm.dataset.n_items, 8)
    assert np.allclose(u, tm.model.user.weight.detach().numpy())
    assert np.allclose(np.load(files["student_image"]), i[:, :2] * 2)
    assert np.load(files["item_ids"]).tolist() == tm.dataset.item_ids.tolist()


def test_load_run_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no results.json"):
        load_run(tmp_path)


def test_loaded_model_matches_training(run_dir):
    import json

    tm = load_run(run_dir)
    from sgfd_fast.evaluation import evaluate

    res = json.loads((run_dir / "results.json").read_text())
    with torch.no_grad():
        assert evaluate(tm.model, tm.dataset, "test", tm.config) == res["test"]
