"""The import graph has no back-arrows (docs/DEVELOPING.md "Layout"): the Triton launchers
(``sgfd_fast.kernels``) sit below ``sgfd_fast.ops`` and share buffer plumbing with it through
``sgfd_fast._tensors`` only; the data layer sits below training, training below the study, the
API and the command lines; and a layer's names are imported from the layer that defines them.
Imports inside functions count as much as those at the top of a module."""

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sgfd_fast

PACKAGE = Path(sgfd_fast.__file__).resolve().parent
KERNELS = importlib.util.find_spec("sgfd_fast.kernels")
MODULES = sorted(m.name for m in pkgutil.iter_modules(KERNELS.submodule_search_locations)) \
    if KERNELS is not None else []

#: Each layer (a package or module and everything under it) and the layers above it, which it
#: must never import.
ABOVE = {
    "sgfd_fast.data": ("sgfd_fast.training", "sgfd_fast.models", "sgfd_fast.study",
                       "sgfd_fast.api", "sgfd_fast.train", "sgfd_fast.plot"),
    "sgfd_fast.records": ("sgfd_fast.data", "sgfd_fast.training", "sgfd_fast.study",
                          "sgfd_fast.api", "sgfd_fast.plot"),
    "sgfd_fast.training": ("sgfd_fast.study", "sgfd_fast.api", "sgfd_fast.train",
                           "sgfd_fast.plot"),
    "sgfd_fast.plot": ("sgfd_fast.training", "sgfd_fast.study", "sgfd_fast.api"),
    "sgfd_fast.api": ("sgfd_fast.study", "sgfd_fast.train", "sgfd_fast.plot"),
    "sgfd_fast.study": ("sgfd_fast.api", "sgfd_fast.train"),
}
#: The study wing (sgfd_fast/study/), one concern per module, each importing only those before it.
STUDY_WING = ["spec", "stats", "rundirs", "report", "run", "summary", "cli"]
ABOVE.update({f"sgfd_fast.study.{m}": tuple(f"sgfd_fast.study.{n}" for n in STUDY_WING[i + 1:])
              for i, m in enumerate(STUDY_WING)})

#: Names that one layer defines, and the module that exports them.
HOME = {"load_data": "sgfd_fast.data", "load_dataset": "sgfd_fast.data"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import of an ``sgfd_fast`` module in ``path`` (relative
    imports resolved; ``names``: those taken from it by ``from ... import``)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            if not node.module:  # from . import x: x may be a module
                found += [(f"{target}.{n}", [], node.lineno) for n in names]
            found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return [f for f in found if f[0] == "sgfd_fast" or f[0].startswith("sgfd_fast.")]


def _within(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_sources_are_found():
    modules = {_module(p) for p in SOURCES}
    assert {"sgfd_fast.data.registry", "sgfd_fast.data.dataset", "sgfd_fast.training.runner",
            "sgfd_fast.api"} <= modules
    assert {m for m in modules if m.startswith("sgfd_fast.study.")} == \
        {f"sgfd_fast.study.{m}" for m in STUDY_WING + ["__main__"]}


def test_no_layer_imports_one_above_it():
    wrong = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {target}"
             for p in SOURCES for layer, above in ABOVE.items() if _within(_module(p), layer)
             for target, _, line in imports(p) if any(_within(target, a) for a in above)]
    assert not wrong, wrong


def test_names_come_from_the_layer_that_defines_them():
    wrong = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {name} from {target}"
             for p in SOURCES for target, names, line in imports(p) for name in names
             if name in HOME and not _within(target, HOME[name])]
    assert not wrong, wrong


def test_the_checks_see_imports_inside_functions(tmp_path):
    """The rules above would pass vacuously if ``imports`` missed an import."""
    f = PACKAGE / "data" / "dataset.py"
    assert ("sgfd_fast.errors", ["ConfigError", "DataError"]) in [t[:2] for t in imports(f)]
    api = imports(PACKAGE / "api.py")  # load_run imports its helpers when called
    assert any(t == "sgfd_fast.data" and "load_data" in names for t, names, _ in api)


def test_every_kernel_module_is_checked():
    if KERNELS is None:
        pytest.skip("sgfd_fast.kernels is shipped from kernels/ by setup.py: run against an "
                    "install")
    assert {"spmm_csr", "propagate", "masked_topk", "sgfd_loss", "feature_head"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_kernels_do_not_import_ops(module):
    pytest.importorskip("triton")
    code = (f"import sys, sgfd_fast.kernels.{module}; "
            "assert 'sgfd_fast.ops' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
