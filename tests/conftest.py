"""Test-session setup. Triton's interpreter flag is read when kernels are decorated, so it is set
here, before anything imports sgfd_fast.kernels; outputs are poisoned so unwritten elements fail."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["SGFD_FAST_POISON"] = "1"
# `python -m sgfd_fast...` subprocesses must import the installed package, not the checkout that
# is the working directory: Python >= 3.11 honours this. (test_quickstart.py drops it to run
# README's commands as a user does.)
os.environ["PYTHONSAFEPATH"] = "1"
os.environ.setdefault("SGFD_FAST_BACKEND", "auto")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bench/device_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)
