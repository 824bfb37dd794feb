"""MAML (PyTorch port of the released TF1 code, docs/RELEASED_CODE.md §6): loss against a direct
transcription of ``embedding_loss``/``feature_loss``/``covariance_loss``, what each protocol
trains, row clipping, and batched scoring against the per-pair attentive distance."""

import math

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.models import MAML, build_model
from sgfd_fast.models import maml as maml_module


def maml_config(**overrides):
    cfg = dict(embedding_size=8, hidden_layer_dim=16, margin=1.0, clip_norm=1.0,
               feature_l2_reg=1.0, feature_projection_scaling_factor=1.0, use_rank_weight=True,
               cov_loss_weight=5.0, protocol="standard", sgfd=True, sgfd_loss="official",
               ce_weight=1.0, kd_weight=0.1, t_decay=10.0, collapse_teacher=True)
    cfg.update(overrides)
    return cfg


def tf_attention(m, u, v, f):
    """``embedding_loss``'s dense layers on l2-normalised [u; v; f], written out."""
    x = torch.cat([u, v, f], -1)
    x = x / x.pow(2).sum(-1, keepdim=True).clamp(min=1e-24).sqrt()
    h = torch.tanh(x @ m.attention[0].weight.T + m.attention[0].bias)
    h = h / h.norm(dim=-1, keepdim=True)
    a = torch.relu(h @ m.attention[1].weight.T + m.attention[1].bias)
    return u.shape[-1] * torch.softmax(a, -1)


def tf_loss(m, users, items, neg):
    """The released ``loss`` (without SGFD) transcribed: hinge to the closest negative with the
    WARP log-rank weight, summed; feature loss over all items; covariance loss."""
    f, _ = m.item_projection()
    U, V = m.user_embedding, m.item_embedding
    u, p, n = U[users], V[items], V[neg]
    a_pos = tf_attention(m, u, p, f[items])
    pos_d = ((a_pos * u - a_pos * p) ** 2).sum(1)
    ue = u.unsqueeze(1).expand_as(n)
    a_neg = tf_attention(m, ue, n, f[neg])
    neg_d = ((a_neg * ue - a_neg * n) ** 2).sum(2)
    pair = torch.clamp(pos_d - neg_d.min(1).values + m.margin, min=0)
    rank = ((pos_d.unsqueeze(1) - neg_d + m.margin) > 0).float().mean(1) * m.n_items
    metric = (pair * torch.log(rank + 1)).sum()
    feature = ((V - f) ** 2).sum(1).sum() * m.feature_l2_reg
    x = torch.cat([V, U])
    x = x - x.mean(0)
    cov = x.T @ x / x.shape[0]
    cov_loss = (cov - torch.diag(torch.diag(cov))).sum() * m.cov_loss_weight
    return metric, feature, cov_loss


def test_loss_matches_transcription(tiny, batch):
    ds = tiny()
    torch.manual_seed(0)
    m = MAML(ds, maml_config(sgfd=False)).double()
    users, items, neg = batch(ds, 4)
    parts = m.calculate_loss(users, items, neg)
    metric, feature, cov = tf_loss(m, users, items, neg)
    torch.testing.assert_close(parts["metric"], metric.detach())
    torch.testing.assert_close(parts["feature"], feature.detach())
    torch.testing.assert_close(parts["cov"], cov.detach())
    torch.testing.assert_close(parts["loss"].detach(), (metric + feature + cov).detach())


def test_projection_transcription_and_item_init(tiny):
    ds = tiny()
    torch.manual_seed(1)
    m = MAML(ds, maml_config())
    s = [m.sgfd.student(j) for j in range(2)]
    l2n = lambda x: F.normalize(x, dim=1)  # noqa: E731
    p = m.projection
    h = torch.relu(p[0](l2n(torch.cat(s, 1))))
    h = torch.relu(p[1](l2n(h)))
    h = torch.relu(p[2](l2n(h)))
    out = p[3](h)  # the last dense layer has no l2-normalised input, as released
    want = out * (1.0 / out.norm(dim=1, keepdim=True).clamp(min=1.0))
    f, _ = m.item_projection()
    torch.testing.assert_close(f, want)
    assert bool((f.norm(dim=1) <= 1 + 1e-6).all())
    torch.testing.assert_close(m.item_embedding.detach(), f.detach())  # V initialised to f
    assert [l.out_features for l in p] == [16, 8, 8, 8]


