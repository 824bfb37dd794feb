"""MGCN against a float64 transcription of MMRec's formulation (Yu et al., ACM MM 2023; MMRec's
``mgcn.py``), written densely here with MMRec's names: ``build_sim`` cosines, ``torch.topk`` and
``build_knn_normalized_graph(norm_type='sym')`` (cosine weights, row-sum degrees), the
behaviour-guided purifier, LightGCN's user–item view, the item–item views through ``R``, the
behaviour-aware fuser, ``bpr_loss`` with its emb_loss, and the two in-batch InfoNCE terms."""

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.config import load_config
from sgfd_fast.data import write_sgfd
from sgfd_fast.errors import DataError
from sgfd_fast.models import build_model
from sgfd_fast.train import main

from conftest import make_dataset, training_batch

REG, CL, BATCH = 0.1, 0.3, 50


def _dataset():
    ds = make_dataset()
    ds.features = {"image": ds.features["m0"], "text": ds.features["m1"]}
    return ds


def _model(ds, sgfd, knn_k=3):
    cfg = load_config("MGCN", None, overrides=[
        ("embedding_size", 8), ("sgfd", sgfd), ("knn_k", knn_k), ("reg_weight", REG),
        ("cl_loss", CL), ("train_batch_size", BATCH)]).points()[0]
    torch.manual_seed(0)
    return build_model("MGCN", ds, cfg).double()


def _knn_normalized_graph(x, k):
    """build_sim, then build_knn_normalized_graph(topk=k, norm_type='sym'), dense; negative
    cosines clamped at 0 (a documented difference: MMRec's row sums may fall below 0)."""
    unit = x / x.norm(dim=-1, keepdim=True)
    val, ind = torch.topk(unit @ unit.T, min(k, x.shape[0]), dim=-1)
    val = val.clamp(min=0)
    A = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64).scatter_(1, ind, val)
    d = A.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return (d[:, None] * A * d[None, :]).float().double()  # the model stores float32


def _norm_adj(pairs, nu, ni):
    """MMRec's get_adj_mat: D^-1/2 A D^-1/2 (inf -> 0), rounded to float32 as stored."""
    A = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    A[pairs[:, 0], pairs[:, 1] + nu] = 1.0
    A[pairs[:, 1] + nu, pairs[:, 0]] = 1.0
    d = A.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return (d[:, None] * A * d[None, :]).float().double()


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _transcription(m, ds, users, pos, neg, knn_k, students=None):
    nu, ni = ds.n_users, ds.n_items
    image, text = (torch.from_numpy(a).double() for a in ds.features.values())
    image_adj, text_adj = _knn_normalized_graph(image, knn_k), _knn_normalized_graph(text, knn_k)
    norm_adj = _norm_adj(torch.from_numpy(ds.train), nu, ni)
    R = norm_adj[:nu, nu:]
    p = {"user_embedding": _leaf(m.user_embedding), "item_id_embedding": _leaf(m.item_embedding)}
    for name, lin in (("gate_v", m.purifiers[0]), ("gate_t", m.purifiers[1]),
                      ("query_common.0", m.query[0]), ("gate_image_prefer", m.preferences[0]),
                      ("gate_text_prefer", m.preferences[1])):
        p[f"{name}.weight"], p[f"{name}.bias"] = _leaf(lin.weight), _leaf(lin.bias)
    p["query_common.2.weight"] = _leaf(m.query[2].weight)
    if students is None:  # image_trs, text_trs
        for name, lin in (("image_trs", m.extractors[0]), ("text_trs", m.extractors[1])):
            p[f"{name}.weight"], p[f"{name}.bias"] = _leaf(lin.weight), _leaf(lin.bias)
        image_feats = image @ p["image_trs.weight"].T + p["image_trs.bias"]
        text_feats = text @ p["text_trs.weight"].T + p["text_trs.bias"]
    else:  # SGFD: each modality's student, L2(leaky_relu(W f + b))
        image_feats, text_feats = (F.normalize(F.leaky_relu(f @ s.weight.detach().T
                                                            + s.bias.detach()))
                                   for f, s in zip((image, text), students))

    def linear(name, x):
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    E = p["item_id_embedding"]
    image_item = E * torch.sigmoid(linear("gate_v", image_feats))
    text_item = E * torch.sigmoid(linear("gate_t", text_feats))
    ego = torch.cat([p["user_embedding"], E])
    layers = [ego]
    for _ in range(2):
        layers.append(norm_adj @ layers[-1])
    content = torch.stack(layers, 1).mean(1)
    image_item = image_adj @ image_item
    text_item = text_adj @ text_item
    image_embeds = torch.cat([R @ image_item, image_item])
    text_embeds = torch.cat([R @ text_item, text_item])

    def query(x):
        return torch.tanh(linear("query_common.0", x)) @ p["query_common.2.weight"].T

    w = torch.softmax(torch.cat([query(image_embeds), query(text_embeds)], -1), -1)
    common = w[:, 0:1] * image_embeds + w[:, 1:2] * text_embeds
    sep_image = torch.sigmoid(linear("gate_image_prefer", content)) * (image_embeds - common)
    sep_text = torch.sigmoid(linear("gate_text_prefer", content)) * (text_embeds - common)
    side = (sep_image + sep_text + common) / 3
    u_all, i_all = (content + side).split([nu, ni])
    u, i, j = u_all[users], i_all[pos], i_all[neg]
    mf = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    reg = (0.5 * (u ** 2).sum() + 0.5 * (i ** 2).sum() + 0.5 * (j ** 2).sum()) / BATCH

    def info_nce(v1, v2, t):
        v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
        pos_score = torch.exp((v1 * v2).sum(-1) / t)
        ttl = torch.exp(v1 @ v2.T / t).sum(1)
        return torch.mean(-torch.log(pos_score / ttl))

    side_u, side_i = side.split([nu, ni])
    content_u, content_i = content.split([nu, ni])
    cl = info_nce(side_i[pos], content_i[pos], 0.2) + info_nce(side_u[users], content_u[users], 0.2)
    loss = mf + REG * reg + CL * cl
    loss.backward()
    return {"bpr": mf, "reg": reg, "cl": cl, "loss": loss}, {k: v.grad for k, v in p.items()}


