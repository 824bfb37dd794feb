"""The import graph has no back-arrows: the Triton launchers (``sgfd_fast.kernels``) sit below
``sgfd_fast.ops`` and share buffer plumbing with it through ``sgfd_fast._tensors`` only."""

import importlib.util
import pkgutil
import subprocess
import sys

import pytest

pytest.importorskip("triton")
KERNELS = importlib.util.find_spec("sgfd_fast.kernels")
if KERNELS is None:
    pytest.skip("sgfd_fast.kernels is shipped from kernels/ by setup.py: run against an install",
                allow_module_level=True)
MODULES = sorted(m.name for m in pkgutil.iter_modules(KERNELS.submodule_search_locations))


def test_every_kernel_module_is_checked():
    assert {"spmm_csr", "propagate", "masked_topk", "sgfd_loss", "feature_head"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_kernels_do_not_import_ops(module):
    code = (f"import sys, sgfd_fast.kernels.{module}; "
            "assert 'sgfd_fast.ops' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
