"""Ranking metrics against hand-computed tables, masked top-K, and evaluate() against brute force."""

import math

import numpy as np
import pytest
import torch

from sgfd_fast.data import Dataset
from sgfd_fast.errors import ConfigError, DataError, InputError
from sgfd_fast.evaluation import _masked_topk_dense, evaluate, ranking_metrics
from sgfd_fast.models.base import Recommender

ln = math.log


def _csr(lists):
    rowptr = torch.tensor([0] + list(np.cumsum([len(x) for x in lists])), dtype=torch.long)
    return rowptr, torch.tensor([i for x in lists for i in x], dtype=torch.long)


# 4 users, top-3 lists. hits per position and |truth| in the comments.
TOPK = torch.tensor([[1, 2, 3],      # truth {2, 9}:        hits 0 1 0, n=2 (< K=3)
                     [4, 5, 6],      # truth {7}:           hits 0 0 0 (no hit)
                     [8, -1, -1],    # truth {8, 3, 5, 6}:  hits 1 0 0 (only one rankable item)
                     [10, 11, 12]])  # truth {12, 10}:      hits 1 0 1
TRUTH = [[2, 9], [7], [8, 3, 5, 6], [12, 10]]


def _d(n):  # 1 / log2(position + 1), position 1-based
    return 1.0 / math.log2(n + 1)


def test_standard_table():
    m = ranking_metrics(TOPK, *_csr(TRUTH), ks=[1, 2, 3])
    per_user = {  # (recall, ndcg, precision, map, hit) per user, computed by hand
        1: [(0, 0, 0, 0, 0), (0, 0, 0, 0, 0), (1 / 4, 1, 1, 1, 1), (1 / 2, 1, 1, 1, 1)],
        2: [(1 / 2, _d(2) / (_d(1) + _d(2)), 1 / 2, (1 / 2) / 2, 1), (0, 0, 0, 0, 0),
            (1 / 4, 1 / (_d(1) + _d(2)), 1 / 2, 1 / 2, 1),
            (1 / 2, 1 / (_d(1) + _d(2)), 1 / 2, 1 / 2, 1)],
        3: [(1 / 2, _d(2) / (_d(1) + _d(2)), 1 / 3, (1 / 2) / 2, 1), (0, 0, 0, 0, 0),
            (1 / 4, 1 / (_d(1) + _d(2) + _d(3)), 1 / 3, 1 / 3, 1),
            (1, (_d(1) + _d(3)) / (_d(1) + _d(2)), 2 / 3, (1 + 2 / 3) / 2, 1)],
    }
    for k, rows in per_user.items():
        for j, name in enumerate(["recall", "ndcg", "precision", "map", "hit"]):
            assert m[f"{name}@{k}"] == pytest.approx(np.mean([r[j] for r in rows]), abs=1e-12), \
                (name, k)
    assert m["ndcg@2"] == pytest.approx(
        (_d(2) / (_d(1) + _d(2)) + 2 / (_d(1) + _d(2))) / 4)


def test_legacy_bm3_table():
    """recall2_ (micro), ndcg2_ (IDCG from hits in the first k-1 positions, DCG over the whole
    list: user 3 scores 1.5 at k=2), hk_ (any hit in the list, same for every k)."""
    m = ranking_metrics(TOPK, *_csr(TRUTH), ks=[1, 2, 3], protocol="legacy", legacy_metrics="mmrec")
    n_total = 2 + 1 + 4 + 2
    assert m["recall@1"] == pytest.approx(2 / n_total)
    assert m["recall@2"] == pytest.approx(3 / n_total)
    assert m["recall@3"] == pytest.approx(4 / n_total)
    assert m["ndcg@1"] == 0.0
    # k=2 looks at position 1 only for the IDCG: users 2 and 3 have a hit there
    u3_full_dcg = 1 / ln(2) + 1 / ln(4)
    assert m["ndcg@2"] == pytest.approx((1.0 + u3_full_dcg / (1 / ln(2))) / 4)
    # k=3: first two positions; user 0 has 1 hit (at position 2), user 3 one hit
    assert m["ndcg@3"] == pytest.approx(((1 / ln(3)) / (1 / ln(2)) + 1.0
                                         + u3_full_dcg / (1 / ln(2))) / 4)
    for k in (1, 2, 3):
        assert m[f"hit@{k}"] == pytest.approx(3 / 4)
        assert m[f"precision@{k}"] == pytest.approx(
            ranking_metrics(TOPK, *_csr(TRUTH), ks=[k])[f"precision@{k}"])
        assert m[f"map@{k}"] == pytest.approx(ranking_metrics(TOPK, *_csr(TRUTH), ks=[k])[f"map@{k}"])


