import numpy as np
import pytest

from sgfd_fast.data import carve_valid, load_interactions, random_split
from sgfd_fast.errors import DataError


def _inter(seed=0, n_users=50, n_items=40):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(1, 25))
        rows += [[u, int(i)] for i in rng.choice(n_items, k, replace=False)]
    return np.asarray(rows, dtype=np.int64), n_users


def test_carve_valid_rules_and_determinism():
    pairs, n_users = _inter()
    tr, va = carve_valid(pairs, n_users, 0.1, seed=5)
    tr2, va2 = carve_valid(pairs, n_users, 0.1, seed=5)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr3, va3 = carve_valid(pairs, n_users, 0.1, seed=6)
    assert not np.array_equal(va, va3)
    assert tr.shape[0] + va.shape[0] == pairs.shape[0]
    # the union is the input
    assert set(map(tuple, np.concatenate([tr, va]).tolist())) == set(map(tuple, pairs.tolist()))
    n = np.bincount(pairs[:, 0], minlength=n_users)
    nv = np.bincount(va[:, 0], minlength=n_users)
    nt = np.bincount(tr[:, 0], minlength=n_users)
    for u in range(n_users):
        if n[u] >= 2:
            assert nv[u] == min(max(1, int(np.floor(0.1 * n[u] + 0.5))), n[u] - 1)
        else:
            assert nv[u] == 0
        assert nt[u] >= 1


def test_carve_valid_zero_and_bad_ratio():
    pairs, n_users = _inter()
    tr, va = carve_valid(pairs, n_users, 0.0)
    assert va.shape == (0, 2) and tr.shape[0] == pairs.shape[0]
    with pytest.raises(DataError, match="valid_ratio"):
        carve_valid(pairs, n_users, 1.5)


def test_random_split_811():
    pairs, n_users = _inter(1)
    tr, va, te = random_split(pairs, n_users, "8:1:1", seed=3)
    assert tr.shape[0] + va.shape[0] + te.shape[0] == pairs.shape[0]
    assert np.all(np.bincount(tr[:, 0], minlength=n_users) >= 1)
    assert 0.07 < te.shape[0] / pairs.shape[0] < 0.13
    again = random_split(pairs, n_users, "8:1:1", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    with pytest.raises(DataError, match="8:1:1"):
        random_split(pairs, n_users, "8-1-1")


def test_load_interactions_raw_ids(tmp_path):
    p = tmp_path / "raw.tsv"
    p.write_text("user\titem\trating\nalice\tB01\t5\nbob\tB02\t3\nalice\tB02\t4\r\n")
    pairs, uids, iids = load_interactions(p, user_col="user", item_col="item")
    assert pairs.tolist() == [[0, 0], [1, 1], [0, 1]]
    assert uids.tolist() == ["alice", "bob"] and iids.tolist() == ["B01", "B02"]


def test_split_option_on_directory(sgfd_dir):
    from sgfd_fast.data import load_dataset

    ds = load_dataset(path=sgfd_dir, split="8:1:1", seed=1)
    assert ds.train.shape[0] + ds.valid.shape[0] + ds.test.shape[0] == 28
