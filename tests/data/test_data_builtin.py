import time

import numpy as np

from sgfd_fast.data import DATASETS, load_dataset
from sgfd_fast.graph import CSR


def test_office_stats_exact():
    t0 = time.perf_counter()
    ds = load_dataset("office")
    print(f"\noffice load_dataset: {time.perf_counter() - t0:.3f}s (package already imported)")
    s = ds.stats()
    assert s["n_users"] == 4874 and s["n_items"] == 2406
    assert s["n_train_total"] == 37027
    assert s["n_train"] + s["n_valid"] == 37027 and s["n_valid"] > 0
    assert s["n_test"] == 15930
    assert s["modalities"] == {"text": 384, "relation": 64}
    assert s["n_labels"] == 40
    assert s["synthetic"] == [] and ds.synthetic == ()
    assert "synthetic" not in ds.description
    assert 0.99 < s["sparsity"] < 1.0
    assert s["n_test_only_items"] == 1  # item 2405
    tr_items = set(ds.train[:, 1].tolist()) | set(ds.valid[:, 1].tolist())
    assert 2405 not in tr_items and 2405 in set(ds.test[:, 1].tolist())
    for m, x in ds.features.items():
        assert x.dtype == np.float32 and x.flags.c_contiguous and np.isfinite(x).all()
        assert x.shape[0] == 2406
    assert ds.labels.dtype == np.int64 and ds.labels.min() == 0 and ds.labels.max() == 39
    assert ds.meta["label_values"][0] == 0  # class 0 is "unknown"
    assert ds.item_ids is not None and len(ds.item_ids) == 2406 and ds.item_ids[0].startswith("B")
    # text embeddings are unit-norm (float16 on disk)
    assert np.allclose(np.linalg.norm(ds.features["text"], axis=1), 1.0, atol=1e-2)


def test_office_deterministic_and_csr():
    a, b = load_dataset("office"), load_dataset("office")
    assert np.array_equal(a.valid, b.valid) and np.array_equal(a.train, b.train)
    c = load_dataset("office", seed=7)
    assert not np.array_equal(a.valid, c.valid)
    g = CSR.from_coo(a.train[:, 0], a.train[:, 1], None, a.n_users, a.n_items)
    indptr, idx = g.rowptr.numpy(), g.col.numpy()
    assert indptr.shape == (a.n_users + 1,) and indptr[-1] == a.train.shape[0]
    assert idx.dtype == np.int64 and indptr.dtype == np.int64
    for u in (0, 1, 100):
        row = idx[indptr[u]:indptr[u + 1]]
        assert np.all(np.diff(row) > 0)
        assert set(row.tolist()) == set(a.train[a.train[:, 0] == u, 1].tolist())


def test_toysgames_synthetic_stats():
    t0 = time.perf_counter()
    ds = load_dataset("toysgames-synthetic")
    print(f"\ntoysgames-synthetic load_dataset: {time.perf_counter() - t0:.3f}s")
    s = ds.stats()
    assert s["n_users"] == 18748 and s["n_items"] == 11673
    assert s["n_train_total"] == 113014 and s["n_train"] + s["n_valid"] == 113014
    assert s["n_test"] == 48639
    assert s["modalities"] == {"image": 4096, "text": 384}
    assert s["n_labels"] == 19
    assert ds.synthetic == ("image", "text", "labels")
    assert "synthetic" in ds.description and "real graph" in ds.description
    x = ds.features["image"]
    assert x.dtype == np.float32 and x.flags.c_contiguous and np.isfinite(x).all()
    again = load_dataset("toysgames-synthetic")
    assert np.array_equal(again.features["text"], ds.features["text"])
    assert np.array_equal(again.labels, ds.labels)


def test_datasets_listed():
    assert set(DATASETS) == {"office", "toysgames-synthetic", "scientific"}
