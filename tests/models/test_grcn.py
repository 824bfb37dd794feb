"""GRCN: forward against a dense transcription of the released formulas (docs/RELEASED_CODE.md
§5.3), loss parts, gradient flow, training steps, and what the two protocols change."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.models import GRCN, build_model


def grcn_config(**overrides):
    cfg = dict(embedding_size=8, num_routing=3, reg_weight=1e-3, protocol="standard", sgfd=True,
               sgfd_loss="official", ce_weight=1.0, kd_weight=1.0, t_decay=100.0,
               collapse_teacher=True)
    cfg.update(overrides)
    return cfg


def masked_softmax_aggregate(q, k, v, mask):
    """Dense GAT: row i attends over the sources j with mask[i, j]; rows without any give 0."""
    s = (q @ k.T).masked_fill(~mask, -torch.inf)
    alpha = torch.nan_to_num(torch.softmax(s, 1), nan=0.0)
    return alpha @ v, alpha


def dense_transcription(m, ds, routed):
    """The released forward written densely (Model_routing.py L95-308); ``routed`` sends the
    routing messages item -> user (standard) instead of the released no-op."""
    nu, ni = ds.n_users, ds.n_items
    adj = torch.zeros(nu + ni, nu + ni, dtype=torch.bool)
    adj[ds.train[:, 0], nu + ds.train[:, 1]] = True
    adj = adj | adj.T
    reps, alphas = [], []
    for j in range(len(m.modalities)):
        raw = m.sgfd.student(j) if m.sgfd is not None else \
            m.extractors[j](m.features.rows(j))
        c = F.normalize(F.leaky_relu(raw))
        pref = F.normalize(m.preferences[j])
        for _ in range(m.num_routing if routed else 0):
            msg, _ = masked_softmax_aggregate(pref, c, c, adj[:nu, nu:])
            pref = F.normalize(pref + msg)
        x = torch.cat([pref, c])
        msg, alpha = masked_softmax_aggregate(x, x, x, adj)
        reps.append(x + msg)
        alphas.append(alpha)
    # edge j -> i (row i = target) weighted by the confidence of its source j
    w = torch.stack([a * m.confidence[:, jj][None, :] for jj, a in enumerate(alphas)]).amax(0)
    w = w * adj
    x0 = F.normalize(m.id_embedding)
    x1 = w @ x0
    x2 = w @ x1
    return torch.cat([x0 + x1 + x2] + reps, 1)


@pytest.mark.parametrize("sgfd", [True, False])
@pytest.mark.parametrize("protocol", ["standard", "legacy"])
def test_forward_matches_dense_transcription(tiny, sgfd, protocol):
    ds = tiny()
    torch.manual_seed(0)
    m = GRCN(ds, grcn_config(sgfd=sgfd, protocol=protocol)).double()
    rep, _ = m.forward()
    want = dense_transcription(m, ds, routed=protocol == "standard")
    torch.testing.assert_close(rep, want)
    assert rep.shape == (ds.n_users + ds.n_items, 8 * (1 + len(ds.features)))


def test_routing_differs_between_protocols_only_in_routing(tiny):
    ds = tiny()
    torch.manual_seed(0)
    std = GRCN(ds, grcn_config())
    legacy = GRCN(ds, grcn_config(protocol="legacy"))
    no_routing = GRCN(ds, grcn_config(num_routing=0))
    legacy.load_state_dict(std.state_dict(), strict=False)
    no_routing.load_state_dict(std.state_dict())
    rep_std, rep_legacy = std.forward()[0], legacy.forward()[0]
    # the released routing is a no-op: legacy == no routing at all
    torch.testing.assert_close(rep_legacy, no_routing.forward()[0])
    # standard routing moves the preferences of users with training items
    d = 8
    users_with_items = np.unique(ds.train[:, 0])
    delta = (rep_std[:ds.n_users, d:2 * d] - rep_legacy[:ds.n_users, d:2 * d]).abs().sum(1)
    assert bool((delta[users_with_items] > 1e-4).all())


@pytest.mark.parametrize("sgfd", [True, False])
@pytest.mark.parametrize("protocol", ["standard", "legacy"])
def test_loss_parts_and_gradient_flow(tiny, sgfd, protocol, batch):
    ds = tiny()
    torch.manual_seed(1)
    m = build_model("GRCN", ds, grcn_config(sgfd=sgfd, protocol=protocol))
    assert m.n_negatives == 1
    users, items, neg = batch(ds)
    parts = m.calculate_loss(users, items, neg)
    expected = {"loss", "bpr", "reg"} | ({"sgfd", "sgfd_ce", "sgfd_ld", "sgfd_fd",
                                          "sgfd_fusion"} if sgfd else set())
    assert set(parts) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in parts.values())
    parts["loss"].backward()
    must = {"id_embedding", "confidence", "preferences.0", "preferences.1"}
    must |= {"sgfd.students.0.weight", "sgfd.teachers.1.0.weight", "sgfd.classifiers.0.weight",
             "sgfd.fusion.weight"} if sgfd else {"extractors.0.weight", "extractors.1.weight"}
    grads = {n: p.grad for n, p in m.named_parameters()}
    for name in must:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_loss_matches_released_formula(tiny, batch):
    ds = tiny()
    torch.manual_seed(2)
    m = GRCN(ds, grcn_config(sgfd=False)).double()
    users, items, neg = batch(ds)
    rep, _ = m.forward()
    nu = ds.n_users
    # Net.loss: users [u, u], items [p, n] interleaved, score.view(-1, 2) @ [1, -1]
    ut = torch.stack([users, users], 1).reshape(-1)
    it = torch.stack([items, neg[:, 0]], 1).reshape(-1) + nu
    score = (rep[ut] * rep[it]).sum(1).view(-1, 2)
    bpr = -torch.mean(torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]).double())))
    reg = (m.id_embedding[ut] ** 2 + m.id_embedding[it] ** 2).mean()
    for p in m.preferences:
        reg = reg + (p[ut] ** 2).mean()
    parts = m.calculate_loss(users, items, neg)
    torch.testing.assert_close(parts["bpr"], bpr.detach())
    torch.testing.assert_close(parts["reg"], reg.detach())
    torch.testing.assert_close(parts["loss"].detach(), (bpr + 1e-3 * reg).detach())


def test_gradients_match_released_formula(tiny, batch):
    # calculate_loss gathers the batch's rows of rep once; the released loss indexes per group
    ds = tiny()
    torch.manual_seed(3)
    m = GRCN(ds, grcn_config(sgfd=False)).double()
    users, items, neg = batch(ds)
    nu = ds.n_users
    ut = torch.stack([users, users], 1).reshape(-1)
    it = torch.stack([items, neg[:, 0]], 1).reshape(-1) + nu
    rep, _ = m.forward()
    score = (rep[ut] * rep[it]).sum(1).view(-1, 2)
    bpr = -torch.mean(torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]).double())))
    reg = (m.id_embedding[ut] ** 2 + m.id_embedding[it] ** 2).mean()
    for p in m.preferences:
        reg = reg + (p[ut] ** 2).mean()
    params = [p for p in m.parameters() if p.requires_grad]
    want = torch.autograd.grad(bpr + 1e-3 * reg, params, allow_unused=True)
    got = torch.autograd.grad(m.calculate_loss(users, items, neg)["loss"], params,
                              allow_unused=True)
    assert sum(w is not None for w in want) >= 4
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("sgfd", [True, False])
def test_training_steps_change_parameters_and_lower_the_loss(tiny, sgfd, batch, train):
    ds = tiny()
    torch.manual_seed(3)
    m = GRCN(ds, grcn_config(sgfd=sgfd))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    losses = train(m, 8, 1e-2, *batch(ds))
    assert losses[-1] < losses[0]
    for n, p in m.named_parameters():
        assert not torch.equal(p, before[n]), n


def test_standard_evaluation_recomputes_representations(tiny, batch):
    ds = tiny()
    torch.manual_seed(4)
    m = GRCN(ds, grcn_config())
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    users, items, neg = batch(ds)
    m.calculate_loss(users, items, neg)["loss"].backward()
    opt.step()
    with torch.no_grad():
        u, i = m.ranking_embeddings()
        rep = m.forward()[0]
    assert u.shape == (ds.n_users, 24) and i.shape == (ds.n_items, 24)
    assert torch.isfinite(u).all() and torch.isfinite(i).all()
    torch.testing.assert_close(torch.cat([u, i]), rep)  # the post-step parameters


def test_legacy_evaluation_uses_last_training_forward(tiny, batch):
    ds = tiny()
    torch.manual_seed(5)
    m = GRCN(ds, grcn_config(protocol="legacy"))
    assert m.legacy_mask_value == 1e-5
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    users, items, neg = batch(ds)
    with torch.no_grad():
        pre_step = m.forward()[0]
        torch.testing.assert_close(torch.cat(m.ranking_embeddings()), pre_step)  # none stored yet
    m.calculate_loss(users, items, neg)["loss"].backward()
    opt.step()
    with torch.no_grad():
        stale = torch.cat(m.ranking_embeddings())
        fresh = m.forward()[0]
    torch.testing.assert_close(stale, pre_step)        # released self.result: pre-step rep
    assert not torch.allclose(stale, fresh)
    # the stale copy is checkpointed, so the selected epoch's copy is what gets evaluated
    state = m.state_dict()
    assert torch.equal(state["legacy_rep"], stale) and bool(state["legacy_rep_set"])
    other = GRCN(ds, grcn_config(protocol="legacy"))
    other.load_state_dict(state)
    torch.testing.assert_close(torch.cat(other.ranking_embeddings()), stale)


def test_graphs_move_with_the_model_and_stay_out_of_checkpoints(tiny, batch):
    ds = tiny()
    torch.manual_seed(0)
    m = GRCN(ds, grcn_config())
    m.calculate_loss(*batch(ds))           # routes, so it fills both graphs' transpose caches
    assert m.graph.n_rows == ds.n_users + ds.n_items and m.route.n_cols == ds.n_items
    assert set(m.state_dict()) == {n for n, _ in m.named_parameters()}
    m.to("meta")
    for g in (m.graph, m.route):
        assert g.device.type == "meta" and g.rowptr.dtype == torch.int64
        assert all(t.device.type == "meta" for t in g.transpose())


def test_student_features_are_what_the_graph_consumes(tiny):
    ds = tiny()
    m = GRCN(ds, grcn_config())
    feats = m.student_features()
    assert list(feats) == list(ds.features)
    for j, f in enumerate(feats.values()):
        assert f.shape == (ds.n_items, 8)
        torch.testing.assert_close(f, F.normalize(F.leaky_relu(m.sgfd.student(j))).detach())


def cli_one_epoch_sgfd_on_and_off(tmp_path, dataset, model, *overrides):
    """``python -m sgfd_fast.train`` for one epoch with sgfd true and false (a two-point grid from
    the same seed) on ``dataset`` written in SGFD format; checks results.json, the per-epoch
    losses, and that every trainable parameter moved away from its initial value."""
    import json
    import math
    import subprocess
    import sys

    from sgfd_fast.config import load_config
    from sgfd_fast.data import load_data, write_sgfd
    from sgfd_fast.training import seed_everything
    from sgfd_fast.evaluation import METRICS

    data = write_sgfd(dataset, tmp_path / "data")
    out = tmp_path / "run"
    args = ["epochs=1", "embedding_size=8", "train_batch_size=16", "eval_batch_size=7",
            "device=cpu", "valid_ratio=0.3", "hyper_parameters=[sgfd]", "sgfd=[true,false]",
            "topk=[10,20]", *overrides]  # cut-offs within the data's items
    proc = subprocess.run([sys.executable, "-m", "sgfd_fast.train", "-m", model, "--data-path",
                           str(data), "--format", "sgfd", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    keys = {f"{m}@{k}" for m in METRICS for k in (10, 20)}
    for split in ("valid", "test"):
        assert set(res[split]) == keys and all(math.isfinite(v) for v in res[split].values())
    config = load_config(model, None, overrides=args)
    for i, point in enumerate(config.points()):
        run = out / f"grid-{i}"
        line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert line["losses"] and all(math.isfinite(v) for v in line["losses"].values())
        assert ("sgfd" in line["losses"]) == point["sgfd"]
        trained = torch.load(run / "last.pt", weights_only=True)["model"]
        seed_everything(point["seed"])  # the trainer seeds, then builds the model
        initial = build_model(model, load_data({"path": str(data), "format": "sgfd"}, point),
                              point)
        for name, p in initial.named_parameters():
            assert not torch.equal(p, trained[name]), f"{name} unchanged, sgfd={point['sgfd']}"


def cli_dataset(n_users=30, n_items=25, seed=0):
    """Every item occurs in the interactions (the SGFD format infers the item count from them)."""
    from sgfd_fast.data import Dataset

    rng = np.random.default_rng(seed)
    pairs = {(u % n_users, i) for u, i in enumerate(range(n_items))}
    for u in range(n_users):
        pairs |= {(u, int(i)) for i in rng.choice(n_items, size=5, replace=False)}
    pairs = np.array(sorted(pairs), dtype=np.int64)
    test = rng.random(len(pairs)) < 0.2
    features = {"image": rng.standard_normal((n_items, 12)).astype(np.float32),
                "text": rng.standard_normal((n_items, 6)).astype(np.float32)}
    return Dataset(name="cli", n_users=n_users, n_items=n_items, train=pairs[~test],
                   valid=np.zeros((0, 2), dtype=np.int64), test=pairs[test], features=features,
                   labels=rng.integers(0, 3, n_items), n_labels=3)


def test_cli_one_epoch_sgfd_on_and_off(tmp_path):
    cli_one_epoch_sgfd_on_and_off(tmp_path, cli_dataset(), "GRCN")
