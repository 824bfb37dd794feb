"""feature_head: the SGFD student/teacher head ``normalize(leaky_relu(x @ W.T + b, 0.01))`` on a
batch of frozen item features, D = 128 (``embedding_size``).

Workloads: office's real text features, the first 2,048 items, F = 384 (small);
toysgames-synthetic's image features, 2,048 items, F = 4,096 (paper); 32,768 random rows of
F = 4,096 (large). Gradients flow to W and b (the features are frozen inputs, as in SGFD).

Providers: ``reference`` (``feature_head_reference``: ``F.linear``, ``F.leaky_relu``,
``F.normalize``), ``compiled`` (``torch.compile`` of it), ``sgfd_fast``
(``sgfd_fast.ops.feature_head``: fused epilogue and backward).
"""

import pytest
import torch

from benchlib import MODES, Case, dataset, randn

from sgfd_fast import _backend
from sgfd_fast.ops import feature_head, feature_head_reference

WIDTH = 128
SLOPE = 0.01
ROWS = {"small": 2048, "paper": 2048, "large": 32768}
SOURCE = {"small": ("office", "text"), "paper": ("toysgames-synthetic", "image"), "large": None}
PROVIDERS = ("reference", "compiled", "sgfd_fast")


@pytest.fixture(scope="module")
def case(bench_size, device):
    rows = ROWS[bench_size]
    if SOURCE[bench_size] is None:
        label, x = "large", randn(rows, 4096, seed=5, device=device)
    else:
        name, modality = SOURCE[bench_size]
        label = f"{name.split('-')[0]}/{modality}"
        x = torch.as_tensor(dataset(name).features[modality][:rows]).to(device, torch.float32)
    n, f = x.shape
    weight = randn(WIDTH, f, seed=6, device=device, scale=f ** -0.5)
    bias = randn(WIDTH, seed=7, device=device, scale=0.1)
    product = 2 * n * f * WIDTH
    forward = (4 * (n * f + WIDTH * (f + 1) + n * WIDTH), product)
    backward = (4 * (n * f + 2 * n * WIDTH + WIDTH * (f + 1)), product)  # grad W = gᵀ x
    case = Case(op="feature_head", workload=label, inputs=[x, weight, bias], grad_inputs=(1, 2),
                reference=lambda x, w, b: feature_head_reference(x, w, b, SLOPE),
                sizes={"N": n, "F": f, "D": WIDTH, "negative_slope": SLOPE},
                traffic={"forward": forward, "backward": backward}, norm_rtol=1e-4)
    compiled = torch.compile(feature_head_reference)
    case.providers = {
        "reference": lambda x, w, b: feature_head_reference(x, w, b, SLOPE),
        "compiled": lambda x, w, b: compiled(x, w, b, SLOPE),
        "sgfd_fast": lambda x, w, b: feature_head(x, w, b, SLOPE),
    }
    return case


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_feature_head(bench, case, provider, mode):
    backend = _backend.serving("feature_head", bench.device.type) \
        if provider == "sgfd_fast" else None
    bench.run(case, provider, mode, case.providers[provider], backend=backend)
