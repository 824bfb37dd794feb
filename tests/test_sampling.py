import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext, sampling
from sgfd_fast.errors import InputError
from sgfd_fast.sampling import (NegativeSampler, positives_csr, sample_negatives,
                                sample_negatives_reference)
from sgfd_fast.testing import random_bipartite, threads


def _positives(n_users=200, n_items=150, n_edges=3000, seed=0):
    pairs = random_bipartite(n_users, n_items, n_edges, power=1.1, seed=seed)
    return pairs, *positives_csr(n_users, n_items, pairs)


def _no_positive(users, neg, pairs):
    positive = set(map(tuple, pairs.tolist()))
    return all((int(u), int(i)) not in positive for u, row in zip(users, neg) for i in row)


def test_positives_csr_is_sorted_and_deduplicated():
    rowptr, items = positives_csr(3, 5, np.array([[2, 4], [0, 3], [2, 1], [0, 3], [0, 0]]))
    assert rowptr.tolist() == [0, 2, 2, 4] and items.tolist() == [0, 3, 1, 4]


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n_neg", [1, 3])
def test_cpp_equals_reference_and_never_returns_a_positive(index_dtype, n_neg):
    pairs, rowptr, items = _positives()
    users = torch.from_numpy(np.random.default_rng(1).integers(0, 200, 1000))
    got = sample_negatives(users, 150, rowptr.to(index_dtype), items.to(index_dtype), n_neg,
                           seed=7)
    want = sample_negatives_reference(users, 150, rowptr, items, n_neg, seed=7)
    assert got.shape == (1000, n_neg) and got.dtype == torch.int64
    assert torch.equal(got, want)
    assert int(got.min()) >= 0 and int(got.max()) < 150
    assert _no_positive(users, got, pairs)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_rows_on_both_sides_of_the_scan_length(index_dtype):
    # The C++ kernel scans rows of up to 32 positives and binary-searches longer ones; each user
    # here owns a dense half of the items, so about every other draw is rejected.
    lengths = [1, 31, 32, 33, 64, 999]
    rng = np.random.default_rng(3)
    pairs = np.concatenate([np.stack([np.full(n, u), rng.choice(2000, n, replace=False)], 1)
                            for u, n in enumerate(lengths)] +
                           [np.stack([np.full(1000, 6), np.arange(0, 2000, 2)], 1)])
    rowptr, items = positives_csr(7, 2000, pairs)
    users = torch.arange(7).repeat_interleave(300)
    got = sample_negatives(users, 2000, rowptr.to(index_dtype), items.to(index_dtype), 4, seed=5)
    assert torch.equal(got, sample_negatives_reference(users, 2000, rowptr, items, 4, seed=5))
    assert _no_positive(users, got, pairs)


def test_seed_changes_the_draws_and_same_seed_repeats():
    _, rowptr, items = _positives()
    users = torch.arange(200)
    a = sample_negatives(users, 150, rowptr, items, 2, seed=1)
    assert torch.equal(a, sample_negatives(users, 150, rowptr, items, 2, seed=1))
    assert (a != sample_negatives(users, 150, rowptr, items, 2, seed=2)).float().mean() > 0.9


def test_roughly_uniform_over_non_positives():
    # User 0 has positives {0, ..., 4} out of 10 items: the 5 others should each get ~1/5.
    rowptr, items = positives_csr(1, 10, np.array([[0, i] for i in range(5)]))
    neg = sample_negatives(torch.zeros(20000, dtype=torch.long), 10, rowptr, items, seed=3)
    counts = np.bincount(neg.numpy().ravel(), minlength=10)
    assert counts[:5].sum() == 0
    np.testing.assert_allclose(counts[5:] / 20000, 0.2, atol=0.015)


def test_nearly_saturated_user_and_user_without_positives():
    # User 0 has every item but 7; user 1 has none.
    rowptr, items = positives_csr(2, 50, np.array([[0, i] for i in range(50) if i != 7]))
    neg = sample_negatives(torch.tensor([0, 1, 0]), 50, rowptr, items, 4, seed=0)
    assert (neg[[0, 2]] == 7).all() and ((neg[1] >= 0) & (neg[1] < 50)).all()


def test_all_positive_user_is_a_clear_error():
    rowptr, items = positives_csr(2, 3, np.array([[1, 0], [1, 1], [1, 2], [0, 1]]))
    with pytest.raises(InputError, match="user 1 has all 3 items"):
        sample_negatives(torch.tensor([0, 1]), 3, rowptr, items)
    with pytest.raises(InputError, match="user 1 has all 3 items"):
        NegativeSampler(3, rowptr, items)


