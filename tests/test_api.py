"""Python API: load a run, recommend on original ids without training items, export .npy."""

import json

import numpy as np
import pytest
import torch

from sgfd_fast import training
from sgfd_fast.api import load_run
from sgfd_fast.config import load_config
from sgfd_fast.data import write_sgfd
from sgfd_fast.errors import ConfigError, InputError, RunDirectoryError
from test_trainer import tiny_dataset

OVERRIDES = ["epochs=2", "train_batch_size=32", "embedding_size=8", "device=cpu",
             "topk=[10,20]"]  # the tiny data have 30 items


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
    rec = tm.recommend([0], k=tm.dataset.n_items)[0]
    assert len(rec) == tm.dataset.n_items - len(known_items(tm.dataset, 0))


@pytest.mark.parametrize("k", [10**20, 2**63, 31])  # the tiny dataset has 30 items
def test_recommend_k_beyond_the_items_is_an_input_error(run_dir, k):
    tm = load_run(run_dir)
    with pytest.raises(InputError, match=rf"k={k} is more than the dataset's 30 items; give "
                                         rf"k <= 30"):
        tm.recommend([0], k=k)


@pytest.mark.parametrize("users, match", [
    ([-1], r"user index -1 \(position 0\) is outside the dataset's users 0 to 39"),
    (np.array([0, 40]), r"user index 40 \(position 1\) is outside"),
    (torch.tensor([0, -3]), r"user index -3 \(position 1\)"),
    ([1.5], r"users must be internal user indices \(ints\), got dtype float64 \(first 1.5\)"),
    ([True], r"got dtype bool"),
    (["u1"], r"got dtype <U2"),
    ([[0, 1]], r"a 1-D sequence of internal user indices, got shape \(1, 2\)"),
])
def test_scores_refuses_what_is_no_user_index(run_dir, users, match):
    tm = load_run(run_dir)
    with pytest.raises(InputError, match="scores: .*" + match):
        tm.scores(users)


def test_scores_of_user_indices(run_dir):
    tm = load_run(run_dir)
    u, i = tm.model.ranking_embeddings()
    for users in ([2, 0], np.array([2, 0], dtype=np.int32), torch.tensor([2, 0])):
        assert torch.equal(tm.scores(users), (u[[2, 0]] @ i.T).detach())
    assert tm.scores([]).shape == (0, tm.dataset.n_items)


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


def test_export_refuses_a_file_and_a_non_empty_directory(run_dir, tmp_path):
    tm = load_run(run_dir)
    f = tmp_path / "f.npy"
    f.write_text("x")
    with pytest.raises(InputError, match=f"export: {f} is a file; give a new or empty"):
        tm.export(f)
    with pytest.raises(InputError, match=f"export: cannot create {f / 'sub'}: "):
        tm.export(f / "sub")
    with pytest.raises(InputError, match="export: the directory is ''; give a path"):
        tm.export("", overwrite=True)
    out = tmp_path / "exp"
    first = tm.export(out)
    before = {p: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match=r"is not empty \(item_embeddings.npy, item_ids.npy, "
                                         r"student_image.npy, \.\.\.\); .*overwrite=True"):
        tm.export(out)
    assert {p: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert tm.export(out, overwrite=True) == first
    empty = tmp_path / "empty"
    empty.mkdir()
    assert set(tm.export(empty)) == set(first)


def test_load_run_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no results.json"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope'}: no such directory; load_run "
                                          f"takes the directory a training wrote"):
        load_run(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'f'}: is a file"):
        load_run(tmp_path / "f")
    (tmp_path / "results.json").write_text('{"model": "BM3", "te')   # damaged by hand
    with pytest.raises(RunDirectoryError, match="results.json is not valid JSON"):
        load_run(tmp_path)
    good = {"model": "BM3", "dataset": "tiny", "sgfd": True, "protocol": "standard",
            "valid_metric": "recall@20", "valid": {}, "test": {}, "best_epoch": 1,
            "epochs_trained": 1, "early_stopped": True, "config": {}, "checkpoint": "best.pt",
            "data": None}
    for record, message in [([], "holds a JSON list, not an object"),
                            ({"test": {}}, "lacks model, .*valid, best_epoch, .*checkpoint"),
                            ({**good, "checkpoint": 5}, "has checkpoint=5 of the wrong type"),
                            ({**good, "best_epoch": True}, "has best_epoch=True of the wrong")]:
        (tmp_path / "results.json").write_text(json.dumps(record))  # JSON, not the record
        with pytest.raises(RunDirectoryError, match="results.json " + message):
            load_run(tmp_path)
    with pytest.raises(ConfigError, match="load_run: the run directory is ''; give a path"):
        load_run("")


