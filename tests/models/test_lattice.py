"""LATTICE against a float64 transcription of MMRec's formulation (Zhang et al., ACM MM 2021;
MMRec's ``lattice.py`` with ``cf_model: lightgcn``), written densely here with n×n matrices as
MMRec does: ``build_sim`` cosines, ``torch.topk`` values scattered into zeros, the row-sum
``compute_normalized_laplacian`` (inf set to 0), the softmax-weighted learned mix normalised
after mixing, the frozen graphs mixed with the same weights, ``(1 - λ) learned + λ frozen``,
the item–item layer, LightGCN on ``D^-1 (A + I)``, the L2-normalised item–item embedding and
LATTICE's BPR with its ½‖·‖² / batch_size regulariser. Equal losses, gradients and item graph
also show that the sparse build (kNN patterns, sddmm values, sparse degree normalisation) equals
the dense one."""

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.config import load_config
from sgfd_fast.errors import DataError
from sgfd_fast.models import build_model

from conftest import make_dataset, training_batch

K, LAMBDA, REG, BATCH = 3, 0.7, 0.3, 16


def _dataset(n_modalities=2):
    ds = make_dataset()
    ds.features = dict(list({"image": ds.features["m0"],
                             "text": ds.features["m1"]}.items())[:n_modalities])
    return ds


def _model(ds, sgfd, n_mm_layers=1, k=K):
    cfg = load_config("LATTICE", None, overrides=[
        ("embedding_size", 8), ("sgfd", sgfd), ("knn_k", k), ("lambda_coeff", LAMBDA),
        ("reg_weight", REG), ("train_batch_size", BATCH),
        ("n_mm_layers", n_mm_layers)]).points()[0]
    torch.manual_seed(0)
    return build_model("LATTICE", ds, cfg).double()


def _knn(x, k):
    """build_sim + build_knn_neighbourhood: top-k cosines per row, the rest 0 (dense)."""
    unit = x / x.norm(dim=-1, keepdim=True)
    val, ind = torch.topk(unit @ unit.T, k, dim=-1)
    return torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype).scatter(1, ind, val)


def _laplacian(A):
    """compute_normalized_laplacian: D^-1/2 A D^-1/2 with D the row sums, inf set to 0 (and,
    our documented difference, a negative row sum too: MMRec's NaN)."""
    rowsum = A.sum(-1)
    d = torch.where(rowsum > 0, rowsum.clamp(min=1e-300).pow(-0.5), torch.zeros_like(rowsum))
    return torch.diagflat(d) @ A @ torch.diagflat(d)


def _self_loop_adj(pairs, nu, ni):
    """get_adj_mat: D^-1 (A + I), rounded once to float32 as the model stores it."""
    A = torch.eye(nu + ni, dtype=torch.float64)
    A[pairs[:, 0], pairs[:, 1] + nu] = 1.0
    A[pairs[:, 1] + nu, pairs[:, 0]] = 1.0
    return (A / A.sum(1, keepdim=True)).float().double()


def _transcription(m, ds, users, items, neg, n_mm_layers, students=None, k=K):
    nu, ni = ds.n_users, ds.n_items
    feats = [torch.from_numpy(a).double() for a in ds.features.values()]
    leaves = {"Eu": m.user_embedding, "Ei": m.item_embedding}
    if len(feats) > 1:
        leaves["modal_weight"] = m.modal_weight
    if students is None:  # image_trs / text_trs
        for j, lin in enumerate(m.extractors):
            leaves[f"W{j}"], leaves[f"b{j}"] = lin.weight, lin.bias
    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    if students is None:
        proj = [f @ leaves[f"W{j}"].T + leaves[f"b{j}"] for j, f in enumerate(feats)]
    else:  # SGFD: each modality's student, L2(leaky_relu(W f + b))
        proj = [F.normalize(F.leaky_relu(f @ s.weight.detach().T + s.bias.detach()))
                for f, s in zip(feats, students)]
    w = torch.softmax(leaves["modal_weight"], 0) if len(feats) > 1 else [1.0]
    original = [_laplacian(_knn(f, k)).float().double() for f in feats]  # stored in float32
    learned = sum(w[j] * _knn(p, k) for j, p in enumerate(proj))
    assert (learned.sum(1) > 0).all() or k == m.n_items  # k = n: rows of degree <= 0 occur
    learned = _laplacian(learned)
    S = (1 - LAMBDA) * learned + LAMBDA * sum(w[j] * o for j, o in enumerate(original))
    h = leaves["Ei"]
    for _ in range(n_mm_layers):
        h = S @ h
    P = _self_loop_adj(torch.from_numpy(ds.train), nu, ni)
    layers = [torch.cat([leaves["Eu"], leaves["Ei"]])]
    for _ in range(2):
        layers.append(P @ layers[-1])
    u_all, i_all = torch.stack(layers).mean(0).split([nu, ni])
    i_all = i_all + F.normalize(h, p=2, dim=1)
    u, p, q = u_all[users], i_all[items], i_all[neg]
    mf = -F.logsigmoid((u * p).sum(1) - (u * q).sum(1)).mean()
    emb = REG * (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (q ** 2).sum()) / BATCH
    (mf + emb).backward()
    return mf, emb, S.detach(), {k: v.grad for k, v in leaves.items()}


