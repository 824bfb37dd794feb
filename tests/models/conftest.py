"""Tiny generated datasets and a complete BM3 config for the model tests."""

import numpy as np
import pytest
import torch

from sgfd_fast.data import Dataset


def make_dataset(seed=0, n_users=12, n_items=10, widths=(40, 7), n_labels=4):
    """Every user has >= 2 training items; item n_items-1 has no interaction (isolated node);
    user 0 is a hub with most items."""
    rng = np.random.default_rng(seed)
    pairs = {(0, i) for i in range(n_items - 2)}
    for u in range(1, n_users):
        for i in rng.choice(n_items - 1, size=int(rng.integers(2, 5)), replace=False):
            pairs.add((u, int(i)))
    pairs = np.array(sorted(pairs), dtype=np.int64)
    test_rows = rng.random(len(pairs)) < 0.2
    features = {f"m{j}": rng.standard_normal((n_items, w)).astype(np.float32)
                for j, w in enumerate(widths)}
    return Dataset(name="tiny", n_users=n_users, n_items=n_items, train=pairs[~test_rows],
                   valid=np.zeros((0, 2), dtype=np.int64), test=pairs[test_rows],
                   features=features, labels=rng.integers(0, n_labels, n_items),
                   n_labels=n_labels)


def training_batch(ds, n_neg=1, seed=0):
    """Every training pair as (users, items, negatives): n_neg uniform items per pair outside the
    user's training items, drawn here by plain rejection (independent of sgfd_fast.sampling)."""
    rng = np.random.default_rng(seed)
    known = {(int(u), int(i)) for u, i in ds.train}
    users, items = ds.train[:, 0], ds.train[:, 1]
    neg = np.empty((len(users), n_neg), dtype=np.int64)
    for b, u in enumerate(users.tolist()):
        for j in range(n_neg):
            i = int(rng.integers(ds.n_items))
            while (u, i) in known:
                i = int(rng.integers(ds.n_items))
            neg[b, j] = i
    return torch.from_numpy(users.copy()), torch.from_numpy(items.copy()), torch.from_numpy(neg)


def adam_steps(model, steps, lr, *batch):
    """``steps`` Adam steps of ``model.calculate_loss(*batch)``; returns the losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(*batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def bm3_config(**overrides):
    cfg = dict(embedding_size=8, n_layers=2, dropout=0.5, reg_weight=0.1, cl_weight=2.0,
               sgfd=True, sgfd_loss="official", ce_weight=0.1, kd_weight=0.01, t_decay=5.0,
               collapse_teacher=True, topk=[1, 5], eval_batch_size=4, protocol="standard")
    cfg.update(overrides)
    return cfg


@pytest.fixture
def tiny():
    return make_dataset


@pytest.fixture
def config():
    return bm3_config


@pytest.fixture
def batch():
    return training_batch


@pytest.fixture
def train():
    return adam_steps
