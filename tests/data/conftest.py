import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sgfd_fast.data import Dataset, write_mmrec, write_sgfd

ROOT = Path(__file__).resolve().parents[2]


def tiny_dataset(seed=0, n_users=7, n_items=9, with_ids=True):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for u in range(n_users):
        items = rng.choice(n_items - 1, size=4, replace=False)  # item n_items-1: test only (cold)
        train += [[u, int(i)] for i in items[:3]]
        test.append([u, int(items[3])])
    test[0] = [0, n_items - 1]
    train = np.asarray(train, dtype=np.int64)
    feats = {"image": rng.standard_normal((n_items, 5)).astype(np.float32),
             "text": rng.standard_normal((n_items, 3)).astype(np.float32)}
    is_valid = np.zeros(len(train), dtype=bool)
    is_valid[[2, 5, 8]] = True  # the third train item of users 0, 1, 2
    return Dataset(name="tiny", n_users=n_users, n_items=n_items, train=train[~is_valid],
                   valid=train[is_valid], test=np.asarray(test), features=feats,
                   labels=rng.integers(0, 3, n_items), n_labels=3, synthetic=(),
                   description="tiny test data",
                   item_ids=np.asarray([f"A{i:03d}" for i in range(n_items)]) if with_ids else None)


@pytest.fixture
def tiny():
    return tiny_dataset()


@pytest.fixture
def sgfd_dir(tmp_path, tiny):
    d = tmp_path / "sgfd"
    write_sgfd(tiny, d, write_valid=False)
    return d


@pytest.fixture
def mmrec_dir(tmp_path, tiny):
    d = tmp_path / "mm"
    lp = write_mmrec(tiny, d)
    return d, lp


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "sgfd_fast.data", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120)


@pytest.fixture
def cli():
    return run_cli
