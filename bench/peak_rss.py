"""Peak resident set of one end-to-end provider in a process of its own: build the model, run one
training epoch (or its first ``--batches`` batches) and one validation evaluation, print JSON.

One process per provider, so the number is that provider's footprint alone (in the pytest run
every provider shares one process, whose peak never goes down). ``bench_end_to_end.py`` runs this
for each provider's epoch row (``extra_info["peak_rss_own_process_bytes"]``); by hand::

    PYTHONPATH=$PWD python bench/peak_rss.py BM3 office-synthetic released
    PYTHONPATH=$PWD python bench/peak_rss.py BM3 office-synthetic sgfd_fast_bf16   # precision: bf16

Output: ``{"peak_rss_bytes": the process's peak resident set (``VmHWM``; not ``ru_maxrss``,
which Linux carries over from the parent's resident set when it forks and execs this process),
"imports_rss_bytes": resident set after
the imports (torch, sgfd_fast), "setup_rss_bytes": after the dataset, model and optimizer are
built (the first torch optimizer imports torch._dynamo: ≈ 130 MiB of either provider's setup),
...}``. The bf16 provider's dataset hands its float32 features over to the model
(``Dataset.hand_over_features``), as a run of ``training.train`` does: one process, one model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import BF16_PROVIDER, PROVIDERS, Run, _vm_kb, use_provider  # noqa: E402


def measure(model_name: str, dataset_name: str, provider: str, batches: int | None) -> dict:
    imports = _vm_kb("VmRSS") * 1024
    run = Run(model_name, dataset_name, torch.device("cpu"),
              "bf16" if provider == BF16_PROVIDER else "fp32")
    evaluation = use_provider(run, provider)
    if provider == BF16_PROVIDER:  # as training.train does once the model is built
        run.dataset.hand_over_features(run.model.features.held())
    setup = _vm_kb("VmRSS") * 1024
    with run.use_backend("reference" if provider == "reference" else "auto"):
        run.epoch(batches)
        evaluation()
    return {"model": model_name, "dataset": dataset_name, "provider": provider,
            "batches": batches or run.n_batches, "imports_rss_bytes": imports,
            "setup_rss_bytes": setup,
            "peak_rss_bytes": _vm_kb("VmHWM") * 1024}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("dataset")
    ap.add_argument("provider", choices=PROVIDERS)
    ap.add_argument("--batches", type=int, default=None, help="stop the epoch after N batches")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.model, args.dataset, args.provider, args.batches)))


if __name__ == "__main__":
    main()