def test_legacy_hit_normalised_table():
    from sgfd_fast.models import BM3, GRCN, MAML

    assert GRCN.legacy_metrics == MAML.legacy_metrics == "hit_normalized"
    assert BM3.legacy_metrics == "mmrec"
    m = ranking_metrics(TOPK, *_csr(TRUTH), ks=[2, 3], protocol="legacy",
                        legacy_metrics="hit_normalized")
    assert m["recall@3"] == pytest.approx((1 / 2 + 0 + 1 / 4 + 1) / 4)
    # NDCG normalised by the number of hits: a single hit at position 2 gives ln2/ln3
    assert m["ndcg@2"] == pytest.approx((ln(2) / ln(3) + 0 + 1 + 1) / 4)
    u3 = (1 / ln(2) + 1 / ln(4)) / (1 / ln(2) + 1 / ln(3))
    assert m["ndcg@3"] == pytest.approx((ln(2) / ln(3) + 0 + 1 + u3) / 4)
    assert m["hit@2"] == pytest.approx(3 / 4)


def test_metric_input_errors():
    rowptr, items = _csr(TRUTH)
    with pytest.raises(InputError, match="every k"):
        ranking_metrics(TOPK, rowptr, items, ks=[5])
    with pytest.raises(InputError, match="at least one truth item"):
        ranking_metrics(TOPK, *_csr([[2], [], [8], [10]]), ks=[1])
    with pytest.raises(InputError, match="truth_rowptr"):
        ranking_metrics(TOPK, rowptr[:-1], items, ks=[1])
    with pytest.raises(InputError, match="protocol"):
        ranking_metrics(TOPK, rowptr, items, ks=[1], protocol="paper")


def test_masked_topk_dense_ties_masks_and_short_rows():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0],
                           [5.0, 4.0, 3.0, 2.0, 1.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0]])
    rowptr, col = _csr([[2], [], [0, 1, 3, 4]])
    v, i = _masked_topk_dense(scores, rowptr, col, 3, None)
    assert i.tolist() == [[1, 4, 3], [0, 1, 2], [2, -1, -1]]   # ties -> lower id; masked gone
    assert v[2, 1:].tolist() == [-math.inf, -math.inf]
    v, i = _masked_topk_dense(scores, rowptr, col, 7, None)       # k beyond the catalogue
    assert i[1].tolist() == [0, 1, 2, 3, 4, -1, -1]
    # GRCN's legacy mask: masked items score 1e-5 and stay rankable
    v, i = _masked_topk_dense(scores, rowptr, col, 3, 1e-5)
    assert i[2].tolist() == [0, 1, 3]
    assert v[2, 0].item() == pytest.approx(1e-5)


# ---------------------------------------------------------------------------------------------
# evaluate() against a brute-force dense computation
# ---------------------------------------------------------------------------------------------


class _FixedScorer(Recommender):
    def __init__(self, dataset, dim=6, dot=True, seed=0):
        super().__init__(dataset, {})
        g = torch.Generator().manual_seed(seed)
        # integer-valued embeddings: many exact ties, exercised by the lower-id rule
        self.u = torch.nn.Parameter(torch.randint(-2, 3, (dataset.n_users, dim), generator=g).float())
        self.i = torch.nn.Parameter(torch.randint(-2, 3, (dataset.n_items, dim), generator=g).float())
        self.dot = dot

    def ranking_embeddings(self):
        return (self.u, self.i) if self.dot else None

    def score_users(self, users):
        return self.u[users] @ self.i.T


def _tiny_dataset(seed=0, n_users=23, n_items=17):
    rng = np.random.default_rng(seed)
    pairs = np.array([(u, i) for u in range(n_users) for i in range(n_items)
                      if rng.random() < 0.3])
    rng.shuffle(pairs)
    part = rng.integers(0, 10, len(pairs))
    train, valid, test = pairs[part < 6], pairs[part == 6], pairs[part > 6]
    # a user with test items but no training items is never evaluated
    train = train[train[:, 0] != 0]
    return Dataset(name="tiny", n_users=n_users, n_items=n_items, train=train, valid=valid,
                   test=test, features={"x": rng.normal(size=(n_items, 5))},
                   labels=rng.integers(0, 3, n_items), n_labels=3)


def _brute_force(model, ds, split, ks, protocol):
    truth = ds.test if split == "test" or protocol == "legacy" else ds.valid
    known = ds.train if split == "valid" and protocol == "standard" \
        else np.concatenate([ds.train, ds.valid])
    scores = (model.u @ model.i.T).detach().numpy().astype(np.float64)
    rows = {}
    for u in sorted(set(truth[:, 0].tolist()) & set(ds.train[:, 0].tolist())):
        masked = set(known[known[:, 0] == u, 1].tolist())
        order = sorted((i for i in range(ds.n_items) if i not in masked),
                       key=lambda i: (-scores[u, i], i))
        top = order[:max(ks)] + [-1] * (max(ks) - len(order[:max(ks)]))
        rows[u] = (top, set(truth[truth[:, 0] == u, 1].tolist()))
    out = {}
    for k in ks:
        per = []
        for top, t in rows.values():
            hits = [1.0 if i in t else 0.0 for i in top[:k]]
            h = sum(hits)
            dcg = sum(x / math.log2(j + 2) for j, x in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(len(t), k)))
            ap = sum(hits[j] * sum(hits[:j + 1]) / (j + 1) for j in range(k)) / min(len(t), k)
            per.append((h / len(t), dcg / idcg, h / k, ap, float(h > 0)))
        for j, name in enumerate(["recall", "ndcg", "precision", "map", "hit"]):
            out[f"{name}@{k}"] = float(np.mean([p[j] for p in per]))
    if protocol == "legacy":  # BM3's micro recall
        for k in ks:
            hits = sum(sum(1 for i in top[:k] if i in t) for top, t in rows.values())
            out[f"recall@{k}"] = hits / sum(len(t) for _, t in rows.values())
    return out


