"""Shared machinery of the benchmarks: workloads, cases, and the check-then-time helper.

Every benchmark goes through :class:`Bench` (the ``bench`` fixture): it first runs the provider on
NaN-poisoned outputs and checks the result against a float64 reference (a wrong result fails the
test before anything is timed), warms up (``torch.compile`` time and CUDA module loads stay out of
the numbers), then times the call with ``torch.cuda.synchronize()`` inside the timed function on
CUDA. ``extra_info`` records device, dtype, sizes, bytes moved, achieved GB/s and GFLOP/s, provider
and mode. With ``--benchmark-disable`` the checks still run and each provider runs once.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch._dynamo  # noqa: F401 - its exception types mark compile failures

SIZES = ("small", "paper", "large")
MODES = ("forward", "backward", "forward+backward")
GRAPH_FOR_SIZE = {"small": "office", "paper": "toysgames", "large": "large"}

RESULTS: list[dict] = []  # one row per timed benchmark, for the end-of-run speedup table


def record(benchmark, group: str, info: dict) -> None:
    """Keep a finished benchmark for the end-of-run table and, when ``SGFD_FAST_BENCH_PARTIAL``
    names a file, append it there as one JSON line at once (a run killed later keeps it)."""
    stats = benchmark.stats.stats
    row = {"group": group, "name": benchmark.name, "extra_info": info,
           "stats": {k: getattr(stats, k) for k in ("min", "max", "mean", "median", "rounds")}}
    RESULTS.append(row)
    path = os.environ.get("SGFD_FAST_BENCH_PARTIAL")
    if path:
        import json

        line = dict(row, datetime=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# Device and workloads


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (/proc/cpuinfo: a virtual machine's
    name can be as bare as "AMD EPYC", the numbers tell Zen 4 from Zen 5), else what
    ``platform`` knows."""
    try:
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            info.setdefault(key.strip(), value.strip())
        if "model name" in info:
            numbers = [f"{k} {info[k]}" for k in ("cpu family", "model") if k in info]
            return info["model name"] + (f" ({', '.join(numbers)})" if numbers else "")
    except OSError:
        pass
    return platform.processor() or "CPU"


@functools.lru_cache(maxsize=None)
def device_name(device_type: str) -> str:
    """The GPU's name, or the CPU model and the number of threads torch uses."""
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class Graph:
    """A symmetric normalized user–item graph (host CSR) and where it comes from."""

    label: str
    n_users: int
    n_items: int
    pairs: object  # (n, 2) int64 numpy array of train interactions
    csr: object  # sgfd_fast.graph.CSR on the CPU

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items


@functools.lru_cache(maxsize=None)
def dataset(name: str):
    from sgfd_fast.data import load_dataset

    return load_dataset(name)


@functools.lru_cache(maxsize=None)
def graph(label: str) -> Graph:
    """``office`` / ``toysgames``: the real train graphs of the built-in datasets; ``large``: a
    generated power-law graph of 200k nodes and about 2M distinct interactions."""
    from sgfd_fast.graph import normalized_bipartite_reference

    if label == "large":
        from sgfd_fast.testing import random_bipartite

        n_users = n_items = 100_000
        # 2.2M draws: duplicates of popular items collapse to about 2M distinct pairs.
        pairs = random_bipartite(n_users, n_items, 2_200_000, power=0.8, seed=0)
    else:
        ds = dataset({"office": "office", "toysgames": "toysgames-synthetic"}[label])
        n_users, n_items, pairs = ds.n_users, ds.n_items, ds.train
    csr = normalized_bipartite_reference(n_users, n_items, pairs)
    return Graph(label, n_users, n_items, pairs, csr)


def randn(*shape, seed: int, device, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Seeded standard-normal input (generated on the CPU so every device sees the same data)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)


def spmm_traffic(n_rows: int, n_cols: int, nnz: int, d: int, *, index_bytes: int,
                 value_bytes: int, elem: int = 4) -> tuple[int, int]:
    """(compulsory bytes, flops) of one CSR × dense product with d columns: indices, values and
    the dense input read once, the output written once."""
    moved = index_bytes * (n_rows + 1 + nnz) + value_bytes * nnz + elem * d * (n_cols + n_rows)
    return moved, 2 * nnz * d


