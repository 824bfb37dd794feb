"""Compile every Triton kernel variant the GPU launchers produce for sm_90, ahead of time, no GPU.

    python tests/aot_sm90.py [--quick] [--only row_dropout,...] [--json FILE]

Each launcher of ``sgfd_fast.kernels`` is called on meta tensors (no data; ``device.type`` is not
"cpu", so the launchers take their GPU branches: block sizes, warps, ``tl.sort``) and
``JITFunction.run`` is replaced by a compile for ``GPUTarget("cuda", 90, 32)`` with the signature
Triton's own binder derives from the arguments (ints equal to 1 become constexprs, 16-divisible
ones get divisibility hints), down to a cubin with Triton's bundled ptxas. Exit status 1 on a
variant that does not compile, spills at 255 registers or 256 bytes and more, or receives a Python
float in a float64 launch outside ``FP32_BY_DESIGN`` (Triton types Python floats fp32 on a GPU: a
float64 result would be ~1e-8 off). Runs without ``TRITON_INTERPRET`` (tests/test_aot_sm90.py
starts it in a clean subprocess; .ci/run runs every variant). ``--quick``: one shape per kernel,
flags and dtypes still crossed; ``--only``: these kernel modules.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime import jit  # noqa: E402

from sgfd_fast.kernels.attentive_distance_topk import attentive_distance_topk_triton  # noqa: E402
from sgfd_fast.kernels.edge_softmax_aggregate import (  # noqa: E402
    edge_softmax_aggregate_backward_triton, edge_softmax_aggregate_triton)
from sgfd_fast.kernels.feature_head import (feature_head_backward_triton,  # noqa: E402
                                            feature_head_triton)
from sgfd_fast.kernels import attentive_distance_topk, knn_graph, masked_topk  # noqa: E402
from sgfd_fast.kernels.knn_graph import knn_graph_triton  # noqa: E402
from sgfd_fast.kernels.masked_topk import masked_topk_triton  # noqa: E402
from sgfd_fast.kernels.propagate import propagate_triton  # noqa: E402
from sgfd_fast.kernels.row_dropout import row_dropout_triton  # noqa: E402
from sgfd_fast.kernels.sgfd_loss import sgfd_loss_triton  # noqa: E402
from sgfd_fast.kernels.spmm_csr import spmm_csr_triton  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
# float scalars that are fp32 on purpose: the dropout threshold is compared in float32 as the
# reference does, and top-k scores are ranked as float32
FP32_BY_DESIGN = {"p", "mask_value"}
META = "meta"
MAX_REGS = 255  # per thread on sm_90: a variant there that still spills is register-bound
HEAVY_SPILL = 256  # bytes; a few bytes of spill (some float64 variants) cost little

RESULTS: list[dict] = []
_seen: set = set()


def _compile(self, *args, grid, warmup, **kwargs):
    """Replaces JITFunction.run: compile the launch's variant for sm_90 instead of running it."""
    binder = jit.create_function_from_signature(self.signature, self.params, BACKEND)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = self._pack_args(BACKEND, kwargs, bound, specialization,
                                                            options)
    key = (self.fn.__name__, str(signature), str(sorted(constexprs.items())), str(attrs),
           options.num_warps)
    if key in _seen:
        return None
    _seen.add(key)
    consts = {self.params[p[0]].name: v for p, v in constexprs.items()}
    row = {"kernel": self.fn.__name__, "num_warps": options.num_warps,
           "constexprs": {k: (v if isinstance(v, (int, float, bool, str)) else str(v))
                          for k, v in consts.items()},
           "signature": {k: v for k, v in signature.items() if v != "constexpr"}}
    problems = []
    if any(v == "*fp64" for v in signature.values()):
        fp32 = [k for k, v in signature.items() if v == "fp32" and k not in FP32_BY_DESIGN]
        if fp32:
            problems.append(f"Python float(s) {fp32} reach a float64 launch as fp32")
    t0 = time.time()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            triton.compile(ASTSource(self, signature, constexprs, attrs), target=TARGET,
                           options=options.__dict__)
        regs = re.findall(r"Used (\d+) registers", log.getvalue())
        spills = re.findall(r"(\d+) bytes spill stores", log.getvalue())
        row["n_regs"] = int(regs[-1]) if regs else None
        row["spill_bytes"] = int(spills[-1]) if spills else 0
        if row["spill_bytes"] >= HEAVY_SPILL or (row["spill_bytes"] and row["n_regs"] == MAX_REGS):
            problems.append(f"spills {row['spill_bytes']} bytes at {row['n_regs']} registers")
    except Exception as e:  # a compile error is a result here, reported with its variant
        problems.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
    row["seconds"] = round(time.time() - t0, 2)
    row["problems"] = problems
    RESULTS.append(row)
    return None


def _t(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device=META)


