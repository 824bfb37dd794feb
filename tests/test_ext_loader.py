"""Which compiled modules a source checkout loads (sgfd_fast/_ext.py), on a fake checkout and a
fake install built from the real sources and the real compiled module."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sgfd_fast import _ext
from sgfd_fast._buildinfo import source_digest, write_record

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import json, sgfd_fast._ext as e; "
         "print(json.dumps([e.cpu_path, e.cpu_error, e.cuda_error]))")

pytestmark = pytest.mark.skipif(_ext.cpu is None, reason="needs a built CPU extension to copy")


def _package(dst: Path):
    dst.mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "_ext.py", "_buildinfo.py"):
        shutil.copy(ROOT / "sgfd_fast" / name, dst / name)


@pytest.fixture
def layout(tmp_path):
    """tmp/checkout: sources without a build; tmp/site/sgfd_fast: an install with _C."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "csrc", checkout / "csrc")
    shutil.copy(ROOT / "CMakeLists.txt", checkout)
    _package(checkout / "sgfd_fast")
    installed = tmp_path / "site" / "sgfd_fast"
    _package(installed)
    shutil.copy(_ext.cpu_path, installed / Path(_ext.cpu_path).name)
    write_record(installed, {"sources": source_digest(checkout),
                             "cuda": "SGFD_FAST_CUDA=0 at install"})
    return checkout, installed


def probe(cwd, site):
    """``python -c`` in ``cwd`` as a user runs it there (the working directory first on
    sys.path), with ``site`` standing in for site-packages (``-S``: the real site-packages, where
    CI has installed sgfd_fast, is not on the path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-S", "-c", PROBE], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return (*json.loads(out.stdout), out.stderr)


def test_checkout_uses_the_installed_build_of_the_same_sources(layout):
    checkout, installed = layout
    path, error, cuda_error, warned = probe(checkout, installed.parent)
    assert error is None and Path(path).parent == installed
    assert "which has no _C_cuda build" in cuda_error
    assert "SGFD_FAST_CUDA=0 at install" in cuda_error
    assert warned == ""


def test_checkout_refuses_a_build_of_other_sources(layout):
    checkout, installed = layout
    kernel = next((checkout / "csrc").rglob("*.cpp"))
    kernel.write_text(kernel.read_text() + "\n// edited after the install\n")
    path, error, _, warned = probe(checkout, installed.parent)
    assert path is None
    assert f"importing the source tree at {checkout / 'sgfd_fast'}" in error
    assert "compiled from other csrc/ or CMakeLists.txt" in error and "pip install ." in error
    assert "RuntimeWarning" in warned and "running on PyTorch references" in warned


def test_checkout_refuses_a_build_without_a_record(layout):
    checkout, installed = layout
    (installed / "_build.json").unlink()
    path, error, _, warned = probe(checkout, installed.parent)
    assert path is None and "records no source digest" in error and "RuntimeWarning" in warned


def test_checkout_without_an_install_says_so(layout):
    checkout, _ = layout
    path, error, _, warned = probe(checkout, None)
    assert path is None and warned == ""
    assert "which has no _C build, and no installed sgfd_fast was found" in error


def test_installed_package_reports_its_record(layout, tmp_path):
    _, installed = layout
    path, error, cuda_error, _ = probe(tmp_path, installed.parent)
    assert error is None and Path(path).parent == installed
    assert cuda_error == "not built: SGFD_FAST_CUDA=0 at install"