# ----------------------------------------------------------------------------------------------
# Cases and the timing helper


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def assert_matches(got, want, *, rtol: float, atol: float, what: str,
                   norm_rtol: float | None = None) -> None:
    """Each tensor of ``got`` against ``want`` (float64 reference outputs): elementwise
    (``assert_close``), or with ``norm_rtol`` by the relative error of the whole tensor,
    ``‖got − want‖ / ‖want‖`` (for outputs where float32 rounding legitimately flips a few
    elements, e.g. the sign in an L1 gradient). A NaN (an unwritten, poisoned element) always
    fails."""
    got, want = _as_tuple(got), _as_tuple(want)
    if len(got) != len(want):
        pytest.fail(f"{what}: expected {len(want)} outputs, got {len(got)}")
    for k, (g, w) in enumerate(zip(got, want)):
        g = g.detach()
        if g.is_floating_point() and not bool(torch.isfinite(g).all()):
            pytest.fail(f"{what}: output {k} has non-finite elements (an unwritten output?)")
        if norm_rtol is not None:
            w = w.detach().cpu().double()
            err = float((g.cpu().double() - w).norm()) / max(float(w.norm()), 1e-300)
            if not err <= norm_rtol:
                pytest.fail(f"{what}: output {k} differs from the float64 reference by "
                            f"{err:.2e} (relative norm; allowed {norm_rtol:.0e})")
            continue
        try:
            torch.testing.assert_close(g.cpu().to(w.dtype), w.detach().cpu(), rtol=rtol,
                                       atol=atol)
        except AssertionError as exc:
            pytest.fail(f"{what}: output {k} does not match the float64 reference:\n{exc}")


@dataclass
class Case:
    """One workload of one op.

    ``inputs`` are the timed inputs (float32 and index tensors on the device); ``grad_inputs`` the
    positions of the inputs that get gradients; ``reference`` is run on float64 copies of the
    floating inputs to produce the expected outputs (and gradients, through autograd).
    ``traffic`` maps a mode to (bytes, flops) of compulsory work, when a model exists.
    """

    op: str
    workload: str
    inputs: list
    reference: Callable
    sizes: dict
    grad_inputs: tuple = ()
    traffic: dict = field(default_factory=dict)
    rtol: float = 1e-4
    atol: float = 1e-5
    norm_rtol: float | None = None  # compare by relative norm error instead (assert_matches)
    check: Callable | None = None  # custom check(got, want, mode), e.g. for top-k indices
    _expected: dict = field(default_factory=dict, repr=False)
    _grad_outputs: tuple | None = field(default=None, repr=False)

    def leaves(self, requires_grad: bool) -> list:
        return [t.detach().requires_grad_(requires_grad and k in self.grad_inputs)
                if isinstance(t, torch.Tensor) else t for k, t in enumerate(self.inputs)]

    def grad_outputs(self, outputs) -> tuple:
        if self._grad_outputs is None:
            self._grad_outputs = tuple(
                randn(*o.shape, seed=1000 + k, device=o.device) for k, o in enumerate(outputs))
        return self._grad_outputs

    def expected(self, mode: str):
        if mode not in self._expected:
            from sgfd_fast import use_backend

            wide = [t.detach().double().requires_grad_(k in self.grad_inputs)
                    if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                    for k, t in enumerate(self.inputs)]
            with use_backend("reference"):
                outs = _as_tuple(self.reference(*wide))
                grads = ()
                if self.grad_inputs:
                    go = [g.double() for g in self.grad_outputs(outs)]
                    grads = torch.autograd.grad(outs, [wide[k] for k in self.grad_inputs], go)
            outs = tuple(o.detach() for o in outs)
            self._expected = {"forward": outs, "backward": tuple(grads),
                              "forward+backward": outs + tuple(grads)}
        return self._expected[mode]