def launches(quick: bool):
    """(kernel module, launch) for every launcher at the widths, k, flags and dtypes the models
    and benchmarks use, plus sizes equal to 1 (Triton's int specialisation)."""
    f32, f64, i64 = torch.float32, torch.float64, torch.int64
    floats = (f32, f64)
    widths = (64,) if quick else (1, 64, 100, 128)
    rowptr, col = _t(51, dtype=i64), _t(300, dtype=i64)  # a CSR of 50 rows, 300 edges
    for dt, d, has_val in itertools.product(floats, widths, (True, False)):
        val = _t(300, dtype=dt) if has_val else None
        yield "spmm_csr", lambda: spmm_csr_triton(rowptr, col, val, _t(50, d, dtype=dt))
    for dt, d, layers in itertools.product(floats, widths, (1, 2, 3)):
        yield "propagate", lambda: propagate_triton(rowptr, col, _t(300, dtype=dt),
                                                    _t(50, d, dtype=dt), layers)
    shapes = ((64, 64),) if quick else ((1, 1), (64, 64), (64, 384), (128, 4096))
    for dt, (d, dv), grad_alpha in itertools.product(floats, shapes, (True, False)):
        q, key, value = _t(50, d, dtype=dt), _t(50, d, dtype=dt), _t(50, dv, dtype=dt)
        yield "edge_softmax_aggregate", lambda: edge_softmax_aggregate_triton(
            rowptr, col, q, key, value)
        yield "edge_softmax_aggregate", lambda: edge_softmax_aggregate_backward_triton(
            rowptr, col, key, value, _t(300, dtype=dt), _t(50, dv, dtype=dt),
            _t(300, dtype=dt) if grad_alpha else None)
    for dt, d, slope, norm in itertools.product(floats, widths, (None, 0.01), (True, False)):
        y = _t(77, d, dtype=dt)
        yield "feature_head", lambda: feature_head_triton(y, _t(d, dtype=dt), slope, norm)
        yield "feature_head", lambda: feature_head_backward_triton(y, y, _t(77, dtype=dt), slope,
                                                                   norm)
    for dt, d, key in itertools.product(floats, (64,) if quick else (1, 64, 4096),
                                        (0, 1, 2, 2**40, -5)):
        yield "row_dropout", lambda: row_dropout_triton(_t(33, d, dtype=dt), _t(33, dtype=i64),
                                                        0.3, key)
    mask = _t(4097, dtype=i64), _t(9000, dtype=i64)  # 4,096 users: a paper evaluation batch
    shapes = ((20, 64),) if quick else ((1, 1), (10, 64), (20, 64), (50, 64), (64, 64),
                                        (256, 64), (20, 128), (256, 128))
    def fp64_ok(dt, k, d, mod):  # float64 beyond the kernel's bounds goes to the reference
        return dt == f32 or (k <= mod.MAX_K_FP64 and d <= mod.MAX_D_FP64)

    for dt, (k, d), mask_value in itertools.product(floats, shapes, (None, -1.0)):
        if not fp64_ok(dt, k, d, masked_topk):
            continue  # served by the reference (ops.masked_topk)
        yield "masked_topk", lambda: masked_topk_triton(_t(4096, d, dtype=dt),
                                                        _t(3000, d, dtype=dt), *mask, k, mask_value)
    shapes = ((20, 64, 640),) if quick else ((1, 1, 1), (10, 64, 640), (20, 64, 640),
                                             (32, 64, 640), (50, 64, 640), (64, 128, 640),
                                             (20, 64, 128))
    for dt, (k, d, hidden), mask_value in itertools.product(floats, shapes, (None, -1.0)):
        if not fp64_ok(dt, k, d, attentive_distance_topk):
            continue
        t = lambda *shape: _t(*shape, dtype=dt)  # noqa: E731
        yield "attentive_distance_topk", lambda: attentive_distance_topk_triton(
            t(4096, d), t(500, d), t(4096, hidden), t(500, hidden), t(4096), t(500), t(hidden),
            t(hidden, d), t(d), *mask, k, mask_value)
    shapes = ((10, 384),) if quick else ((1, 1), (10, 64), (10, 384), (10, 4096), (16, 4096),
                                         (50, 384), (64, 4096))
    for dt, (k, d) in itertools.product(floats, shapes):  # FREEDOM/LATTICE/MGCN's item graphs
        if k > (knn_graph.MAX_K_FP64 if dt == f64 else knn_graph.MAX_K):
            continue  # served by the reference (ops.knn_graph)
        yield "knn_graph", lambda: knn_graph_triton(_t(5000, d, dtype=dt), k)
    shapes = ((2048, 19, 64),) if quick else ((1, 1, 1), (2048, 19, 64), (2048, 54, 128))
    for dt, (b, k, d), weighted, flavour, grad in itertools.product(
            floats, shapes, (True, False), ("official", "standard"), (True, False)):
        z = _t(2 * b, k, dtype=dt)
        yield "sgfd_loss", lambda: sgfd_loss_triton(
            z[:b], z[b:], _t(b, d, dtype=dt), _t(b, d, dtype=dt), _t(b, dtype=i64),
            _t(b, dtype=dt) if weighted else None, 0.5, flavour, grad)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write every variant's row (registers, spills, problems)")
    parser.add_argument("--only", default="", help="kernel modules, comma-separated")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report: registers and spill bytes
    knobs.cache.dir = tempfile.mkdtemp(prefix="aot_sm90_")  # a cached kernel skips ptxas (and -v)
    jit.JITFunction.run = _compile
    t0 = time.time()
    for name, launch in launches(args.quick):
        if not only or name in only:
            launch()
    bad = [r for r in RESULTS if r["problems"]]
    for r in bad:
        print(f"FAIL {r['kernel']} num_warps={r['num_warps']} constexprs={r['constexprs']} "
              f"signature={r['signature']}: {'; '.join(r['problems'])}")
    regs = [r["n_regs"] for r in RESULTS if r.get("n_regs")]
    print(f"sm_90 ahead of time: {len(RESULTS)} variants, {len(bad)} failed, registers "
          f"{min(regs, default=0)}-{max(regs, default=0)}, {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
