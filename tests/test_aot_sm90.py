"""The ahead-of-time sm_90 compile (tests/aot_sm90.py) on the variants that once failed on a GPU
only: row_dropout's key equal to 1, which Triton specialises into a constexpr. .ci/run compiles
every variant; this keeps the check inside the normal pytest run."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="needs Triton (its bundled ptxas compiles for sm_90)")


def test_row_dropout_compiles_for_sm90_with_keys_triton_specialises(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it
    script = Path(__file__).with_name("aot_sm90.py")
    run = subprocess.run([sys.executable, str(script), "--quick", "--only", "row_dropout",
                          "--json", str(tmp_path / "aot.json")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # float32/float64 × key typed i32 (0, 1, 2, -5; 1 not specialised) or i64 (2^40)
    assert "4 variants, 0 failed" in run.stdout, run.stdout
    assert "registers 0-" not in run.stdout, run.stdout  # ptxas ran: registers were counted


def test_every_triton_kernel_module_is_compiled_ahead_of_time():
    """A new kernels/<op>.py enters the sm_90 sweep in the same change (knn_graph once did not)."""
    root = Path(__file__).resolve().parents[1]
    swept = set(re.findall(r'yield "(\w+)"', (root / "tests" / "aot_sm90.py").read_text()))
    modules = {p.stem for p in (root / "kernels").glob("*.py") if p.stem != "__init__"}
    assert modules <= swept, f"kernels without an ahead-of-time variant: {sorted(modules - swept)}"
