"""End to end: one training epoch and one full evaluation of each model (BM3+SGFD; GRCN and MAML
once registered in ``sgfd_fast.models.MODELS``), ``sgfd_fast`` (automatic backends) against the
``reference`` backend (``sgfd_fast.use_backend("reference")``: every op on its PyTorch reference).

Models: ``--e2e-models`` (default: all on CUDA, BM3 only on a CPU). Datasets: office at
``--bench-size small``; office and toysgames-synthetic at ``paper``; none at
``large`` (no large built-in dataset). Config: the package defaults for the model and dataset
(``sgfd_fast.config.load_config``), so the batch size, width and layers are those a user gets.

* ``epoch``: the trainer's step loop (shuffled positive pairs in batches of ``train_batch_size``,
  sampled negatives when the model asks for them, ``calculate_loss``, backward, Adam step).
* ``evaluation``: ``sgfd_fast.evaluation.evaluate(model, dataset, "test", config)`` — full ranking
  of every item for every test user, train and valid items masked.

With ``--benchmark-disable`` (the smoke) an "epoch" is cut to its first 2 batches.

Before timing, one step's loss parts and parameter gradients and the evaluation metrics of the
same weights are compared between the two backends. ``extra_info["peak_memory_bytes"]``: on CUDA
``torch.cuda.max_memory_allocated`` over the timed rounds; on CPU the process's peak resident set
during the timed rounds (``VmHWM`` after resetting it through /proc/self/clear_refs; when the
kernel refuses the reset, the process-lifetime peak, flagged by ``peak_memory_kind``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

MODEL_NAMES = ("BM3", "GRCN", "MAML")
DATASETS = {"small": ("office",), "paper": ("office", "toysgames-synthetic"), "large": ()}
PROVIDERS = ("reference", "sgfd_fast")
STEPS = ("epoch", "evaluation")


def pytest_generate_tests(metafunc):
    if "dataset_name" in metafunc.fixturenames:
        names = DATASETS[metafunc.config.getoption("--bench-size")]
        metafunc.parametrize("dataset_name", names or [pytest.param(
            None, marks=pytest.mark.skip(reason="no built-in dataset at --bench-size large"))])


def _api():
    try:
        from sgfd_fast import use_backend
        from sgfd_fast.config import load_config
        from sgfd_fast.evaluation import evaluate
        from sgfd_fast.models import MODELS, build_model
        from sgfd_fast.sampling import NegativeSampler
        from sgfd_fast.training import load_data
    except ImportError as exc:
        pytest.skip(f"end-to-end benchmarks need sgfd_fast.models/evaluation/config/training, "
                    f"not importable yet: {exc}")
    return use_backend, load_config, load_data, evaluate, MODELS, build_model, NegativeSampler


@functools.lru_cache(maxsize=2)
def _dataset(load_data, name: str, valid_ratio, split_seed, modalities):
    return load_data({"name": name}, {"valid_ratio": valid_ratio, "split_seed": split_seed,
                                      "modalities": modalities and list(modalities)})


class Run:
    """A freshly seeded model, its optimizer and the epoch / evaluation callables."""

    def __init__(self, model_name: str, dataset_name: str, device: torch.device):
        use_backend, load_config, load_data, evaluate, models, build_model, sampler_cls = _api()
        if model_name.upper() not in {k.upper() for k in models}:
            pytest.skip(f"{model_name} is not registered in sgfd_fast.models.MODELS yet")
        self.use_backend, self.evaluate = use_backend, evaluate
        self.config = cfg = load_config(model_name, dataset_name).points()[0]
        modalities = cfg.get("modalities")
        self.dataset = _dataset(load_data, dataset_name, cfg["valid_ratio"], cfg["split_seed"],
                                tuple(modalities) if modalities else None)
        torch.manual_seed(self.config["seed"])
        self.model = build_model(model_name, self.dataset, self.config).to(device)
        self.model.train()
        self.device = device
        self.optimizer = torch.optim.Adam(self.model.parameters(),
                                          lr=self.config["learning_rate"],
                                          weight_decay=self.config["weight_decay"])
        self.n_negatives = int(getattr(self.model, "n_negatives", 0) or 0)
        self.sampler = sampler_cls.from_pairs(
            self.dataset.n_users, self.dataset.n_items, self.dataset.train,
            n_neg=self.n_negatives, seed=self.config["seed"] + 1, device=device) \
            if self.n_negatives else None
        self.pairs = torch.as_tensor(self.dataset.train, dtype=torch.long)
        self.batch_size = self.config["train_batch_size"]
        self.order = torch.Generator().manual_seed(self.config["seed"])

    @property
    def n_batches(self) -> int:
        return -(-self.pairs.shape[0] // self.batch_size)

    def batch(self, idx):
        users, items = self.pairs[idx, 0].to(self.device), self.pairs[idx, 1].to(self.device)
        return users, items, self.sampler.sample(users) if self.sampler else None

    def epoch(self, max_batches: int | None = None):
        perm = torch.randperm(self.pairs.shape[0], generator=self.order)
        starts = range(0, perm.numel(), self.batch_size)
        for start in starts[:max_batches]:
            parts = self.model.calculate_loss(*self.batch(perm[start:start + self.batch_size]))
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def evaluation(self):
        with torch.no_grad():
            return self.evaluate(self.model, self.dataset, "test", self.config)

    # -- the check: both backends compute the same step and the same metrics
    def step_parts(self, backend: str, users, items, negatives):
        torch.manual_seed(1234)  # identical dropout masks under both backends
        with self.use_backend(backend):
            parts = self.model.calculate_loss(users, items, negatives)
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
        grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                 if p.grad is not None}
        self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in parts.items()}, grads


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.double().norm())
    diff = float((got.double() - want.double()).norm())
    return diff / scale if scale > 0 else diff


@functools.lru_cache(maxsize=None)
def check_backends_agree(model_name: str, dataset_name: str, device_type: str) -> str:
    """One training step (loss parts, every parameter gradient) and the evaluation metrics of the
    same weights under the reference and the automatic backends; fails the test on a mismatch."""
    run = Run(model_name, dataset_name, torch.device(device_type))
    batch = run.batch(torch.arange(min(run.batch_size, run.pairs.shape[0])))  # same negatives
    ref_parts, ref_grads = run.step_parts("reference", *batch)
    got_parts, got_grads = run.step_parts("auto", *batch)
    problems = []
    for k, want in ref_parts.items():
        if k not in got_parts or _rel_err(got_parts[k], want) > 1e-4:
            problems.append(f"loss part {k}: {got_parts.get(k)} vs reference {want}")
    for name, want in ref_grads.items():
        got = got_grads.get(name)
        if got is None or _rel_err(got, want) > 1e-3:
            err = "missing" if got is None else f"relative error {_rel_err(got, want):.2e}"
            problems.append(f"gradient of {name}: {err}")
    with run.use_backend("reference"):
        ref_metrics = run.evaluation()
    with run.use_backend("auto"):
        got_metrics = run.evaluation()
    for k, want in ref_metrics.items():
        if abs(got_metrics.get(k, float("nan")) - want) > 1e-3:
            problems.append(f"metric {k}: {got_metrics.get(k)} vs reference {want}")
    if problems:
        pytest.fail(f"{model_name} on {dataset_name}: sgfd_fast and reference backends disagree:\n"
                    + "\n".join(problems))
    return "ok"


class PeakMemory:
    """Peak memory over a block: CUDA allocations, or the resident set on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.kind = "peak RSS during the timed rounds (VmHWM)"
            except OSError:
                self.kind = "peak RSS of the whole process (VmHWM; reset not permitted)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _vm_kb("VmHWM") * 1024
        return False


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_end_to_end(bench, request, device, model_name, dataset_name, step, provider):
    wanted = request.config.getoption("--e2e-models")
    if wanted == "auto":
        wanted = ",".join(MODEL_NAMES) if device.type == "cuda" else "BM3"
    if model_name.upper() not in {m.strip().upper() for m in wanted.split(",")}:
        pytest.skip(f"{model_name} not in --e2e-models={wanted} (on a CPU only BM3 runs by "
                    f"default: a GRCN or MAML epoch takes many minutes there)")
    check_backends_agree(model_name, dataset_name, device.type)
    run = Run(model_name, dataset_name, device)
    backend = "reference" if provider == "reference" else "auto"
    if step == "evaluation":
        action = run.evaluation
    else:  # the --benchmark-disable smoke runs 2 batches of the epoch, not all of them
        action = functools.partial(run.epoch, 2 if bench.benchmark.disabled else None)

    def timed():
        with run.use_backend(backend):
            action()

    if device.type == "cuda":
        timed()  # warm-up: lazy module loads, cuBLAS handles, allocator growth
    # whole epochs are long on a CPU: few rounds (the median of 3, or 2 on the larger dataset)
    rounds = 5 if device.type == "cuda" else 3 if dataset_name == "office" else 2
    ds = run.dataset
    info = {"op": f"end_to_end:{model_name}", "mode": step, "workload": dataset_name,
            "dtype": "float32",
            "sizes": {"n_users": ds.n_users, "n_items": ds.n_items,
                      "n_train": int(ds.train.shape[0]), "n_test": int(ds.test.shape[0]),
                      "train_batch_size": run.batch_size, "n_batches": run.n_batches,
                      "eval_batch_size": run.config["eval_batch_size"],
                      "embedding_size": run.config["embedding_size"],
                      "modalities": sorted(ds.features)},
            "backends": backend}
    with PeakMemory(device) as mem:
        bench.run_timed(group=f"end_to_end:{model_name} | {step} | {dataset_name}",
                        provider=provider, fn=timed, info=info, rounds=rounds)
    bench.benchmark.extra_info.update(peak_memory_bytes=mem.peak, peak_memory_kind=mem.kind)