class Bench:
    """Checks, then times, one provider of one case in one mode (see the module docstring)."""

    def __init__(self, benchmark, request, device: torch.device, size: str):
        self.benchmark = benchmark
        self.config = request.config
        self.device = device
        self.size = size

    def run(self, case: Case, provider: str, mode: str, fn: Callable, *,
            backend: str | None = None, extra: dict | None = None):
        """Check ``fn(*case.inputs)`` (forward outputs, gradients, or both) against the float64
        reference, then time it. ``backend`` names the sgfd_fast backend that served the call."""
        if mode != "forward" and not case.grad_inputs:
            pytest.skip(f"{case.op} is not differentiable")
        setup, call = self._callables(case, mode, fn)
        what = f"{case.op} [{provider}, {mode}, {case.workload}]"

        # 1. correctness, on poisoned outputs (an unwritten element is NaN and fails)
        previous = os.environ.get("SGFD_FAST_POISON")
        os.environ["SGFD_FAST_POISON"] = "1"
        try:
            got = call(*setup()) if setup else call()
        except torch._dynamo.exc.TorchDynamoException as exc:  # inductor failures included
            if provider != "compiled":
                raise
            pytest.skip(f"torch.compile cannot compile {case.op} on this machine: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            if previous is None:
                os.environ.pop("SGFD_FAST_POISON", None)
            else:
                os.environ["SGFD_FAST_POISON"] = previous
        want = case.expected(mode)
        if case.check is not None:
            case.check(got, want, mode)
        else:
            assert_matches(got, want, rtol=case.rtol, atol=case.atol, what=what,
                           norm_rtol=case.norm_rtol)
        del got

        # 2. metadata, 3. warm-up and timing
        info = self.benchmark.extra_info
        info.update(op=case.op, provider=provider, mode=mode, workload=case.workload,
                    bench_size=self.size, device=device_name(self.device.type),
                    device_type=self.device.type, dtype="float32", torch=torch.__version__,
                    threads=torch.get_num_threads(), sizes=dict(case.sizes))
        if backend is not None:
            info["backend"] = backend
        if extra:
            info.update(extra)
        moved, flops = self._traffic(case, mode)
        if moved:
            info["bytes_moved"] = moved
        if flops:
            info["flops"] = flops
        self.benchmark.group = f"{case.op} | {mode} | {case.workload}"
        median = self._time(setup, call)
        if median:
            if moved:
                info["gb_per_s"] = round(moved / median / 1e9, 3)
            if flops:
                info["gflop_per_s"] = round(flops / median / 1e9, 3)
            record(self.benchmark, self.benchmark.group, info)

    def run_timed(self, *, group: str, provider: str, fn: Callable, info: dict,
                  rounds: int | None = None):
        """Time a whole step (end-to-end benchmarks) whose correctness the caller checked."""
        self.benchmark.extra_info.update(provider=provider, bench_size=self.size,
                                         device=device_name(self.device.type),
                                         device_type=self.device.type, torch=torch.__version__,
                                         threads=torch.get_num_threads(), **info)
        self.benchmark.group = group
        median = self._time(None, fn, rounds=rounds, warmup=0)
        if median:
            record(self.benchmark, group, self.benchmark.extra_info)
        return median

    # -- internals
    def _callables(self, case: Case, mode: str, fn: Callable):
        if mode == "forward":
            leaves = case.leaves(False)

            def call():
                with torch.no_grad():
                    return fn(*leaves)
            return None, call
        leaves = case.leaves(True)
        wrt = [leaves[k] for k in case.grad_inputs]
        if mode == "forward+backward":
            def call():
                outs = _as_tuple(fn(*leaves))
                grads = torch.autograd.grad(outs, wrt, case.grad_outputs(outs))
                return outs + tuple(grads)
            return None, call

        def setup():  # backward: the forward runs untimed
            outs = _as_tuple(fn(*leaves))
            return (outs,)

        def call(outs):
            return tuple(torch.autograd.grad(outs, wrt, case.grad_outputs(outs)))
        return setup, call

    @staticmethod
    def _traffic(case: Case, mode: str):
        if mode == "forward+backward":
            parts = [case.traffic.get("forward"), case.traffic.get("backward")]
            if any(p is None for p in parts):
                return None, None
            return parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]
        return case.traffic.get(mode, (None, None))

    def _time(self, setup, call, *, rounds: int | None = None, warmup: int = 1) -> float | None:
        """Median seconds per call (None when benchmarks are disabled)."""
        cuda = self.device.type == "cuda"

        def sync():
            if cuda:
                torch.cuda.synchronize()

        if self.benchmark.disabled:
            (self.benchmark(call) if setup is None
             else self.benchmark.pedantic(call, setup=lambda: (setup(), {})))
            return None

        if setup is None:
            def timed():
                result = call()
                sync()
                return result

            for _ in range(warmup):
                timed()
            if rounds is None:
                self.benchmark(timed)
            else:
                self.benchmark.pedantic(timed, rounds=rounds)
        else:
            def timed_setup():
                args = setup()
                sync()  # the untimed forward must finish before the timed backward starts
                return args, {}

            def timed(*args):
                result = call(*args)
                sync()
                return result

            start = time.perf_counter()
            for _ in range(max(warmup, 1)):
                timed(*timed_setup()[0])
            estimate = (time.perf_counter() - start) / max(warmup, 1)
            if rounds is None:
                max_time = float(self.config.getoption("benchmark_max_time"))
                rounds = max(int(self.config.getoption("benchmark_min_rounds")),
                             min(10_000, math.ceil(max_time / max(estimate, 1e-9))))
            self.benchmark.pedantic(timed, setup=timed_setup, rounds=rounds)
        return self.benchmark.stats.stats.median
