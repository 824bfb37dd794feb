"""VBPR against a float64 transcription of MMRec's formulation (He & McAuley, AAAI 2016; MMRec's
``vbpr.py``): user ``[γ_u; θ_u]``, item ``[γ_i; E [f_1; ...; f_M] + b]`` (one projection of the
concatenated features), BPR with one negative and the EmbLoss regulariser, written densely here."""

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.config import load_config
from sgfd_fast.errors import DataError
from sgfd_fast.models import build_model

from conftest import make_dataset, training_batch


def _model(ds, sgfd, reg_weight=0.1):
    cfg = load_config("VBPR", None, overrides=[("embedding_size", 8), ("sgfd", sgfd),
                                               ("reg_weight", reg_weight)]).points()[0]
    torch.manual_seed(0)
    return build_model("VBPR", ds, cfg).double()


def _transcription(m, ds, users, items, neg, reg_weight, students=None):
    """MMRec's calculate_loss, float64, every item projected (its forward)."""
    U = m.user_embedding.detach().clone().requires_grad_()
    G = m.item_embedding.detach().clone().requires_grad_()
    feats = [torch.from_numpy(a).double() for a in ds.features.values()]
    if students is None:   # one Linear over the concatenation: the per-modality blocks side by side
        W = torch.cat([l.weight for l in m.extractors], 1).detach().clone().requires_grad_()
        b = sum(l.bias for l in m.extractors).detach().clone().requires_grad_()
        phi = torch.cat(feats, 1) @ W.T + b
        leaves = {"W": W, "b": b}
    else:                  # SGFD: each modality's student, L2(leaky_relu(W f + b)), summed
        phi = sum(F.normalize(F.leaky_relu(f @ s.weight.detach().T + s.bias.detach()))
                  for f, s in zip(feats, students))
        leaves = {}
    I = torch.cat([G, phi], 1)
    u, p, q = U[users], I[items], I[neg]
    bpr = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * q).sum(1))).mean()
    reg = (torch.linalg.norm(u) + torch.linalg.norm(p) + torch.linalg.norm(q)) / users.numel()
    loss = bpr + reg_weight * reg
    loss.backward()
    return bpr, reg, loss, {"user_embedding": U.grad, "item_embedding": G.grad,
                            **{k: v.grad for k, v in leaves.items()}}


@pytest.mark.parametrize("sgfd", [False, True])
def test_step_matches_float64_transcription(sgfd):
    ds = make_dataset()
    m = _model(ds, sgfd, reg_weight=0.1)
    users, items, neg = training_batch(ds, n_neg=1)
    parts = m.calculate_loss(users, items, neg)
    parts["loss"].backward()
    bpr, reg, loss, grads = _transcription(m, ds, users, items, neg[:, 0], 0.1,
                                           students=list(m.sgfd.students) if sgfd else None)
    torch.testing.assert_close(parts["bpr"], bpr.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts["reg"], reg.detach(), rtol=1e-12, atol=0)
    want = loss.detach() + (parts["sgfd"].detach() if sgfd else 0)
    torch.testing.assert_close(parts["loss"].detach(), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(m.user_embedding.grad, grads["user_embedding"], rtol=1e-10,
                               atol=1e-14)
    torch.testing.assert_close(m.item_embedding.grad, grads["item_embedding"], rtol=1e-10,
                               atol=1e-14)
    if not sgfd:   # the blocks of MMRec's one projection are our per-modality extractors
        widths = [a.shape[1] for a in ds.features.values()]
        for j, g in enumerate(grads["W"].split(widths, 1)):
            torch.testing.assert_close(m.extractors[j].weight.grad, g, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(m.extractors[j].bias.grad, grads["b"], rtol=1e-10,
                                       atol=1e-14)


def test_ranking_is_the_dot_product_of_the_full_rows():
    ds = make_dataset()
    m = _model(ds, False)
    users, items = m.ranking_embeddings()
    assert users.shape == (ds.n_users, 16) and items.shape == (ds.n_items, 16)
    phi = sum(l(torch.from_numpy(a).double()) for l, a in zip(m.extractors, ds.features.values()))
    torch.testing.assert_close(items, torch.cat([m.item_embedding, phi], 1))


def test_needs_item_features():
    ds = make_dataset()
    ds.features = {}
    with pytest.raises(DataError, match="VBPR needs at least one item feature modality"):
        _model(ds, False)