def _dense(graph, n):
    out = torch.zeros(n, n, dtype=torch.float64)
    row = torch.arange(n).repeat_interleave(graph.rowptr.diff())
    out[row, graph.col] = graph.val.detach().double()
    return out


@pytest.mark.parametrize("sgfd", [False, True])
@pytest.mark.parametrize("n_modalities,n_mm_layers,k", [(2, 1, K), (1, 2, K), (2, 1, 10)])
def test_step_matches_float64_transcription(sgfd, n_modalities, n_mm_layers, k):
    """k = 10 = every item: some rows' cosines sum to <= 0 (the documented degree-0 rule)."""
    ds = _dataset(n_modalities)
    m = _model(ds, sgfd, n_mm_layers, k)
    m.begin_epoch(0, 1)
    users, items, neg = training_batch(ds, n_neg=1)
    parts = m.calculate_loss(users, items, neg)
    parts["loss"].backward()
    mf, emb, S, grads = _transcription(m, ds, users, items, neg[:, 0], n_mm_layers,
                                       students=list(m.sgfd.students) if sgfd else None, k=k)
    torch.testing.assert_close(_dense(m.item_graph, ds.n_items), S, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(parts["bpr"], mf.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts["reg"], emb.detach(), rtol=1e-12, atol=0)
    want = mf.detach() + emb.detach() + (parts["sgfd"].detach() if sgfd else 0)
    torch.testing.assert_close(parts["loss"].detach(), want, rtol=1e-12, atol=0)
    ours = {"Eu": m.user_embedding.grad, "Ei": m.item_embedding.grad}
    if n_modalities > 1:
        ours["modal_weight"] = m.modal_weight.grad
    if not sgfd:  # with SGFD the student's gradient also holds SGFD's losses
        for j, lin in enumerate(m.extractors):
            ours[f"W{j}"], ours[f"b{j}"] = lin.weight.grad, lin.bias.grad
    assert set(ours) == set(grads) if not sgfd else set(ours) <= set(grads)
    for name, g in ours.items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(g, grads[name], rtol=1e-10, atol=1e-14, msg=name)


def test_graph_is_learned_at_the_epochs_first_step_and_detached_after():
    """MMRec's build_item_graph flag: set by pre_epoch_processing, cleared by the first step."""
    ds = _dataset()
    m = _model(ds, False)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    users, items, neg = training_batch(ds, n_neg=1)
    m.begin_epoch(0, 1)
    m.begin_step(10)
    m.calculate_loss(users, items, neg)["loss"].backward()
    first = m.item_graph
    assert m.modal_weight.grad.abs().sum() > 0 and m.extractors[0].weight.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    m.begin_step(11)
    m.calculate_loss(users, items, neg)["loss"].backward()
    assert m.item_graph is first  # the same S, from the parameters before the step
    assert m.modal_weight.grad is None or m.modal_weight.grad.abs().sum() == 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.extractors.parameters())
    rebuilt = _dense(m.build_item_graph(), ds.n_items)
    assert not torch.allclose(rebuilt, _dense(first, ds.n_items))
    m.begin_epoch(1, 2)
    m.begin_step(12)
    m.calculate_loss(users, items, neg)
    torch.testing.assert_close(_dense(m.item_graph, ds.n_items), rebuilt)
    opt.step()
    with torch.no_grad():  # ranking rebuilds S from the current parameters, and keeps it
        got = m.ranking_embeddings()
        torch.testing.assert_close(got, m.forward(m.build_item_graph()))
        torch.testing.assert_close(_dense(m.item_graph, ds.n_items),
                                   _dense(m.build_item_graph(), ds.n_items))
    assert got[0].shape == (ds.n_users, 8) and got[1].shape == (ds.n_items, 8)


def test_needs_item_features():
    ds = _dataset()
    ds.features = {}
    with pytest.raises(DataError, match="LATTICE needs at least one item feature modality"):
        _model(ds, False)
