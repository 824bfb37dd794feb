import itertools

import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast import _backend, _ext
from sgfd_fast.errors import InputError
from sgfd_fast.graph import normalized_bipartite
from sgfd_fast.ops import sample_edges, sample_edges_reference
from sgfd_fast.testing import random_bipartite


def inclusion_probabilities(weight, n_keep):
    """P(edge kept) of sequential draws without replacement, each ∝ weight among those left
    (torch.multinomial's sampling), by enumerating every ordered draw."""
    w = [float(x) for x in weight]
    p = [0.0] * len(w)
    for seq in itertools.permutations(range(len(w)), n_keep):
        prob, left = 1.0, sum(w)
        for e in seq:
            prob *= w[e] / left
            left -= w[e]
        for e in seq:
            p[e] += prob
    return torch.tensor(p, dtype=torch.float64)


def test_reference_samples_weighted_without_replacement():
    weight = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.4], dtype=torch.float64)
    n_draws = 3000
    counts = torch.zeros(5, dtype=torch.float64)
    for key in range(n_draws):
        kept = sample_edges_reference(weight, 2, key)
        assert kept.tolist() == sorted(set(kept.tolist())) and kept.numel() == 2
        counts[kept] += 1
    want = inclusion_probabilities(weight, 2)
    sigma = (want * (1 - want) / n_draws).sqrt()
    assert bool(((counts / n_draws - want).abs() < 5 * sigma).all()), (counts / n_draws, want)


def _backends():
    return ["cpp"] if _ext.cpu is not None else []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nnz, n_keep", [(0, 0), (1, 1), (7, 0), (7, 7), (333, 300), (5000, 17)])
def test_backends_match_reference(dtype, nnz, n_keep):
    g = torch.Generator().manual_seed(nnz)
    weight = (torch.rand(nnz, generator=g, dtype=torch.float64) + 0.01).to(dtype)
    weight[: nnz // 3] = 0.5  # equal weights: only the hash separates them
    for key in (0, -1, 2**63 - 1, 123456789):
        want = sample_edges_reference(weight, n_keep, key)
        for backend in _backends():
            with sgfd_fast.use_backend(backend):
                assert _backend.serving("sample_edges", "cpu") == backend
                got = sample_edges(weight, n_keep, key)
            assert got.dtype == torch.int64 and torch.equal(got, want), (backend, key)


def test_key_decides_the_draw_and_ids_are_ascending():
    weight = torch.rand(1000, generator=torch.Generator().manual_seed(0)) + 0.1
    a = sample_edges(weight, 900, key=7)
    assert torch.equal(a, sample_edges(weight, 900, key=7))
    assert not torch.equal(a, sample_edges(weight, 900, key=8))
    assert torch.equal(a, a.unique()) and a.numel() == 900
    # a key beyond int64 is used mod 2^64
    assert torch.equal(sample_edges(weight, 900, key=7 + 2**64), a)


def test_freedom_degree_sensitive_pruning_matches_a_float64_transcription():
    # FREEDOM's pre_epoch_processing, transcribed in float64: weights 1/sqrt(d_u d_i) (+1e-7)
    # of the full training graph, keep int(nnz (1 - dropout)), then the kept edges re-normalised
    # with the kept degrees, both directions. Our graph.normalized_bipartite omits the 1e-7.
    n_users, n_items, dropout = 40, 30, 0.2
    pairs = random_bipartite(n_users, n_items, 300, seed=1)
    u, i = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    d_u = torch.bincount(u, minlength=n_users).double() + 1e-7
    d_i = torch.bincount(i, minlength=n_items).double() + 1e-7
    weight = d_u[u].pow(-0.5) * d_i[i].pow(-0.5)
    n_keep = int(len(pairs) * (1.0 - dropout))
    kept = sample_edges(weight, n_keep, key=3)
    ku, ki = u[kept], i[kept]
    k_u = torch.bincount(ku, minlength=n_users).double() + 1e-7
    k_i = torch.bincount(ki, minlength=n_items).double() + 1e-7
    values = k_u[ku].pow(-0.5) * k_i[ki].pow(-0.5)
    want = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    want[ku, ki + n_users] = values
    want[ki + n_users, ku] = values
    graph = normalized_bipartite(n_users, n_items, pairs[kept.numpy()])
    got = torch.zeros_like(want)
    row = torch.repeat_interleave(torch.arange(n_users + n_items), graph.rowptr.diff())
    got[row, graph.col] = graph.val.double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    # low-degree edges are kept more often than hub edges (the point of the weights)
    counts = torch.zeros(len(pairs))
    for key in range(200):
        counts[sample_edges(weight, n_keep, key)] += 1
    light, heavy = weight >= weight.median(), weight < weight.median()
    assert counts[light].mean() > counts[heavy].mean()


def test_every_rank_draws_the_same_edges():
    # A torchrun job calls sample_edges with the same (weight, n_keep, key) on every rank; the
    # draw is a pure function of them, whatever the thread count.
    weight = torch.rand(2000, generator=torch.Generator().manual_seed(2)) + 0.1
    draws = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            draws.append(sample_edges(weight, 1500, key=11))
        finally:
            torch.set_num_threads(previous)
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("make, message", [
    (lambda w: (w.view(2, 3), 2, 0), "1-D float32 or float64"),
    (lambda w: (w.long(), 2, 0), "1-D float32 or float64"),
    (lambda w: (np.ones(6), 2, 0), "1-D float32 or float64"),
    (lambda w: (w, 7, 0), "n_keep must be an int in \\[0, 6\\]"),
    (lambda w: (w, -1, 0), "n_keep must be an int in \\[0, 6\\]"),
    (lambda w: (w, 2.0, 0), "n_keep must be an int"),
    (lambda w: (w, 2, 0.5), "key must be an int"),
    (lambda w: (w.index_fill(0, torch.tensor([4]), 0.0), 2, 0), "edge 4 has 0.0"),
    (lambda w: (w.index_fill(0, torch.tensor([1]), float("nan")), 2, 0), "edge 1 has nan"),
    (lambda w: (w.index_fill(0, torch.tensor([2]), -1.0), 2, 0), "positive and finite"),
])
def test_bad_input_is_one_clear_error(make, message):
    weight = torch.rand(6) + 0.1
    with pytest.raises(InputError, match=message):
        sample_edges(*make(weight))


def test_info_lists_it():
    assert _backend.serving("sample_edges", "cpu") == ("cpp" if _ext.cpu is not None
                                                      else "reference")
    assert _backend.serving("sample_edges", "cuda") == _backend.serving("sample_edges", "cpu")
