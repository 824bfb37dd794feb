"""FREEDOM against a float64 transcription of MMRec's formulation (Zhou & Shen, ACM MM 2023;
MMRec's ``freedom.py``), written densely here: the kNN graphs from ``build_sim``-style cosines and
``torch.topk``, MMRec's ``compute_normalized_laplacian`` (row sums + 1e-7 on both sides), the
0.1/0.9 mix, the degree-sensitive pruning renormalised with the kept degrees, one item–item layer
plus LightGCN, FREEDOM's BPR and the modality projections' auxiliary BPR."""

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast import ops
from sgfd_fast.config import load_config
from sgfd_fast.errors import DataError
from sgfd_fast.models import build_model
from sgfd_fast.models.freedom import modality_weights

from conftest import make_dataset, training_batch

KEY = 5


def _dataset():
    ds = make_dataset()
    ds.features = {"image": ds.features["m0"], "text": ds.features["m1"]}
    return ds


def _model(ds, sgfd, dropout=0.3, reg_weight=0.1):
    cfg = load_config("FREEDOM", None, overrides=[
        ("embedding_size", 8), ("sgfd", sgfd), ("knn_k", 3), ("dropout", dropout),
        ("reg_weight", reg_weight)]).points()[0]
    torch.manual_seed(0)
    return build_model("FREEDOM", ds, cfg).double()


def _knn_laplacian(x, k):
    """MMRec's get_knn_adj_mat + compute_normalized_laplacian, dense."""
    unit = x / x.norm(dim=-1, keepdim=True)
    _, ind = torch.topk(unit @ unit.T, k, dim=-1)
    A = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64).scatter_(1, ind, 1.0)
    d = (A.sum(-1) + 1e-7).pow(-0.5)
    return d[:, None] * A * d[None, :]


def _bipartite(pairs, nu, ni):
    """D^-1/2 A D^-1/2 of the user–item graph (without MMRec's 1e-7: a documented difference),
    rounded once to float32 as graph.normalized_bipartite stores it."""
    A = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    A[pairs[:, 0], pairs[:, 1] + nu] = 1.0
    A[pairs[:, 1] + nu, pairs[:, 0]] = 1.0
    deg = A.sum(1)
    d = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return (d[:, None] * A * d[None, :]).float().double()


def _pruned_pairs(ds, dropout):
    """pre_epoch_processing: keep int(nnz (1 - dropout)) pairs drawn ∝ (d_u d_i)^-1/2 (+1e-7);
    the draw itself is ops.sample_edges with the epoch's key (tested on its own)."""
    pairs = torch.from_numpy(ds.train)
    d_u = torch.bincount(pairs[:, 0], minlength=ds.n_users).double() + 1e-7
    d_i = torch.bincount(pairs[:, 1], minlength=ds.n_items).double() + 1e-7
    weight = d_u[pairs[:, 0]].pow(-0.5) * d_i[pairs[:, 1]].pow(-0.5)
    return pairs[ops.sample_edges(weight, int(len(pairs) * (1 - dropout)), KEY)]


def _transcription(m, ds, users, items, neg, reg_weight, dropout, students=None):
    nu, ni = ds.n_users, ds.n_items
    feats = [torch.from_numpy(a).double() for a in ds.features.values()]
    S = 0.1 * _knn_laplacian(feats[0], 3) + 0.9 * _knn_laplacian(feats[1], 3)
    S = S.float().double()  # the model stores its graphs in float32
    A_hat = _bipartite(_pruned_pairs(ds, dropout), nu, ni)
    Eu = m.user_embedding.detach().clone().requires_grad_()
    Ei = m.item_embedding.detach().clone().requires_grad_()
    h = S @ Ei
    layers = [torch.cat([Eu, Ei])]
    for _ in range(2):
        layers.append(A_hat @ layers[-1])
    u_all, i_all = torch.stack(layers).mean(0).split([nu, ni])
    i_all = i_all + h
    u = u_all[users]

    def bpr(p, q):
        return -F.logsigmoid((u * p).sum(1) - (u * q).sum(1)).mean()

    leaves = {}
    if students is None:  # MMRec's image_trs / text_trs
        for j, lin in enumerate(m.extractors):
            leaves[f"W{j}"] = lin.weight.detach().clone().requires_grad_()
            leaves[f"b{j}"] = lin.bias.detach().clone().requires_grad_()
        proj = [f @ leaves[f"W{j}"].T + leaves[f"b{j}"] for j, f in enumerate(feats)]
    else:                 # SGFD: each modality's student, L2(leaky_relu(W f + b))
        proj = [F.normalize(F.leaky_relu(f @ s.weight.detach().T + s.bias.detach()))
                for f, s in zip(feats, students)]
    main = bpr(i_all[items], i_all[neg])
    modal = sum(bpr(p[items], p[neg]) for p in proj)
    loss = main + reg_weight * modal
    loss.backward()
    return main, modal, loss, {"user_embedding": Eu.grad, "item_embedding": Ei.grad,
                               **{k: v.grad for k, v in leaves.items()}}


@pytest.mark.parametrize("sgfd", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_step_matches_float64_transcription(sgfd, dropout):
    ds = _dataset()
    m = _model(ds, sgfd, dropout=dropout)
    m.begin_epoch(0, KEY)
    users, items, neg = training_batch(ds, n_neg=1)
    parts = m.calculate_loss(users, items, neg)
    parts["loss"].backward()
    main, modal, loss, grads = _transcription(
        m, ds, users, items, neg[:, 0], 0.1, dropout,
        students=list(m.sgfd.students) if sgfd else None)
    torch.testing.assert_close(parts["bpr"], main.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts["modal_bpr"], modal.detach(), rtol=1e-12, atol=0)
    want = loss.detach() + (parts["sgfd"].detach() if sgfd else 0)
    torch.testing.assert_close(parts["loss"].detach(), want, rtol=1e-12, atol=0)
    for name in ("user_embedding", "item_embedding"):
        torch.testing.assert_close(getattr(m, name).grad, grads[name], rtol=1e-10, atol=1e-14)
    if not sgfd:
        for j, lin in enumerate(m.extractors):
            torch.testing.assert_close(lin.weight.grad, grads[f"W{j}"], rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(lin.bias.grad, grads[f"b{j}"], rtol=1e-10, atol=1e-14)


def test_pruning_is_per_epoch_and_ranking_uses_the_whole_graph():
    ds = _dataset()
    m = _model(ds, False, dropout=0.5)
    m.begin_epoch(0, KEY)
    first = m.train_graph
    assert first.nnz == 2 * int(len(ds.train) * 0.5)
    m.begin_epoch(1, KEY + 1)
    assert not torch.equal(first.col, m.train_graph.col) or \
        not torch.equal(first.rowptr, m.train_graph.rowptr)
    m.begin_epoch(0, KEY)
    assert torch.equal(first.col, m.train_graph.col)  # a pure function of the key
    users, items = m.ranking_embeddings()
    assert users.shape == (ds.n_users, 8) and items.shape == (ds.n_items, 8)
    torch.testing.assert_close((users, items), m.forward(m.graph))


def test_modality_weights():
    assert modality_weights(["text"], 0.1) == [1.0]
    assert modality_weights(["image", "text"], 0.1) == [0.1, 0.9]
    assert modality_weights(["text", "image", "audio"], 0.2) == [0.4, 0.2, 0.4]
    assert modality_weights(["text", "relation"], 0.1) == [0.5, 0.5]


def test_needs_item_features():
    ds = _dataset()
    ds.features = {}
    with pytest.raises(DataError, match="FREEDOM needs at least one item feature modality"):
        _model(ds, False)
