"""Training steps repeat bitwise on CPU with several threads (``models.base.rows``)."""

import copy

import pytest
import torch

from sgfd_fast.models import build_model
from sgfd_fast.models.base import rows
from sgfd_fast.testing import threads


def test_rows_matches_indexing_and_repeats():
    # sizes at which x[index]'s backward varies from run to run with two threads
    x = torch.randn(2000, 64, requires_grad=True)
    index = torch.randint(0, 2000, (50_000, 4))  # many repeats, 2-D like negatives
    g = torch.randn(50_000, 4, 64)

    def grad(gather):
        x.grad = None
        gather().backward(g)
        return x.grad.clone()

    # the gradient sums 100 rows on average: compare with a float64 sum
    want = torch.zeros(2000, 64, dtype=torch.float64).index_add_(
        0, index.reshape(-1), g.double().reshape(-1, 64))
    torch.testing.assert_close(rows(x, index), x[index], rtol=0, atol=0)
    with threads(2):
        first = grad(lambda: rows(x, index))
        torch.testing.assert_close(first.double(), want, rtol=1e-5, atol=1e-4)
        for _ in range(5):
            assert torch.equal(first, grad(lambda: rows(x, index)))


@pytest.mark.parametrize("model", ["BM3", "GRCN", "MAML"])
def test_training_step_gradients_repeat_with_two_threads(model, tiny, config, batch):
    from test_grcn import grcn_config
    from test_maml import maml_config

    # big enough batches (3k pairs x 64 wide) for torch to split the gathers' backward in two
    ds = tiny(n_users=1000, n_items=300, widths=(64, 32))
    cfg = {"BM3": config, "GRCN": grcn_config, "MAML": maml_config}[model](embedding_size=64)
    torch.manual_seed(0)
    m0 = build_model(model, ds, cfg)
    users, items, neg = batch(ds, 4 if model == "MAML" else 1)

    def step():
        m = copy.deepcopy(m0)
        torch.manual_seed(1)  # dropout
        m.calculate_loss(users, items, neg)["loss"].backward()
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    with threads(2):
        first = step()
        for _ in range(4):
            assert all(torch.equal(a, b) for a, b in zip(first, step()))