def test_loaded_model_matches_training(run_dir):
    import json

    tm = load_run(run_dir)
    from sgfd_fast.evaluation import evaluate

    res = json.loads((run_dir / "results.json").read_text())
    with torch.no_grad():
        assert evaluate(tm.model, tm.dataset, "test", tm.config) == res["test"]


def test_load_run_reads_a_best_pt_with_optimizer_state(run_dir):
    # run directories written before best.pt held the model alone: the full trainer state
    import json

    from sgfd_fast.evaluation import evaluate

    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    torch.save({**last, "model": best["model"]}, run_dir / "best.pt")
    tm = load_run(run_dir)
    res = json.loads((run_dir / "results.json").read_text())
    with torch.no_grad():
        assert evaluate(tm.model, tm.dataset, "test", tm.config) == res["test"]


def _trained(tmp_path, ds):
    out = tmp_path / "mem"
    training.train("TinyMF", load_config("TinyMF", None, overrides=OVERRIDES), run_dir=out,
                      dataset=ds, progress=False, console=False)
    return load_run(out, dataset=ds)


def expected_top(scores, ds, u, k, drop=()):
    """Brute force: items not known to user u nor in ``drop``, by (-score, id)."""
    cands = sorted((-float(scores[i]), i) for i in range(ds.n_items)
                   if i not in known_items(ds, u) and i not in drop)
    return [i for _, i in cands[:k]]


def test_recommend_names_every_item_and_user_uniquely(tmp_path, tiny_model):  # noqa: F811
    ds = tiny_dataset()
    ds.user_ids = ds.user_ids.astype(object)
    ds.item_ids[:3] = ""                 # no original id
    ds.item_ids[5] = ds.item_ids[6]      # two items share one
    ds.user_ids[1] = ""
    ds.user_ids[3] = ds.user_ids[4] = "twin"
    tm = _trained(tmp_path, ds)
    unique = {v: i for i, v in enumerate(ds.item_ids.tolist()) if i not in (0, 1, 2, 5, 6)}
    recs = tm.recommend([0, 1, "u2", 3], k=ds.n_items)
    for u, rec in zip((0, 1, 2, 3), recs):
        internal = [unique[x] if isinstance(x, str) else x for x in rec]
        assert len(set(internal)) == len(rec)
        assert set(internal) == set(range(ds.n_items)) - known_items(ds, u)
        assert all(isinstance(x, int) for x, i in zip(rec, internal) if i in (0, 1, 2, 5, 6))
    assert recs[2] == tm.recommend(["u2"], k=ds.n_items)[0]
    with pytest.raises(InputError, match="unknown user id ''"):
        tm.recommend([""], k=3)
    with pytest.raises(InputError, match="'twin' is the original id of 2 users"):
        tm.recommend(["twin"], k=3)
    with pytest.raises(InputError, match="internal user index"):
        tm.recommend([ds.n_users], k=3)
    with pytest.raises(InputError, match="expected an original id"):
        tm.recommend([1.0], k=3)


