"""Python calls the compiled modules by keyword, with the names the bindings declare.

Every ``_ext.cpu.<fn>(...)`` / ``_ext.cuda.<fn>(...)`` call in the package passes exactly the
``py::arg`` names of the matching ``m.def`` in ``csrc/`` (pybind11 rejects a wrong name at call
time, but the CUDA calls only run on a GPU, so a typo there would pass CI without this check).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "csrc").is_dir():
    pytest.skip("needs the source checkout (csrc/)", allow_module_level=True)


def bound_arguments() -> dict:
    """(module, function) -> argument names in order, from every m.def in csrc/."""
    bound = {}
    for path in sorted((ROOT / "csrc").rglob("*")):
        module = {".cpp": "cpu", ".cu": "cuda"}.get(path.suffix)
        if module is None:
            continue
        for chunk in path.read_text().split("m.def(")[1:]:
            name = re.match(r'\s*"(\w+)"', chunk).group(1)
            bound[(module, name)] = re.findall(r'py::arg\("(\w+)"\)', chunk)
    return bound


def extension_calls():
    """(file, line, (module, function), positional count, keyword names) of every _ext call."""
    for path in sorted([*(ROOT / "sgfd_fast").rglob("*.py"), *(ROOT / "kernels").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if (isinstance(node, ast.Call) and isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Attribute)
                    and isinstance(func.value.value, ast.Name) and func.value.value.id == "_ext"):
                yield (f"{path.relative_to(ROOT)}:{node.lineno}", (func.value.attr, func.attr),
                       len(node.args), [k.arg for k in node.keywords])


def test_every_binding_names_its_arguments():
    bound = bound_arguments()
    assert ("cpu", "spmm_csr") in bound and ("cuda", "spmm_csr") in bound
    for (module, name), args in bound.items():
        if name not in ("device_count", "runtime_version"):  # take no arguments
            assert args, f"{module}.{name} has no py::arg names"


def test_calls_pass_the_bound_names_by_keyword():
    bound = bound_arguments()
    calls = list(extension_calls())
    assert any(target == ("cuda", "propagate") for _, target, _, _ in calls)
    for where, target, n_positional, keywords in calls:
        assert target in bound, f"{where}: {target} is not bound in csrc/"
        assert n_positional == 0, f"{where}: pass the arguments of {target} by keyword"
        assert keywords == bound[target], f"{where}: {keywords} != bound {bound[target]}"