@pytest.mark.parametrize("sgfd", [True, False])
@pytest.mark.parametrize("protocol", ["standard", "legacy"])
def test_loss_parts_and_what_is_trained(tiny, sgfd, protocol, batch):
    ds = tiny()
    torch.manual_seed(2)
    m = build_model("MAML", ds, maml_config(sgfd=sgfd, protocol=protocol))
    assert m.n_negatives == 4 and m.ranking_embeddings() is None
    parts = m.calculate_loss(*batch(ds, 4))
    expected = {"loss", "metric", "feature", "cov"} | (
        {"sgfd", "sgfd_ce", "sgfd_ld", "sgfd_fd", "sgfd_fusion"} if sgfd else set())
    assert set(parts) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in parts.values())
    parts["loss"].backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    for name in ("user_embedding", "item_embedding"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    others = ["projection.0.weight", "projection.3.weight", "attention.0.weight",
              "attention.1.weight"]
    if sgfd:
        others += ["sgfd.students.0.weight", "sgfd.teachers.1.0.weight",
                   "sgfd.classifiers.0.weight", "sgfd.fusion.weight"]
    for name in others:
        if protocol == "legacy":  # released var_list=[U, V]
            assert grads[name] is None, name
            assert not dict(m.named_parameters())[name].requires_grad
        else:
            assert grads[name] is not None and grads[name].abs().sum() > 0, name


@pytest.mark.parametrize("sgfd", [True, False])
@pytest.mark.parametrize("protocol", ["standard", "legacy"])
def test_training_steps(tiny, sgfd, protocol, batch, train):
    ds = tiny()
    torch.manual_seed(3)
    m = MAML(ds, maml_config(sgfd=sgfd, protocol=protocol))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    losses = train(m, 6, 1e-3, *batch(ds, 4))
    assert losses[-1] < losses[0]
    for n, p in m.named_parameters():
        trained = protocol == "standard" or n in ("user_embedding", "item_embedding")
        assert torch.equal(p, before[n]) != trained, n


def test_rows_are_clipped_to_unit_norm(tiny, batch, train):
    ds = tiny()
    torch.manual_seed(4)
    m = MAML(ds, maml_config())
    train(m, 3, 0.5, *batch(ds, 4))  # large steps push rows past norm 1
    assert m.user_embedding.norm(dim=1).max() > 1.01  # the step left long rows ...
    m.post_step()                                      # ... the hook clips them
    for emb in (m.user_embedding, m.item_embedding):
        assert bool((emb.norm(dim=1) <= 1 + 1e-5).all())
    with torch.no_grad():  # calculate_loss and score_users clip first as well
        m.user_embedding.mul_(3.0)
        m.score_users(torch.arange(2))
    assert bool((m.user_embedding.norm(dim=1) <= 1 + 1e-5).all())


@pytest.mark.parametrize("block", [None, 1])
def test_score_users_matches_per_pair_distance(tiny, monkeypatch, block):
    ds = tiny()
    torch.manual_seed(5)
    m = MAML(ds, maml_config()).double()
    if block is not None:  # force one user per block: the blocking must not change scores
        monkeypatch.setattr(maml_module, "_SCORE_BLOCK", block)
    users = torch.tensor([3, 0, 7, 11])
    with torch.no_grad():
        scores = m.score_users(users)
        f, _ = m.item_projection()
        u = m.user_embedding[users][:, None].expand(-1, ds.n_items, -1)
        v = m.item_embedding[None].expand(len(users), -1, -1)
        a = tf_attention(m, u, v, f[None].expand_as(v))
        want = -((a * u - a * v) ** 2).sum(-1)
        one = -m.distance(u[0, 0], v[0, 0], f[0])
    assert scores.shape == (4, ds.n_items) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, want)
    assert math.isclose(float(one), float(want[0, 0]), rel_tol=1e-9)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_ranking_topk_is_the_topk_of_score_users(tiny, monkeypatch, backend):
    import sgfd_fast
    from sgfd_fast.evaluation import _masked_topk_dense, evaluate
    from sgfd_fast.models.base import Recommender

    ds = tiny()
    torch.manual_seed(5)
    m = MAML(ds, maml_config())
    users = torch.tensor([3, 0, 7, 11])
    rowptr, col = torch.tensor([0, 2, 2, 5, 6]), torch.tensor([1, 4, 0, 2, 3, 5])
    with torch.no_grad(), sgfd_fast.use_backend(backend):
        values, indices = m.ranking_topk(users, rowptr, col, 6, None)
        want_values, want_indices = _masked_topk_dense(m.score_users(users), rowptr, col, 6, None)
        config = dict(topk=[2, 5], eval_batch_size=3, protocol="standard")
        fused = evaluate(m, ds, "test", config)
    torch.testing.assert_close(values, want_values, atol=1e-6, rtol=1e-5)
    assert torch.equal(indices, want_indices)
    # evaluate() through ranking_topk and through score_users blocks: the same metrics
    monkeypatch.setattr(MAML, "ranking_topk", Recommender.ranking_topk)
    with sgfd_fast.use_backend(backend):
        assert evaluate(m, ds, "test", config) == fused


def test_cli_one_epoch_sgfd_on_and_off(tmp_path):
    from test_grcn import cli_dataset, cli_one_epoch_sgfd_on_and_off

    cli_one_epoch_sgfd_on_and_off(tmp_path, cli_dataset(), "MAML", "hidden_layer_dim=16")