def test_recommend_ranks_in_bounded_batches_with_masked_topk(run_dir, monkeypatch):
    from sgfd_fast import evaluation

    tm = load_run(run_dir)
    users = list(range(tm.dataset.n_users))
    want = tm.recommend(users, k=7)
    seen = []
    real = evaluation.ops.masked_topk

    def spy(users_b, *args, **kwargs):
        seen.append(users_b.shape[0])
        return real(users_b, *args, **kwargs)

    monkeypatch.setattr(evaluation.ops, "masked_topk", spy)
    assert tm.recommend(users, k=7, batch_size=6) == want
    assert max(seen) <= 6 and sum(seen) == len(users)
    with pytest.raises(InputError, match="batch_size must be a positive int"):
        tm.recommend(users, k=7, batch_size=0)


@pytest.mark.parametrize("scorer", ["embeddings", "score_users"])
def test_recommend_skips_nan_scores_on_every_path(tmp_path, tiny_model, monkeypatch,  # noqa: F811
                                                  scorer):
    ds = tiny_dataset(with_ids=False)
    tm = _trained(tmp_path, ds)
    nan_item = 4
    with torch.no_grad():
        tm.model.item.weight[nan_item] = float("nan")
    scores = (tm.model.user.weight @ tm.model.item.weight.T).detach()
    batches = []
    if scorer == "score_users":   # the path MAML takes: a dense score block per batch
        def score_users(users):
            batches.append(users.numel())
            return scores[users]
        monkeypatch.setattr(tm.model, "ranking_embeddings", lambda: None)
        monkeypatch.setattr(tm.model, "score_users", score_users)
    users = list(range(ds.n_users))
    for k in (5, ds.n_items):
        recs = tm.recommend(users, k=k, batch_size=8)
        assert recs == [expected_top(scores[u], ds, u, k, drop={nan_item}) for u in users]
    assert all(b <= 8 for b in batches)


def _disk_full_on_call(monkeypatch, n):
    """np.save writes part of its array and then fails with ENOSPC on its n-th call."""
    import errno

    real, calls = np.save, []

    def save(f, a, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, a, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)