@pytest.mark.parametrize("dot", [True, False])
@pytest.mark.parametrize("split,protocol", [("valid", "standard"), ("test", "standard"),
                                            ("valid", "legacy")])
def test_evaluate_matches_brute_force(dot, split, protocol):
    ds = _tiny_dataset()
    model = _FixedScorer(ds, dot=dot)
    model.train()
    cfg = {"topk": [1, 3, 20], "eval_batch_size": 5, "protocol": protocol, "model": "BM3"}
    got = evaluate(model, ds, split, cfg)
    want = _brute_force(model, ds, split, cfg["topk"], protocol)
    assert model.training  # mode restored
    for key, value in want.items():
        if protocol == "legacy" and key.startswith(("ndcg", "hit")):
            continue  # legacy NDCG/Hit definitions are covered by the tables above
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_evaluate_errors():
    ds = _tiny_dataset()
    model = _FixedScorer(ds)
    cfg = {"topk": [5], "eval_batch_size": 8, "protocol": "standard"}
    with pytest.raises(ConfigError, match="split"):
        evaluate(model, ds, "train", cfg)
    # topk=[0] and protocol=paper are refused by load_config (tests/test_config.py)
    empty = Dataset(name="novalid", n_users=ds.n_users, n_items=ds.n_items, train=ds.train,
                    valid=np.zeros((0, 2)), test=ds.test, features=ds.features,
                    labels=ds.labels, n_labels=ds.n_labels)
    with pytest.raises(DataError, match="no valid interactions"):
        evaluate(model, empty, "valid", cfg)


class GRCN(_FixedScorer):  # declares the legacy GRCN metric family, as models.GRCN does
    legacy_metrics = "hit_normalized"
    legacy_mask_value = 1e-5


@pytest.mark.parametrize("dot", [True, False])
def test_evaluate_legacy_grcn_mask_value(dot):
    """Legacy GRCN: training items score 1e-5 and stay rankable; per-user recall."""
    ds = _tiny_dataset(seed=3)
    model = GRCN(ds, dot=dot, seed=3)
    cfg = {"topk": [2, 5], "eval_batch_size": 7, "protocol": "legacy"}
    got = evaluate(model, ds, "test", cfg)
    scores = (model.u @ model.i.T).detach().numpy().astype(np.float64)
    known = np.concatenate([ds.train, ds.valid])
    scores[known[:, 0], known[:, 1]] = 1e-5
    per_user = {2: [], 5: []}
    for u in sorted(set(ds.test[:, 0].tolist()) & set(ds.train[:, 0].tolist())):
        truth = set(ds.test[ds.test[:, 0] == u, 1].tolist())
        order = sorted(range(ds.n_items), key=lambda i: (-scores[u, i], i))
        for k in per_user:
            per_user[k].append(sum(i in truth for i in order[:k]) / len(truth))
    for k, values in per_user.items():
        assert got[f"recall@{k}"] == pytest.approx(np.mean(values), abs=1e-9)


@pytest.mark.parametrize("mask_value", [None, 1e-5])
def test_dense_topk_nan_counts_as_minus_inf(mask_value):
    """The score_users path (MAML) follows masked_topk's rule: NaN and -inf are never returned,
    ties to the lower id; a NaN once made torch.topk's k-th value NaN and dropped valid items."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-3, 4, (6, 9), generator=g).float()
    scores[0, 2] = scores[1, :4] = scores[3, :] = float("nan")
    scores[2, 5] = float("-inf")
    rowptr = torch.tensor([0, 1, 1, 3, 3, 4, 4])
    col = torch.tensor([7, 0, 8, 1])
    for k in (1, 3, 9, 12):
        values, indices = _masked_topk_dense(scores, rowptr, col, k, mask_value)
        for u in range(6):
            masked = set(col[rowptr[u]:rowptr[u + 1]].tolist())
            row = [mask_value if i in masked and mask_value is not None else float(s)
                   for i, s in enumerate(scores[u])]
            cands = sorted((-s, i) for i, s in enumerate(row)
                           if not (i in masked and mask_value is None) and s == s
                           and s != float("-inf"))[:k]
            want = [i for _, i in cands] + [-1] * (k - len(cands))
            assert indices[u].tolist() == want, (u, k)
            assert values[u, len(cands):].eq(float("-inf")).all()
