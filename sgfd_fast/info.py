"""``python -m sgfd_fast.info [--json]``: versions, what was built, which backend serves each op,
and what multiplies bf16 natively here.

The JSON form has at least ``extension.built``, ``extension.cuda_compiled``, ``extension.error``,
``ops.<name>.cpu`` / ``ops.<name>.cuda`` and ``bf16.cpu`` / ``bf16.cuda`` (``"amx_bf16"``,
``"avx512_bf16"``, ``"tensor cores (sm_XY)"`` or None) with ``bf16.warnings``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys

import torch

from . import _backend, _ext
from ._cli import quiet_on_closed_stdout


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bf16() -> dict:
    """Which ISA serves bf16 products per device, and a warning where they are emulated (slower
    than float32)."""
    from .ops._bf16_filter import bf16_hardware

    cpu = bf16_hardware("cpu")
    cuda = bf16_hardware("cuda") if torch.cuda.is_available() else None
    capability = torch.backends.cpu.get_cpu_capability()
    warnings = []
    if cpu is None:
        warnings.append(f"CPU: no AMX-BF16 or AVX512-BF16 (torch's kernels: {capability}): bf16 "
                        "products are emulated here and run slower than float32; train with "
                        "precision: fp32 (the default) on this CPU")
    if torch.cuda.is_available() and cuda is None:
        warnings.append(f"GPU {torch.cuda.get_device_name(0)}: no bf16 tensor cores (compute "
                        "capability < 8.0): bf16 products run slower than float32; train with "
                        "precision: fp32 (the default) on this GPU")
    return {"cpu": cpu, "cuda": cuda, "torch_cpu_capability": capability, "warnings": warnings}


def collect() -> dict:
    import sgfd_fast
    import sgfd_fast.graph  # noqa: F401 - registers bipartite_adj
    import sgfd_fast.ops  # noqa: F401 - registers every op
    import sgfd_fast.sampling  # noqa: F401 - registers sample_negatives

    cuda_info = dict(_ext.cuda.build_info) if _ext.cuda is not None else {}
    return {
        "sgfd_fast": sgfd_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension": {
            "built": _ext.cpu is not None,
            "error": _ext.cpu_error,
            "cpu": dict(_ext.cpu.build_info) if _ext.cpu is not None else None,
            "cpu_path": _ext.cpu_path,
            "cuda_path": _ext.cuda_path,
            "cuda_compiled": _ext.cuda is not None,
            "cuda_error": _ext.cuda_error,
            "cuda_archs": cuda_info.get("cuda_archs"),
            "cuda_compiler": cuda_info.get("compiler"),
            "cuda_runtime": _ext.cuda.runtime_version() if _ext.cuda is not None else None,
            "cuda_devices": _ext.cuda_device_count(),
        },
        "bf16": _bf16(),
        "triton_interpreter": _backend.triton_usable("cpu"),
        "backend_request": os.environ.get("SGFD_FAST_BACKEND", "auto"),
        # Without a GPU nothing compiled can serve CUDA tensors, so "cuda" reads "reference".
        "ops": {op: {dev: _backend.serving(op, dev) for dev in _backend.DEVICES}
                for op in _backend.ops()},
    }


def _print(info: dict) -> None:
    ext = info["extension"]
    print(f"sgfd_fast {info['sgfd_fast']}  python {info['python']}  torch {info['torch']} "
          f"(CUDA {info['torch_cuda']})  triton {info['triton']}  numpy {info['numpy']}")
    print(f"GPU: {info['gpu'] or 'none'}")
    if ext["built"]:
        cpu = ext["cpu"]
        print(f"CPU extension: built ({cpu['compiler']}, OpenMP {cpu['openmp']}, "
              f"{cpu.get('max_threads', 1)} threads) from {ext['cpu_path']}")
    else:
        print(f"CPU extension: NOT available: {ext['error']}")
    if ext["cuda_compiled"]:
        print(f"CUDA extension: built ({ext['cuda_compiler']}, archs {ext['cuda_archs']}, "
              f"runtime {ext['cuda_runtime']}, {ext['cuda_devices']} device(s) visible) from "
              f"{ext['cuda_path']}")
    else:
        print(f"CUDA extension: NOT available: {ext['cuda_error']}")
    bf16 = info["bf16"]
    print(f"bf16 products: CPU {bf16['cpu'] or 'emulated'} (torch: {bf16['torch_cpu_capability']})"
          f", GPU {bf16['cuda'] or ('emulated' if info['gpu'] else 'none')}")
    for line in bf16["warnings"]:
        print(f"warning: {line}")
    print(f"Triton interpreter on CPU: {info['triton_interpreter']}   "
          f"SGFD_FAST_BACKEND: {info['backend_request']}")
    width = max(len(op) for op in info["ops"]) if info["ops"] else 2
    print(f"\n{'op':<{width}}  {'cpu':<12}  cuda")
    for op, devices in info["ops"].items():
        print(f"{op:<{width}}  {devices['cpu']:<12}  {devices['cuda']}")


@quiet_on_closed_stdout
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgfd_fast.info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        _print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
