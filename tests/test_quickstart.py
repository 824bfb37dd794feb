"""README's quick start, run where README runs it: in the checkout, whose ``sgfd_fast/`` is what
``python -m`` imports there. After README's install it must serve the compiled CPU kernels, never
silently the PyTorch references (CI installs non-editably, so the checkout has no build of its
own and uses the installed one; see sgfd_fast/_ext.py)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sgfd_fast.ops  # noqa: F401 - registers every op
from sgfd_fast import _backend, _ext

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(_ext.cpu is None,
                                reason="no compiled CPU extension here (.ci/run requires one)")


def readme_run(*args, **kwargs):
    # as a user types it: no PYTHONSAFEPATH (conftest sets it for the other tests)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONSAFEPATH", "SGFD_FAST_BACKEND")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def cpp_ops():
    return sorted(op for op in _backend.ops() if ("cpu", "cpp") in _backend._OPS[op].impls)


def test_info_from_the_checkout_serves_cpp():
    out = readme_run("sgfd_fast.info", "--json", check=True)
    info = json.loads(out.stdout)
    assert info["extension"]["built"], info["extension"]["error"]
    assert cpp_ops() and all(info["ops"][op]["cpu"] == "cpp" for op in cpp_ops()), info["ops"]


def test_one_epoch_train_from_the_checkout_serves_cpp(tmp_path):
    out = readme_run("sgfd_fast.train", "epochs=1", "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    line = next(x for x in log.splitlines() if "kernels on cpu: " in x)
    assert all(f"{op}=cpp" in line for op in cpp_ops()), line
    assert "kernels unavailable" not in log


def test_readme_default_run_names_its_cpu_and_leaves_early_stopping_room():
    """README's default-run figures say which CPU gave them and how far another CPU's rounding
    moves them; the default epoch cap lets the run end by early stopping on any CPU (at a cap of
    50 another CPU's rounding moved the best epoch from 36 to 49, and that run ended at the cap)."""
    from sgfd_fast.config import load_config

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("The default run"):text.index("On this data")]
    for cpu in ("AMD EPYC (Zen 3, AVX2", "Intel Xeon"):
        assert cpu in section, cpu
    row = next(x for x in section.splitlines()
               if x.startswith("| `python -m sgfd_fast.train` (BM3+SGFD"))
    best, trained = map(int, re.search(r"\| (\d+) / (\d+) \|", row).groups())
    config = load_config("BM3", "office").values
    assert best + config["stopping_step"] == trained  # ended by early stopping
    assert config["epochs"] >= 2 * trained            # with room for another CPU's trajectory
