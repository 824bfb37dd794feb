"""The benchmark scripts that are not pytest modules (bench_scale.py, step_cost.py), run once at
their tiniest setting through their command lines, as a user runs them: the smoke that keeps them
from rotting between the measurements that use them. Their JSON rows and every printed table's
shape are checked, not their timings."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(script: str, *args: str, cwd: Path) -> str:
    p = subprocess.run([sys.executable, str(HERE / script), *args], cwd=cwd, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def _tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table printed (consecutive lines starting with '|'), as rows of cells
    without the separator line; each row must have the header's number of cells."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            assert block[0].endswith("|") and len(block) >= 3, block
            rows = [[c.strip() for c in x.strip().strip("|").split("|")] for x in block]
            header, sep, body = rows[0], rows[1], rows[2:]
            assert len(sep) == len(header) and all(re.fullmatch(":?-+:?", c) for c in sep), \
                block[:2]
            assert all(len(r) == len(header) for r in body), block
            tables.append([header, *body])
            block = []
    return tables


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


def test_bench_scale_smoke(tmp_path):
    """--smoke: the tiny SYNTHETIC size on 1 and 2 processes and on 1 process with 2 threads,
    the per-phase table (2 steps) and the collectives at 1 MiB."""
    out = _run("bench_scale.py", "--smoke", "--phase-steps", "2", "--json",
               str(tmp_path / "rows.json"), cwd=tmp_path)
    res = json.loads((tmp_path / "rows.json").read_text())
    (row,) = res["sizes"]
    assert (row["size"], row["users"], row["items"]) == ("smoke", 300, 200)
    for run in (row["one"], row["two"], row["threads"]):
        assert {"epoch_s", "eval_s", "peak_rss_mib", "cpu_s", "sent_mib_per_step"} <= set(run)
        assert all(_finite(run[k]) for k in ("epoch_s", "eval_s", "peak_rss_mib", "cpu_s"))
        assert len(run["losses"]) == 1 and math.isfinite(run["losses"][0])  # --smoke: 1 epoch
    # one process sends nothing; two send their share, and learn what one process learns
    assert row["one"]["sent_mib_per_step"] == 0 and row["two"]["sent_mib_per_step"] > 0
    assert row["threads"]["sent_mib_per_step"] == 0
    assert row["loss_rel_diff"] < 1e-4, row["loss_rel_diff"]

    one, two = row["phases"]["1"], row["phases"]["2"]
    assert len(one) == 1 and len(two) == 2
    for rank in (*one, *two):
        assert rank["step_cpu_s"] > 0 and rank["eval_cpu_s"] > 0
        assert {"evaluation", "Adam", "backward (rest)"} <= set(rank["phases"])
        assert all(_finite(v) for v in rank["phases"].values())
    assert not any(k.startswith("comm ") for k in one[0]["phases"])
    assert all(any(k.startswith("comm ") for k in r["phases"]) for r in two)
    # the phase workers' count of what rank 0 sends is the trainer's log's
    assert math.isclose(two[0]["sent_mib_per_step"], row["two"]["sent_mib_per_step"], rel_tol=0.02)

    assert {r["op"] for r in res["comm"]["rows"]} == {
        "all_reduce", "all_gather", "broadcast (from rank 0)", "gather by broadcasts (split)"}
    assert all(r["mib"] == 1 and r["wall_ms"] > 0 and r["gb_s"] > 0 for r in res["comm"]["rows"])

    sizes, phases, comm = _tables(out)
    assert sizes[0][0] == "size (SYNTHETIC)" and [r[0] for r in sizes[1:]] == ["300 x 200"]
    assert phases[0][0] == "phase"
    names = [r[0] for r in phases[1:]]
    assert {"evaluation", "Adam", "**s per step**", "**s per evaluation**"} <= set(names)
    assert {k for r in (*one, *two) for k in r["phases"]} <= set(names)
    assert comm[0][0] == "collective" and len(comm) == 1 + 4


def test_step_cost_smoke(tmp_path):
    """--sizes smoke --steps 1: every quantity of the table, one column per size."""
    out = _run("step_cost.py", "--sizes", "smoke", "--steps", "1", "--warmup", "1",
               "--eval-users", "16", "--json", str(tmp_path / "rows.json"), cwd=tmp_path)
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert (row["size"], row["users"], row["items"], row["eval_users"]) == ("smoke", 300, 200, 16)
    assert row["train"] > 0 and row["nnz"] == 2 * row["train"]  # the bipartite graph, both ways
    assert set(row["phases"]) == {"forward", "backward", "adam"}
    assert all(set(p) == {"minflt", "user_s", "sys_s"} and all(map(_finite, p.values()))
               for p in row["phases"].values())
    assert set(row["components"]) == {"adam_s", "encoder_s", "propagate_s", "feature_gather_s",
                                      "eval_users_s"}
    assert all(map(_finite, row["components"].values()))
    assert len(row["losses"]) == 2 and all(map(math.isfinite, row["losses"]))  # warm-up + step

    (table,) = _tables(out)
    assert table[0] == ["quantity per step", "300 x 200"]  # one size: no exponent column
    assert [r[0] for r in table[1:]] == [
        f"{k}_{f}" for k in ("forward", "backward", "adam") for f in ("minflt", "user_s", "sys_s")
    ] + list(row["components"])
    assert all(math.isfinite(float(r[1])) for r in table[1:])
