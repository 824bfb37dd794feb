import json
import os
import subprocess
import sys

import pytest

from sgfd_fast import _ext


def run_info(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sgfd_fast.info", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=True).stdout


def test_info_json_keys_and_backends():
    info = json.loads(run_info("--json", env={"SGFD_FAST_BACKEND": "auto"}))
    ext = info["extension"]
    assert {"built", "cuda_compiled", "error"} <= set(ext)
    assert ext["built"] == (_ext.cpu is not None)
    for op in ("spmm_csr", "propagate", "sample_negatives", "bipartite_adj"):
        assert {"cpu", "cuda"} <= set(info["ops"][op])
    if ext["built"]:
        assert info["ops"]["spmm_csr"]["cpu"] == "cpp"
        assert info["ops"]["sample_negatives"]["cpu"] == "cpp"
        # A host op: graphs for either device are built by the CPU backend.
        assert info["ops"]["bipartite_adj"] == {"cpu": "cpp", "cuda": "cpp"}


def test_per_op_env_entry_switches_that_op_only():
    spec = "sample_negatives=reference,bipartite_adj=reference"
    info = json.loads(run_info("--json", env={"SGFD_FAST_BACKEND": spec}))
    assert info["ops"]["sample_negatives"] == {"cpu": "reference", "cuda": "reference"}
    assert info["ops"]["bipartite_adj"] == {"cpu": "reference", "cuda": "reference"}
    assert info["backend_request"] == spec   # was reported as "auto"
    if info["extension"]["built"]:
        assert info["ops"]["spmm_csr"]["cpu"] == "cpp"


def test_reference_env_switches_every_op():
    info = json.loads(run_info("--json", env={"SGFD_FAST_BACKEND": "reference"}))
    assert all(d["cpu"] == "reference" and d["cuda"] == "reference" for d in info["ops"].values())


def test_info_text():
    out = run_info(env={"SGFD_FAST_BACKEND": "auto"})
    assert "CPU extension" in out and "spmm_csr" in out


@pytest.mark.skipif(os.environ.get("SGFD_FAST_EXPECT_CUDA_BUILD") != "1",
                    reason="CI sets SGFD_FAST_EXPECT_CUDA_BUILD=1 where nvcc exists")
def test_cuda_module_was_compiled():
    assert _ext.cuda is not None, _ext.cuda_error


def test_info_names_the_bf16_isa(monkeypatch):
    from sgfd_fast import info as info_mod
    from sgfd_fast.ops import _bf16_filter

    info = json.loads(run_info("--json"))
    report = info["bf16"]
    assert report["cpu"] == _bf16_filter.bf16_hardware("cpu")
    assert report["cpu"] in (None, "amx_bf16", "avx512_bf16")
    assert bool(report["warnings"]) == (report["cpu"] is None
                                        or (info["cuda_available"] and report["cuda"] is None))
    monkeypatch.setattr(_bf16_filter, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    emulated = info_mod._bf16()
    assert emulated["cpu"] is None and "slower than float32" in emulated["warnings"][0]
    monkeypatch.setattr(_bf16_filter, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert info_mod._bf16()["cpu"] == "avx512_bf16"
    assert "bf16 products: CPU" in run_info()
