"""Training steps repeat bitwise on CPU with several threads (``models.base.rows``)."""

import copy

import pytest
import torch

from sgfd_fast.models import build_model
from sgfd_fast.models.base import rows


def _with_threads(n, fn):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return fn()
    finally:
        torch.set_num_threads(before)


def test_rows_matches_indexing_and_repeats():
    # sizes at which x[index]'s backward varies from run to run with two threads
    x = torch.randn(2000, 64, requires_grad=True)
    index = torch.randint(0, 2000, (50_000, 4))  # many repeats, 2-D like negatives
    g = torch.randn(50_000, 4, 64)

    def grad(gather):
        x.grad = None
        gather().backward(g)
        return x.grad.clone()

    want = grad(lambda: x[index])
    torch.testing.assert_close(rows(x, index), x[index], rtol=0, atol=0)
    first = _with_threads(2, lambda: grad(lambda: rows(x, index)))
    torch.testing.assert_close(first, want)
    for _ in range(5):
        assert torch.equal(first, _with_threads(2, lambda: grad(lambda: rows(x, index))))


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

    first = _with_threads(2, step)
    for _ in range(4):
        again = _with_threads(2, step)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
