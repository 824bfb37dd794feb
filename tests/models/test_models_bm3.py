"""BM3 (+SGFD): one step equals a transcription of the released bm3.py, the gradient table of
docs/RELEASED_CODE.md §3.7, the sgfd=false path, training, ranking, registry and config errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.errors import ConfigError, DataError
from sgfd_fast.evaluation import evaluate
from sgfd_fast.models import BM3, MODELS, build_model
from sgfd_fast.ops import row_dropout_reference


def _dense_adjacency(ds, dtype):
    # bm3.py get_norm_adj_mat: Deg = rowsum(A) + 1e-7, D^-1/2 A D^-1/2, no self-loops
    n = ds.n_users + ds.n_items
    a = torch.zeros(n, n, dtype=dtype)
    u, i = torch.from_numpy(ds.train[:, 0]), torch.from_numpy(ds.train[:, 1]) + ds.n_users
    a[u, i] = 1.0
    a[i, u] = 1.0
    d = (a.sum(1) + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :]


def _released_forward(model, adj):
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers = [ego]
    for _ in range(model.n_layers):
        layers.append(adj @ layers[-1])
    mean = torch.stack(layers, dim=1).mean(dim=1)
    u_g, i_g = torch.split(mean, [model.n_users, model.n_items])
    return u_g, i_g + model.item_embedding.weight


def _released_loss(model, adj, users, items):
    """bm3.py calculate_loss, student over all items, SGFD extractor + fusion on the batch items;
    modalities summed as released. The dropout views drop the whole matrices, as released, with
    the masks of ``ops.row_dropout`` (a function of key, row id and column) in place of
    ``F.dropout``'s draws."""
    s = model.sgfd
    u_online_ori, i_online_ori = _released_forward(model, adj)
    students = [F.normalize(F.leaky_relu(s.students[j](s.feature(j)))) for j in range(2)]
    key, p = model.step_key, model.dropout

    def dropout(x, key):
        return row_dropout_reference(x, torch.arange(x.shape[0]), p, key) if p else x.clone()

    with torch.no_grad():
        u_target, i_target = dropout(u_online_ori, key), dropout(i_online_ori, key + 1)
        targets = [dropout(x, key + 2 + j) for j, x in enumerate(students)]
    u_online, i_online = model.predictor(u_online_ori), model.predictor(i_online_ori)
    u_online, i_online = u_online[users], i_online[items]
    u_target, i_target = u_target[users], i_target[items]
    cl, ces, lds, fds, teach = 0.0, [], [], [], []
    y = s.labels[items]
    for j in range(2):
        x = s.feature(j)[items]
        h = x
        for layer in s.teachers[j]:
            h = layer(h)
        teacher_x = F.normalize(F.leaky_relu(h))
        student_x = F.normalize(F.leaky_relu(s.students[j](x)))
        c = s.classifiers[j]
        t_logit, s_logit = c(teacher_x), c(student_x)
        ces.append(F.cross_entropy(F.softmax(t_logit, dim=1), y))
        lds.append(F.l1_loss(F.softmax(t_logit / s.tau, 1), F.softmax(s_logit / s.tau, 1)))
        fds.append(F.mse_loss(student_x, teacher_x))
        teach.append(teacher_x)
        feat_online = model.predictor(students[j])[items]
        loss_m = 1 - F.cosine_similarity(feat_online, i_target.detach(), dim=-1).mean()
        loss_mm = 1 - F.cosine_similarity(feat_online, targets[j][items].detach(), dim=-1).mean()
        cl = cl + loss_m + loss_mm
    fusion = F.cross_entropy(s.fusion_classifier(F.leaky_relu_(s.fusion(torch.cat(teach, 1)))), y)
    loss_ui = 1 - F.cosine_similarity(u_online, i_target.detach(), dim=-1).mean()
    loss_iu = 1 - F.cosine_similarity(i_online, u_target.detach(), dim=-1).mean()
    reg = (torch.norm(u_online_ori) + torch.norm(i_online_ori)) / i_online_ori.shape[0]
    return ((loss_ui + loss_iu) + model.reg_weight * reg + model.cl_weight * cl
            + s.ce_weight * ((ces[0] + ces[1]) / 2 + fusion)
            + s.kd_weight * ((lds[0] + lds[1]) / 2 + (fds[0] + fds[1]) / 2))


