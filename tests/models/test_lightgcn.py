"""LightGCN against a float64 transcription of the published formulation (He et al., SIGIR 2020,
eq. 8-10, as MMRec's ``lightgcn.py`` trains it): dense ``Â = D^-1/2 A D^-1/2``, the mean of
layers 0..L, BPR with one negative and the EmbLoss regulariser on the layer-0 rows."""

import pytest
import torch

from sgfd_fast.config import load_config
from sgfd_fast.errors import ConfigError
from sgfd_fast.models import build_model

from conftest import make_dataset, training_batch


def _model(ds, n_layers, reg_weight=0.01, **over):
    cfg = load_config("LightGCN", None, overrides=[
        ("embedding_size", 8), ("n_layers", n_layers), ("reg_weight", reg_weight),
        *over.items()]).points()[0]
    torch.manual_seed(0)
    return build_model("LightGCN", ds, cfg)


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_step_matches_float64_transcription(n_layers):
    ds = make_dataset()   # item n_items-1 is isolated: its row of Â is empty
    m = _model(ds, n_layers).double()
    users, items, neg = training_batch(ds, n_neg=1)
    parts = m.calculate_loss(users, items, neg)
    parts["loss"].backward()

    nu, ni = ds.n_users, ds.n_items
    A = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    A[ds.train[:, 0], nu + ds.train[:, 1]] = 1.0
    A = A + A.T
    deg = A.sum(1)
    d = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    # float64, then rounded once to float32 as graph.normalized_bipartite stores the weights
    A_hat = (d[:, None] * A * d[None, :]).float().double()
    Eu = m.user_embedding.detach().clone().requires_grad_()
    Ei = m.item_embedding.detach().clone().requires_grad_()
    e = torch.cat([Eu, Ei])
    layers = [e]
    for _ in range(n_layers):
        layers.append(A_hat @ layers[-1])
    out = torch.stack(layers).mean(0)
    u, i = out[:nu], out[nu:]
    n = neg[:, 0]
    diff = (u[users] * i[items]).sum(1) - (u[users] * i[n]).sum(1)
    bpr = -torch.log(1e-10 + torch.sigmoid(diff)).mean()
    reg = (torch.linalg.norm(Eu[users]) + torch.linalg.norm(Ei[items])
           + torch.linalg.norm(Ei[n])) / users.numel()
    (bpr + 0.01 * reg).backward()

    tol = dict(rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(parts["bpr"], bpr.detach(), **tol)
    torch.testing.assert_close(parts["reg"], reg.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(m.user_embedding.grad, Eu.grad, **tol)
    torch.testing.assert_close(m.item_embedding.grad, Ei.grad, **tol)
    ru, ri = m.ranking_embeddings()
    torch.testing.assert_close(ru, u.detach())
    torch.testing.assert_close(ri, i.detach())


def test_sgfd_is_one_clear_config_error():
    with pytest.raises(ConfigError, match="LightGCN consumes no item features"):
        _model(make_dataset(), 1, sgfd=True)