@pytest.mark.parametrize("kwargs, message", [
    (dict(user_ids=torch.tensor([0, 200])), r"user ids must lie in \[0, 200\)"),
    (dict(n_items=0), "n_items"),
    (dict(n_neg=-1), "n_neg"),
    (dict(train_items=torch.zeros(3, dtype=torch.int32)), "share int32 or int64"),
])
def test_bad_input(kwargs, message):
    _, rowptr, items = _positives()
    args = dict(user_ids=torch.tensor([0, 1]), n_items=150, train_rowptr=rowptr,
                train_items=items)
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        sample_negatives(**args)


def test_empty_batch_and_zero_negatives():
    _, rowptr, items = _positives()
    assert sample_negatives(torch.zeros(0, dtype=torch.long), 150, rowptr, items).shape == (0, 1)
    assert sample_negatives(torch.tensor([1, 2]), 150, rowptr, items, n_neg=0).shape == (2, 0)


def test_reference_backend_switch_gives_same_items():
    _, rowptr, items = _positives()
    users = torch.arange(200)
    with sgfd_fast.use_backend("reference"):
        ref = sample_negatives(users, 150, rowptr, items, 2, seed=9)
    assert torch.equal(ref, sample_negatives(users, 150, rowptr, items, 2, seed=9))


@pytest.mark.parametrize("spec", ["reference", "sample_negatives=reference"])
def test_backend_switch_routes_through_the_backend_table(monkeypatch, spec):
    calls = []

    def counted(*args):
        calls.append(args)
        return sample_negatives_reference(*args)

    monkeypatch.setattr(sampling, "sample_negatives_reference", counted)
    _, rowptr, items = _positives()
    users = torch.arange(200)
    compiled = _ext.cpu is not None
    with sgfd_fast.use_backend("spmm_csr=reference"):  # another op's entry changes nothing here
        assert _backend.serving("sample_negatives", "cpu") == ("cpp" if compiled else "reference")
        auto = sample_negatives(users, 150, rowptr, items, 2, seed=9)
    assert len(calls) == (0 if compiled else 1)
    with sgfd_fast.use_backend(spec):
        assert _backend.serving("sample_negatives", "cpu") == "reference"
        assert torch.equal(sample_negatives(users, 150, rowptr, items, 2, seed=9), auto)
    assert len(calls) == (1 if compiled else 2)


def test_independent_of_thread_count():
    _, rowptr, items = _positives(300, 200, 5000, seed=5)
    users = torch.arange(300).repeat(60)  # 36,000 slots: above the parallel threshold
    outs = []
    for n in (1, 2, 3):
        with threads(n):
            outs.append(sample_negatives(users, 200, rowptr, items, 2, seed=11))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_sampler_state_dict_resumes_exactly():
    pairs, _, _ = _positives()
    sampler = NegativeSampler.from_pairs(200, 150, pairs, n_neg=2, seed=4)
    batches = [torch.arange(i, i + 50) for i in range(0, 200, 50)]
    first = [sampler.sample(b) for b in batches[:2]]
    state = sampler.state_dict()
    rest = [sampler.sample(b) for b in batches[2:]]
    resumed = NegativeSampler.from_pairs(200, 150, pairs, n_neg=2, seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.sample(b)) for a, b in zip(rest, batches[2:]))
    assert not torch.equal(sampler.sample(batches[0]), first[0])  # a later step differs
    assert all(_no_positive(b, n, pairs) for b, n in zip(batches, first + rest))


@pytest.mark.cuda
def test_cuda_equals_cpu():
    pairs, rowptr, items = _positives(400, 300, 8000, seed=2)
    users = torch.from_numpy(np.random.default_rng(2).integers(0, 400, 5000))
    want = sample_negatives(users, 300, rowptr, items, 3, seed=13)
    for index_dtype in (torch.int32, torch.int64):
        got = sample_negatives(users.cuda(), 300, rowptr.to(index_dtype).cuda(),
                               items.to(index_dtype).cuda(), 3, seed=13)
        assert got.is_cuda
        assert torch.equal(got.cpu(), want)
    sampler = NegativeSampler.from_pairs(400, 300, pairs, seed=1, device="cuda")
    cpu_sampler = NegativeSampler.from_pairs(400, 300, pairs, seed=1)
    assert torch.equal(sampler.sample(users.cuda()).cpu(), cpu_sampler.sample(users))