def _batch(ds, seed=0, size=16):
    g = np.random.default_rng(seed)
    rows = ds.train[g.integers(0, len(ds.train), size)]   # with repeats: duplicate users/items
    return torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])


@pytest.mark.parametrize("collapse, dropout", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_one_step_equals_released_transcription(tiny, config, collapse, dropout):
    ds = tiny()
    torch.manual_seed(0)
    model = BM3(ds, config(dropout=dropout, collapse_teacher=collapse, ce_weight=0.3,
                           kd_weight=0.7)).double()
    model.step_key = 987654321
    users, items = _batch(ds)
    out = model.calculate_loss(users, items)
    want = _released_loss(model, _dense_adjacency(ds, torch.float64), users, items)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-9)
    got = torch.autograd.grad(out["loss"], list(model.parameters()))
    ref = torch.autograd.grad(want, list(model.parameters()))
    # the graph's weights are stored in float32 (relative rounding ~6e-8)
    for (name, _), a, b in zip(model.named_parameters(), got, ref):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max())), name


def _grad_norms(model, users, items, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)
    model.calculate_loss(users, items)["loss"].backward()
    return {n: (0.0 if p.grad is None else float(p.grad.abs().sum()))
            for n, p in model.named_parameters()}


def test_gradient_table(tiny, config):
    """Who receives gradient from what (docs/RELEASED_CODE.md §3.7), by switching loss weights off
    one at a time."""
    ds = tiny()
    users, items = _batch(ds)

    def grads(**kw):
        torch.manual_seed(1)
        return _grad_norms(BM3(ds, config(**kw)), users, items)

    full = grads()
    assert all(v > 0 for v in full.values()), [k for k, v in full.items() if v == 0]
    # teacher, classifiers and fusion only learn from the SGFD losses
    no_sgfd = grads(ce_weight=0.0, kd_weight=0.0)
    for name, v in no_sgfd.items():
        if name.startswith(("sgfd.teachers", "sgfd.classifiers", "sgfd.fusion")):
            assert v == 0, name
    assert no_sgfd["sgfd.students.0.weight"] > 0                 # via the cl losses
    # the student receives nothing from CE / fusion
    only_ce = grads(kd_weight=0.0, cl_weight=0.0)
    assert only_ce["sgfd.students.0.weight"] == 0 and only_ce["sgfd.teachers.0.0.weight"] > 0
    assert only_ce["sgfd.fusion.weight"] > 0
    # fusion receives nothing from LD / FD
    only_kd = grads(ce_weight=0.0, cl_weight=0.0)
    assert only_kd["sgfd.fusion.weight"] == 0 and only_kd["sgfd.students.1.weight"] > 0
    # ID embeddings learn only from the BM3 and reg terms: their gradient is unchanged when the
    # feature-side weights change (same seed => same dropout masks)
    plain = grads(ce_weight=0.0, kd_weight=0.0, cl_weight=0.0)
    for key in ("user_embedding.weight", "item_embedding.weight"):
        assert plain[key] == pytest.approx(full[key], rel=1e-6)


def test_sgfd_false_path(tiny, config):
    ds = tiny()
    torch.manual_seed(0)
    model = build_model("bm3", ds, config(sgfd=False))
    assert model.sgfd is None and len(model.extractors) == 2
    users, items = _batch(ds)
    out = model.calculate_loss(users, items)
    assert set(out) == {"loss", "bm3", "reg", "cl"}
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    feats = model.student_features()
    assert list(feats) == ["m0", "m1"] and feats["m0"].shape == (ds.n_items, 8)
    # original BM3's extractor: plain linear map, no activation, no normalisation
    x = torch.from_numpy(ds.features["m1"])
    assert torch.allclose(feats["m1"], model.extractors[1](x))