def test_export_onto_a_full_disk_leaves_no_partial_file(run_dir, tmp_path, monkeypatch):
    tm = load_run(run_dir)
    out = tmp_path / "exp"
    with monkeypatch.context() as m:
        _disk_full_on_call(m, 2)
        with pytest.raises(InputError, match=rf"export: cannot write {out}/item_embeddings.npy: "
                                             rf"No space left on device; nothing was exported"):
            tm.export(out)
    assert not out.exists()  # it created the directory: removed again
    first = tm.export(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as m:
        _disk_full_on_call(m, 3)
        with pytest.raises(InputError, match="No space left on device; nothing was exported"):
            tm.export(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export intact
    assert tm.export(out, overwrite=True) == first


def test_export_and_load_run_expand_the_home_directory(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    tm = load_run(f"~/{run_dir.relative_to(tmp_path)}")
    files = tm.export("~/exported")
    assert files["user_embeddings"] == tmp_path / "exported" / "user_embeddings.npy"
    assert files["user_embeddings"].exists() and not (tmp_path / "~").exists()


def test_load_run_checks_the_data_and_best_pt(run_dir, tmp_path):
    """Issue 22: data of the same shape but other values were used silently."""
    from sgfd_fast.data.formats.sgfd import SGFD_LABELS
    from sgfd_fast.errors import DataError

    data = tmp_path / "data"
    labels = np.load(data / SGFD_LABELS)
    np.save(data / SGFD_LABELS, (labels + 1) % 3)  # the same shape, other labels
    with pytest.raises(DataError, match="the data differ from those .* was trained on .*; "
                                        "restore them, or pass allow_data_change=True"):
        load_run(run_dir)
    assert load_run(run_dir, allow_data_change=True).recommend([0], k=3)
    np.save(data / SGFD_LABELS, labels)
    other = tmp_path / "other"
    training.train("TinyMF", load_config("TinyMF", None, overrides=[*OVERRIDES,
                                                                    "embedding_size=16"]),
                   run_dir=other, data={"path": data, "format": "sgfd"}, progress=False,
                   console=False)
    (run_dir / "best.pt").write_bytes((other / "best.pt").read_bytes())
    with pytest.raises(RunDirectoryError, match="best.pt holds another model or configuration "
                                                "than .*results.json reports"):
        load_run(run_dir)


@pytest.mark.parametrize("edit, match", [
    ("delete", r"cannot read .*run.json: No such file or directory; .*restore it"),
    ("no fingerprint", "run.json lacks data_fingerprint"),
    ("no sha256", "has data_fingerprint=.*which lacks sha256"),
])
def test_load_run_refuses_a_run_without_its_data_fingerprint(run_dir, tmp_path, edit, match):
    """Review of issue 22: without run.json, or its fingerprint, other data were used silently."""
    from sgfd_fast.data.formats.sgfd import SGFD_LABELS

    labels = np.load(tmp_path / "data" / SGFD_LABELS)
    np.save(tmp_path / "data" / SGFD_LABELS, (labels + 1) % 3)  # other data of the same shape
    if edit == "delete":
        (run_dir / "run.json").unlink()
    else:
        run = json.loads((run_dir / "run.json").read_text())
        if edit == "no fingerprint":
            del run["data_fingerprint"]
        else:
            del run["data_fingerprint"]["sha256"]
        (run_dir / "run.json").write_text(json.dumps(run))
    with pytest.raises(RunDirectoryError, match=match):
        load_run(run_dir)


@pytest.mark.parametrize("name, text, match", [
    ("results.json", '{"best_epoch": 9, ', "results.json has the key 'best_epoch' twice"),
    ("results.json", '{"x": Infinity, ', "results.json holds Infinity, which is not a JSON"),
    ("run.json", '{"model": "GRCN", ', "run.json has the key 'model' twice"),
])
def test_load_run_refuses_a_key_twice_or_a_non_finite_number(run_dir, name, text, match):
    """Review of issue 22: the last of two keys won silently."""
    path = run_dir / name
    path.write_text(path.read_text().replace("{", text, 1))
    with pytest.raises(RunDirectoryError, match=match):
        load_run(run_dir)


@pytest.mark.parametrize("users, match", [
    ([2**64], r"got dtype object \(first 18446744073709551616\); 1\.5, True or an int beyond "
              r"int64 is no user"),
    (np.array([0], dtype=object), r"got dtype object \(first 0\)"),
    ([[0], [1, 2]], r"a 1-D sequence of internal user indices \("),
])
def test_scores_refuses_ints_beyond_int64_and_object_arrays(run_dir, users, match):
    """Review of issue 22: an AttributeError was raised inside the error message."""
    with pytest.raises(InputError, match=r"^scores: users must be .*" + match):
        load_run(run_dir).scores(users)


@pytest.mark.parametrize("call, match", [
    (lambda run: load_run(run, dataset="office"), r"load_run: dataset must be a Dataset object "
                                                  r".* or None .*, got str 'office'"),
    (lambda run: load_run(run, dataset=42), r"load_run: dataset must be a Dataset .*, got int 42"),
    (lambda run: load_run(None), r"load_run: run_dir must be a path \(a str or os\.PathLike\), "
                                 r"got NoneType None"),
    (lambda run: load_run(run, allow_data_change="no"), r"load_run: allow_data_change must be "
                                                        r"True or False, got str 'no'"),
    (lambda run: load_run(run).export(None), r"export: out_dir must be a path .*, got NoneType"),
    (lambda run: load_run(run).export(123), r"export: out_dir must be a path .*, got int 123"),
    (lambda run: load_run(run).export(run.parent / "x", overwrite="yes"),
     r"export: overwrite must be True or False, got str 'yes'"),
])
def test_api_arguments_of_the_wrong_kind_are_input_errors(run_dir, call, match):
    """Review of issue 22: a raw AttributeError or TypeError, or 'no' taken as true."""
    with pytest.raises(InputError, match=match):
        call(run_dir)
    assert not (run_dir.parent / "x").exists()
