"""sgfd_loss: the three SGFD losses of one modality (semantic CE, response distillation, feature
distillation) with a shared classifier, in both flavours (``official``: the released formulas;
``standard``: CE on logits, KL·τ², teacher detached).

Workloads: a training batch of B rows of D = 128 features (``embedding_size``), K classes and
τ = 10 (the package default ``t_decay``): office B = 2,048, K = 40 (small); toysgames-synthetic
B = 2,048, K = 19 (paper); large B = 65,536, K = 54 (the largest label count of the paper's
datasets). ``.../weighted``: the same batch as ``models.SGFD`` evaluates it, its distinct items
(B ids drawn uniformly from B items: ≈ 0.63·B rows) with their counts as ``row_weight``.

Providers: ``reference`` (``sgfd_loss_reference``: the literal ``torch.nn.functional``
transcription a user would write), ``compiled`` (``torch.compile`` of it), ``sgfd_fast``
(``sgfd_fast.ops.sgfd_loss``). Gradients flow to f_t, f_s, weight and bias. Outputs are compared
with the float64 reference by relative norm error (the L1 loss's gradient is a sign: float32
rounding may flip it where teacher and student probabilities nearly agree).
"""

import pytest
import torch

from benchlib import MODES, Case, randn

from sgfd_fast import _backend
from sgfd_fast.ops import sgfd_loss, sgfd_loss_reference

WIDTH = 128
TAU = 10.0
SHAPES = {"small": ("office", 2048, 40), "paper": ("toysgames", 2048, 19),
          "large": ("large", 65536, 54)}
PROVIDERS = ("reference", "compiled", "sgfd_fast")
FLAVOURS = ("official", "standard")


def _counts(batch: int, device) -> torch.Tensor:
    """Occurrences of each distinct item in a batch of ``batch`` ids drawn from ``batch`` items."""
    ids = torch.randint(0, batch, (batch,), generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(ids)
    return counts[counts > 0].float().to(device)


@pytest.fixture(scope="module", params=[(flavour, weighted) for weighted in (False, True)
                                        for flavour in FLAVOURS],
                ids=lambda p: p[0] + ("/weighted" if p[1] else ""))
def case(request, bench_size, device):
    flavour, weighted = request.param
    label, rows, classes = SHAPES[bench_size]
    row_weight = _counts(rows, device) if weighted else None
    if weighted:
        rows = row_weight.numel()
    f_t = randn(rows, WIDTH, seed=0, device=device, scale=0.1)
    f_s = randn(rows, WIDTH, seed=1, device=device, scale=0.1)
    weight = randn(classes, WIDTH, seed=2, device=device, scale=WIDTH ** -0.5)
    bias = randn(classes, seed=3, device=device, scale=0.1)
    labels = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(4)
                           ).to(device)
    # compulsory traffic: features and classifier read once, their gradients written once;
    # labels (8 bytes a row) and row weights (4)
    per_row = 8 + (4 if weighted else 0)
    forward = (4 * (2 * rows * WIDTH + classes * (WIDTH + 1)) + per_row * rows,
               2 * 2 * rows * classes * WIDTH)
    backward = (4 * (4 * rows * WIDTH + 2 * classes * (WIDTH + 1)) + per_row * rows,
                3 * 2 * 2 * rows * classes * WIDTH)
    inputs = [f_t, f_s, weight, bias, labels] + ([row_weight] if weighted else [])

    def call(fn, **kwargs):
        # the inputs are (f_t, f_s, weight, bias, labels[, row_weight])
        return lambda f_t, f_s, w, b, y, rw=None: fn(f_t, f_s, w, b, y, TAU, flavour,
                                                      row_weight=rw, **kwargs)

    case = Case(op="sgfd_loss", workload=f"{label}/{flavour}" + ("/weighted" if weighted else ""),
                inputs=inputs, grad_inputs=(0, 1, 2, 3), reference=call(sgfd_loss_reference),
                sizes={"B": rows, "D": WIDTH, "K": classes, "tau": TAU, "flavour": flavour,
                       "row_weight": weighted},
                traffic={"forward": forward, "backward": backward}, norm_rtol=1e-3)
    compiled = torch.compile(sgfd_loss_reference)
    case.providers = {
        "reference": call(sgfd_loss_reference),
        "compiled": call(compiled),
        "sgfd_fast": call(sgfd_loss, validate=False),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_sgfd_loss(bench, case, provider, mode):
    backend = _backend.serving("sgfd_loss", bench.device.type) if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