def test_forward_matches_dense_propagation(tiny, config):
    ds = tiny()
    for n_layers in (0, 1, 3):
        model = BM3(ds, config(n_layers=n_layers)).double()
        u, i = model.forward()
        ru, ri = _released_forward(model, _dense_adjacency(ds, torch.float64))
        assert torch.allclose(u, ru) and torch.allclose(i, ri)
        pu, pi = model.ranking_embeddings()
        assert torch.allclose(pi, model.predictor(ri))
    # the isolated item keeps only layer 0 plus its residual: (L0 / (L + 1)) + E_i
    iso = ds.n_items - 1
    assert torch.allclose(i[iso], model.item_embedding.weight[iso] * (1 + 1 / 4))


def test_graph_moves_and_casts_with_the_model(tiny, config):
    ds = tiny()
    model = BM3(ds, config())
    assert model.graph.symmetric and model.graph.n_rows == ds.n_users + ds.n_items
    assert not any(t is model.graph.val for t in model.state_dict().values())
    model.double()
    assert model.graph.val.dtype == torch.float64 and model.graph.col.dtype == torch.int64
    model.to("meta")
    assert model.graph.device.type == "meta"


def test_dropout_masks_shared_by_duplicates(tiny, config):
    ds = tiny()
    model = BM3(ds, config(cl_weight=0.0, reg_weight=0.0, ce_weight=0.0, kd_weight=0.0))
    users = torch.tensor([3, 3, 3, 3])
    items = torch.tensor([5, 5, 5, 5])
    # all rows identical (one mask per distinct row, as when the released code gathers rows of
    # one dropped matrix): the loss is the single-row loss
    torch.manual_seed(0)
    a = model.calculate_loss(users, items)["bm3"]
    torch.manual_seed(0)
    b = model.calculate_loss(users[:1], items[:1])["bm3"]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_training_decreases_loss_and_evaluates(tiny, config, train):
    ds = tiny(n_users=30, n_items=25)
    torch.manual_seed(0)
    cfg = config()
    model = BM3(ds, cfg)
    users, items = (torch.from_numpy(ds.train[:, c]) for c in (0, 1))
    losses = train(model, 40, 0.01, users, items)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    metrics = evaluate(model, ds, "test", cfg)
    assert set(metrics) >= {"recall@5", "ndcg@5", "precision@1", "map@5", "hit@1"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_registry_and_config_errors(tiny, config):
    ds = tiny()
    assert MODELS["BM3"] is BM3
    with pytest.raises(ConfigError, match="unknown model 'NoSuch'; available: BM3"):
        build_model("NoSuch", ds, config())
    # dropout/n_layers values and missing keys are refused by load_config (tests/test_config.py)
    cfg = config()
    del cfg["cl_weight"]
    with pytest.raises(KeyError, match="cl_weight"):
        BM3(ds, cfg)
    no_feats = tiny()
    no_feats.features = {}
    with pytest.raises(DataError, match="at least one item feature"):
        BM3(no_feats, config())


@pytest.mark.parametrize("widths", [(33,), (9, 40, 5)])
def test_any_number_of_modalities(tiny, config, widths):
    ds = tiny(widths=widths)
    model = BM3(ds, config())
    out = model.calculate_loss(*_batch(ds))
    assert torch.isfinite(out["loss"])
    assert model.sgfd.fusion.in_features == len(widths) * 8


def _composed(user_w, item_w, uniq_u, uniq_i, model):
    # what calculate_loss computed before _Encode, by plain autograd
    u_o, i_o = model.forward()
    return u_o.index_select(0, uniq_u), i_o.index_select(0, uniq_i), u_o.norm(), i_o.norm()


def _steps(model, monkeypatch, composed, n_steps=6):
    from sgfd_fast.models import bm3

    with monkeypatch.context() as m:
        if composed:
            m.setattr(bm3._Encode, "apply", _composed)
        opt = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)  # as the trainer
        rng = np.random.default_rng(3)
        pairs = torch.as_tensor(model._pairs)
        trace = []
        for step in range(n_steps):
            idx = torch.as_tensor(rng.integers(0, len(pairs), 2 * len(pairs)))  # repeats
            model.begin_step(1000 + step)
            opt.zero_grad(set_to_none=True)
            parts = model.calculate_loss(pairs[idx, 0], pairs[idx, 1])
            parts["loss"].backward()
            trace.append({k: v.detach().clone() for k, v in parts.items()})
            trace.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
            opt.step()
        trace.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return trace