# the model's parameter of each transcription name
_NAMES = {"user_embedding": "user_embedding", "item_id_embedding": "item_embedding",
          "gate_v": "purifiers.0", "gate_t": "purifiers.1", "query_common.0": "query.0",
          "query_common.2": "query.2", "gate_image_prefer": "preferences.0",
          "gate_text_prefer": "preferences.1", "image_trs": "extractors.0",
          "text_trs": "extractors.1"}


@pytest.mark.parametrize("sgfd", [False, True])
# 20 > n_items: every item is a neighbour, and negative cosines (the clamp) take part
@pytest.mark.parametrize("knn_k", [3, 20])
def test_step_matches_float64_transcription(sgfd, knn_k):
    ds = _dataset()
    m = _model(ds, sgfd, knn_k)
    users, items, neg = training_batch(ds, n_neg=1)
    parts = m.calculate_loss(users, items, neg)
    parts["loss"].backward()
    want, grads = _transcription(m, ds, users, items, neg[:, 0], knn_k,
                                 students=list(m.sgfd.students) if sgfd else None)
    for k in ("bpr", "reg", "cl"):
        torch.testing.assert_close(parts[k], want[k].detach(), rtol=1e-12, atol=0)
    total = want["loss"].detach() + (parts["sgfd"].detach() if sgfd else 0)
    torch.testing.assert_close(parts["loss"].detach(), total, rtol=1e-12, atol=0)
    params = dict(m.named_parameters())
    assert len(grads) == len([k for k in params if not k.startswith("sgfd.")])
    for name, g in grads.items():
        base, _, leaf = name.rpartition(".") if name not in _NAMES else (name, "", "")
        ours = _NAMES[base] + (f".{leaf}" if leaf else "")
        assert g is not None and g.abs().max() > 0, name
        torch.testing.assert_close(params[ours].grad, g, rtol=1e-10, atol=1e-14, msg=name)


def test_ranking_is_the_fused_embeddings():
    ds = _dataset()
    m = _model(ds, False)
    users, items = m.ranking_embeddings()
    assert users.shape == (ds.n_users, 8) and items.shape == (ds.n_items, 8)
    content, side = m.forward()
    torch.testing.assert_close(torch.cat([users, items]), content + side)


@pytest.mark.parametrize("features", [{"text": 0}, {}])
def test_needs_two_modalities(features):
    ds = _dataset()
    ds.features = {k: ds.features[k] for k in features}
    with pytest.raises(DataError, match="MGCN needs two item feature modalities"):
        _model(ds, False)


def test_one_modality_dataset_exits_2_from_the_cli(tmp_path, capsys):
    ds = _dataset()
    ds.features = {"text": ds.features["text"]}
    ds.valid, ds.test = ds.test[::2], ds.test[1::2]
    data = write_sgfd(ds, tmp_path / "one")
    rc = main(["-m", "MGCN", "--data-path", str(data), "--out", str(tmp_path / "run"),
               "epochs=1", "topk=[5]", "valid_metric=recall@5", "knn_k=3"])  # within its 9 items
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error: MGCN needs two item feature modalities"), err
    assert "has 1 (text)" in last and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing was saved, nothing left behind


def test_narrowed_modalities_named_in_the_error(tmp_path, capsys):
    """office has two modalities: `modalities=[text]` narrowed them, and the error says so."""
    ds = _dataset()
    ds.valid, ds.test = ds.test[::2], ds.test[1::2]
    data = write_sgfd(ds, tmp_path / "two")
    rc = main(["-m", "MGCN", "--data-path", str(data), "--out", str(tmp_path / "run"),
               "epochs=1", "topk=[5]", "valid_metric=recall@5", "knn_k=3", "modalities=[text]"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "with modalities=[text] has 1 (text)" in last, err
    assert "Traceback" not in err and not (tmp_path / "run").exists(), err
