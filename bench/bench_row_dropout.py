"""row_dropout: BM3's dropout views, ``x * keep / (1 - p)`` with a counter-based mask of (key, row
id, column), on a batch's distinct rows of width D = 128 (``embedding_size``), p = 0.5.

Workloads: 2,048 rows (small and paper: one training batch's distinct users, the most BM3 draws
a mask for at once) and 65,536 rows (large). Differentiable in x (the gradient is the same
dropout), so all three modes run.

Providers: ``reference`` (``row_dropout_reference``: the splitmix64 hash in int64 PyTorch ops),
``sgfd_fast`` (``sgfd_fast.ops.row_dropout``). No ``compiled`` provider: inductor (torch 2.13)
miscompiles the hash's wrapping int64 products (``torch.arange(128) * C`` with a product beyond
int64 comes out wrong under ``torch.compile``), so the compiled reference draws other masks and
fails the correctness check. The op itself is opaque to ``torch.compile`` and unaffected.
"""

import pytest
import torch

from benchlib import MODES, Case, randn

from sgfd_fast import _backend
from sgfd_fast.ops import row_dropout, row_dropout_reference

WIDTH = 128
P = 0.5
KEY = 0x5EED
ROWS = {"small": 2048, "paper": 2048, "large": 65536}
PROVIDERS = ("reference", "sgfd_fast")


@pytest.fixture(scope="module")
def case(bench_size, device):
    n = ROWS[bench_size]
    x = randn(n, WIDTH, seed=11, device=device)
    ids = torch.randperm(4 * n, generator=torch.Generator().manual_seed(12))[:n].to(device)
    moved = 4 * 2 * n * WIDTH + 8 * n  # x read, out written, ids read
    case = Case(op="row_dropout", workload=f"{n}x{WIDTH}", inputs=[x, ids], grad_inputs=(0,),
                reference=lambda x, ids: row_dropout_reference(x, ids, P, KEY),
                sizes={"n": n, "D": WIDTH, "p": P},
                traffic={"forward": (moved, 0), "backward": (moved, 0)})
    case.providers = {
        "reference": lambda x, ids: row_dropout_reference(x, ids, P, KEY),
        "sgfd_fast": lambda x, ids: row_dropout(x, ids, P, KEY),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_row_dropout(bench, case, provider, mode):
    backend = _backend.serving("row_dropout", bench.device.type) \
        if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
