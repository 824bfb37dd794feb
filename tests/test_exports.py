"""Every public name a package defines or re-exports from its own modules is in its __all__."""

import inspect

import pytest

import sgfd_fast.models
import sgfd_fast.ops


@pytest.mark.parametrize("package", [sgfd_fast.ops, sgfd_fast.models])
def test_all_lists_every_public_name(package):
    public = {name for name, value in vars(package).items()
              if not name.startswith("_") and not inspect.ismodule(value)
              and getattr(value, "__module__", package.__name__).startswith(package.__name__)}
    assert sorted(public) == sorted(package.__all__)