@pytest.mark.parametrize("sgfd, n_layers, dtype, zero", [(True, 1, torch.float32, False),
                                                          (True, 2, torch.float32, False),
                                                          (False, 3, torch.float64, False),
                                                          (True, 1, torch.float32, True)])
def test_reused_buffers_bitwise_equal_the_composition(tiny, config, monkeypatch, sgfd, n_layers,
                                                      dtype, zero):
    # _Encode's buffers (reused across steps) change no bit of the losses, gradients or
    # parameters over several Adam steps, against the plain autograd composition; ``zero``:
    # from all-zero embeddings, whose norms (0) have a 0 gradient
    ds = tiny(n_users=40, n_items=25)
    traces = []
    for composed in (False, True):
        torch.manual_seed(0)
        model = BM3(ds, config(sgfd=sgfd, n_layers=n_layers)).to(dtype)
        if zero:
            with torch.no_grad():
                model.user_embedding.weight.zero_()
                model.item_embedding.weight.zero_()
        model._pairs = ds.train
        traces.append(_steps(model, monkeypatch, composed))
    for got, want in zip(*traces):
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k


def _pending_loss(tiny, config):
    """A model and its loss on the tiny data's train pairs, not yet backpropagated."""
    ds = tiny()
    model = BM3(ds, config())
    users, items = torch.as_tensor(ds.train[:, 0]), torch.as_tensor(ds.train[:, 1])
    model.begin_step(1)
    return model, model.calculate_loss(users, items)["loss"], (users, items)


def test_reused_buffers_refuse_a_stale_graph(tiny, config):
    # the next step's forward overwrites the buffers: the earlier graph's backward must fail
    # loudly rather than use the new values
    model, first, batch = _pending_loss(tiny, config)
    model.calculate_loss(*batch)["loss"].backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()


def test_evaluation_ranks_from_the_reused_buffers(tiny, config):
    # without autograd ranking_embeddings propagates into the step's buffers: the same values as
    # forward()'s, bit for bit, and a graph still waiting for its backward refuses it after
    model, pending, _ = _pending_loss(tiny, config)
    with torch.no_grad():
        got = model.ranking_embeddings()
        u_g, i_o = model.forward()
        want = model.predictor(u_g), model.predictor(i_o)
    assert model._encode_buffers is not None
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        pending.backward()


def test_reused_gradient_buffer_is_never_clobbered(tiny, config, monkeypatch):
    # gradients still held (accumulated .grad, autograd.grad's results) are never overwritten
    # by the next backward: it then allocates afresh
    from sgfd_fast.models import bm3

    ds = tiny()
    users, items = torch.as_tensor(ds.train[:, 0]), torch.as_tensor(ds.train[:, 1])
    grads = []
    for composed in (False, True):
        torch.manual_seed(0)
        model = BM3(ds, config())
        with monkeypatch.context() as m:
            if composed:
                m.setattr(bm3._Encode, "apply", _composed)
            for key in (1, 2):  # two backward passes accumulate into .grad
                model.begin_step(key)
                model.calculate_loss(users, items)["loss"].backward()
            weights = [model.user_embedding.weight, model.item_embedding.weight]
            held = []
            for key in (3, 4):  # autograd.grad's results kept across the next backward
                model.begin_step(key)
                held.append(torch.autograd.grad(model.calculate_loss(users, items)["loss"],
                                                weights))
        grads.append([w.grad for w in weights] + [g for h in held for g in h])
    for got, want in zip(*grads):
        assert torch.equal(got, want)
