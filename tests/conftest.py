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


@pytest.fixture
def tiny_model(monkeypatch):
    """The trainer tests' tiny matrix-factorisation model (test_trainer.TinyMF), registered as
    "TinyMF" for one test."""
    import signal

    from sgfd_fast.models import MODELS
    from test_trainer import TinyMF

    monkeypatch.setitem(MODELS, "TinyMF", TinyMF)
    monkeypatch.setattr(TinyMF, "interrupt_at", None)
    monkeypatch.setattr(TinyMF, "calls", 0)
    # A process a non-interactive shell starts in the background ignores SIGINT, and the trainer
    # leaves a handler it did not expect alone: the interrupt tests need Python's default one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield "TinyMF"
    signal.signal(signal.SIGINT, previous)
