"""pytest configuration of the benchmarks (see bench/README.md and bench/benchlib.py).

Adds ``--bench-size small|paper|large``, collects ``bench_<op>.py`` modules, provides the ``bench``
fixture, writes each group's speedups into the benchmark JSON and prints them at the end of the run.
``pytest bench/ --benchmark-disable`` runs every correctness check once: the smoke CI runs.
"""

from __future__ import annotations

import importlib.util
import platform
import shlex
from pathlib import Path

import pytest
import torch

from benchlib import GRAPH_FOR_SIZE, RESULTS, SIZES, Bench, Graph, device_name, graph

# bench/report.py is also a CLI; it is loaded by path so the name cannot clash with another module.
_spec = importlib.util.spec_from_file_location("sgfd_bench_report",
                                               Path(__file__).resolve().parent / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=SIZES, default="small",
                     help="workload scale: small (default; the whole suite in a few minutes on a "
                          "2-core CPU), paper (the real toysgames-synthetic graph and paper batch "
                          "sizes), large (a generated 200k-node, ~2M-interaction power-law graph; "
                          "meant for GPUs)")
    parser.addoption("--e2e-models", default="auto",
                     help="comma-separated models for bench_end_to_end.py (BM3,GRCN,MAML,VBPR,"
                          "LightGCN,FREEDOM,LATTICE,MGCN); auto (default): every model on CUDA, "
                          "BM3 only on a CPU, where a GRCN or MAML epoch takes many minutes")


def pytest_report_header(config):
    """What serves each op here: a benchmark of a missing extension would time the references."""
    from sgfd_fast import _backend, _ext
    import sgfd_fast.ops  # noqa: F401 - registers every op

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [f"sgfd_fast bench: --bench-size {config.getoption('--bench-size')}, device "
             f"{device_name(device)}, torch {torch.__version__}"]
    if _ext.cpu is None:
        lines.append(f"WARNING: the C++ extension is not loaded ({_ext.cpu_error})")
    if device == "cuda" and _ext.cuda is None:
        lines.append(f"WARNING: the CUDA extension is not loaded ({_ext.cuda_error})")
    if device == "cpu":
        from bench_end_to_end import cpu_isa

        lines.append(f"CPU: {cpu_isa()}")
    lines.append("sgfd_fast backends: " + ", ".join(
        f"{op}={_backend.serving(op, device)}" for op in _backend.ops()))
    return lines


def pytest_collect_file(file_path, parent):
    # Bench modules are named bench_<op>.py (one op = one name); pytest's default pattern
    # (test_*.py) would not collect them. A file named on the command line pytest collects itself.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def size_graph(bench_size) -> Graph:
    """The graph of this ``--bench-size``: office (small), toysgames (paper), generated (large)."""
    return graph(GRAPH_FOR_SIZE[bench_size])


@pytest.fixture
def bench(benchmark, request, device, bench_size) -> Bench:
    return Bench(benchmark, request, device, bench_size)


# ----------------------------------------------------------------------------------------------
# Speedups: into the JSON, and a short table at the end of the run


def _versions() -> dict:
    import importlib.metadata

    import sgfd_fast

    out = {"sgfd_fast": sgfd_fast.__version__, "torch": torch.__version__,
           "python": platform.python_version()}
    for package in ("triton", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def pytest_benchmark_update_json(config, benchmarks, output_json):
    report.add_speedups(output_json["benchmarks"])
    output_json["bench_size"] = config.getoption("--bench-size")
    output_json["versions"] = _versions()
    output_json["command"] = shlex.join(["pytest", *config.invocation_params.args])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    report.add_speedups(RESULTS)
    terminalreporter.write_sep("-", "sgfd_fast speedups (median time of the other provider / "
                                    "median time of sgfd_fast; > 1 means sgfd_fast is faster)")
    terminalreporter.write_line(report.speedup_text(RESULTS))
    if any(r["extra_info"].get("precision") == "bf16" for r in RESULTS):
        terminalreporter.write_sep("-", "precision: bf16 (sgfd_fast_bf16) against the others")
        terminalreporter.write_line(report.speedup_text(RESULTS, focus="sgfd_fast_bf16"))
    floors = [r for r in RESULTS if "floor_fraction" in r["extra_info"]]
    if floors:
        terminalreporter.write_sep("-", "end-to-end steps against the GEMM floor (necessary "
                                        "dense GEMM FLOPs / this process's torch.mm rate)")
    for r in floors:
        info = r["extra_info"]
        # the released code performs these GEMMs too: its time over the floor bounds any ratio
        bound = (f"; released / floor = {r['stats']['median'] / info['floor_s']:.1f}x (the "
                 f"highest speed-up over it at this GEMM rate)"
                 if info["provider"] == "released" else "")
        rss = (f"; peak RSS {info.get('peak_memory_bytes', 0) / 2**20:.0f} MiB (in a process of "
               f"its own: {info['peak_rss_own_process_bytes'] / 2**20:.0f} MiB)"
               if "peak_rss_own_process_bytes" in info else "")
        both = (f"; bf16 floor {info['floor_s_bf16']:.3g} s at "
                f"{info['gemm_flop_per_s_bf16'] / 1e9:.0f} GFLOP/s"
                if "floor_s_bf16" in info else "")
        terminalreporter.write_line(
            f"{r['group']} [{info['provider']}]: {r['stats']['median']:.3g} s; floor "
            f"{info['floor_flops'] / 1e9:.1f} GFLOP = {info['floor_s']:.3g} s at "
            f"{info['gemm_flop_per_s'] / 1e9:.0f} GFLOP/s (float32){both}; fraction of its "
            f"own precision's floor {info['floor_fraction']:.2f}{bound}{rss}")
