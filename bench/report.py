"""Benchmark JSON (``pytest bench/ --benchmark-json FILE``) → speedup table, markdown, PNG chart.

    python bench/report.py RESULTS/*.json                 # short speedup table (stdout)
    python bench/report.py RESULTS/*.json --markdown      # the docs/BENCHMARKS.md tables
    python bench/report.py RESULTS/*.json --png out.png   # bar chart (needs matplotlib)
    python bench/report.py A.json B.json --merge AB.json   # several runs into one file

A group is one op (or end-to-end step) in one mode on one workload; every provider of a group ran
the same inputs. The speedup of provider A over provider B is median(B) / median(A): above 1, A is
faster. bench/conftest.py imports this module to put the speedups into the JSON it writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

# Column order of providers in tables: baselines first, ours last.
PROVIDER_ORDER = ("reference", "coo", "csr", "compiled", "sgfd_fast")


def _provider(bench: dict) -> str:
    return bench.get("extra_info", {}).get("provider") or bench.get("name", "?")


def _median(bench: dict) -> float | None:
    return (bench.get("stats") or {}).get("median")


def _groups(benchmarks: list[dict]) -> dict[str, dict[str, dict]]:
    """group -> provider -> benchmark (the last one wins if a provider repeats)."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in benchmarks:
        if _median(bench):
            groups[bench.get("group") or bench.get("name")][_provider(bench)] = bench
    return groups


def _ordered(providers) -> list[str]:
    known = [p for p in PROVIDER_ORDER if p in providers]
    return known + sorted(p for p in providers if p not in PROVIDER_ORDER)


def add_speedups(benchmarks: list[dict]) -> None:
    """Set ``extra_info["speedup_vs"][other] = median(other) / median(this)`` in place."""
    for members in _groups(benchmarks).values():
        for provider, bench in members.items():
            bench.setdefault("extra_info", {})["speedup_vs"] = {
                other: round(_median(o) / _median(bench), 3)
                for other, o in members.items() if other != provider}


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def speedup_text(benchmarks: list[dict], focus: str = "sgfd_fast") -> str:
    """A plain-text table: per group, the median of ``focus`` and its speedup over the others."""
    groups = _groups(benchmarks)
    rows = []
    for group in sorted(groups):
        members = groups[group]
        if focus not in members:
            continue
        mine = _median(members[focus])
        others = [p for p in _ordered(members) if p != focus]
        vs = "  ".join(f"{p} {_median(members[p]) / mine:.2f}x" for p in others) or "(alone)"
        rows.append((group, fmt_time(mine), members[focus].get("extra_info", {}).get("backend", ""),
                     vs))
    if not rows:
        return f"(no group has a '{focus}' result)"
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    head = f"{'group':<{w0}}  {focus:>{w1}}  {'backend':<{w2}}  speedup of {focus} over"
    return "\n".join([head] + [f"{g:<{w0}}  {t:>{w1}}  {b:<{w2}}  {v}" for g, t, b, v in rows])


# ----------------------------------------------------------------------------------------------
# Files


def load(paths) -> list[dict]:
    """Each file as {path, device, date, versions, command, bench_size, benchmarks}."""
    runs = []
    for path in paths:
        data = _read(path)
        benchmarks = data.get("benchmarks", [])
        add_speedups(benchmarks)
        devices = sorted({b.get("extra_info", {}).get("device", "?") for b in benchmarks})
        runs.append({"path": str(path), "device": ", ".join(devices) or "?",
                     "date": (data.get("datetime") or "?")[:16].replace("T", " "),
                     "versions": data.get("versions", {}), "command": data.get("command", "?"),
                     "commit": (data.get("commit_info") or {}).get("id", "")[:9],
                     "bench_size": data.get("bench_size", "?"), "benchmarks": benchmarks})
    return runs


def _read(path) -> dict:
    """A pytest-benchmark JSON file, or the JSONL lines a killed run left
    (``SGFD_FAST_BENCH_PARTIAL``, one finished benchmark per line)."""
    text = Path(path).read_text()
    if not str(path).endswith(".jsonl"):
        return json.loads(text)
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {"benchmarks": rows, "datetime": rows[0].get("datetime") if rows else None,
            "command": "(partial: the run was stopped at its time limit)",
            "versions": {"torch": rows[0]["extra_info"].get("torch")} if rows else {},
            "bench_size": rows[0]["extra_info"].get("bench_size") if rows else "?"}


def merge(paths, out: str) -> None:
    """Concatenate benchmark JSON files (one pytest run each) into one; the run metadata comes
    from the first, the commands of all are kept."""
    merged = None
    for path in paths:
        data = _read(path)
        if merged is None:
            merged = data
            merged["command"] = data.get("command", "?")
        else:
            merged["benchmarks"] += data.get("benchmarks", [])
            merged["command"] += f" ; {data.get('command', '?')}"
    if merged is not None:
        add_speedups(merged["benchmarks"])
        Path(out).write_text(json.dumps(merged, indent=2))


def _versions(v: dict) -> str:
    keys = ("sgfd_fast", "torch", "triton", "python")
    return ", ".join(f"{k} {v[k]}" for k in keys if v.get(k)) or "?"


def markdown(runs: list[dict], focus: str = "sgfd_fast") -> str:
    """One table per op (end-to-end steps in their own table): a row per group and run with the
    medians per provider and the speedup of ``focus``. Each row names its run and device; the runs
    table gives date, versions and command."""
    by_op: dict[str, list] = defaultdict(list)
    for k, run in enumerate(runs, 1):
        for group, members in _groups(run["benchmarks"]).items():
            op = group.split("|")[0].strip()
            if not op.startswith("end_to_end:"):
                by_op[op].append((k, run, group, members))
    lines = []
    for op in sorted(by_op):
        entries = sorted(by_op[op], key=lambda e: (e[0], e[2]))
        providers = _ordered({p for e in entries for p in e[3]})
        others = [p for p in providers if p != focus]
        head = (["run", "device", "mode", "workload"] + [f"{p}" for p in providers]
                + [f"{focus} vs {p}" for p in others] + [f"{focus} GB/s", f"{focus} GFLOP/s"])
        lines += ["", f"**{op}** (median time per call)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k, run, group, members in entries:
            mine = members.get(focus)
            _, mode, workload = (part.strip() for part in group.split("|"))
            row = [f"R{k}", run["device"], mode, workload]
            row += [fmt_time(_median(members[p])) if p in members else "" for p in providers]
            row += [f"{_median(members[p]) / _median(mine):.2f}×" if mine and p in members else ""
                    for p in others]
            info = (mine or {}).get("extra_info", {})
            row += [f"{info['gb_per_s']:.2f}" if info.get("gb_per_s") else "",
                    f"{info['gflop_per_s']:.1f}" if info.get("gflop_per_s") else ""]
            lines.append("| " + " | ".join(row) + " |")
    lines += _end_to_end_table(runs)
    lines += ["", "| run | device | date (UTC) | versions | commit | command |",
              "|---|---|---|---|---|---|"]
    for k, run in enumerate(runs, 1):
        lines.append(f"| R{k} | {run['device']} | {run['date']} | {_versions(run['versions'])} | "
                     f"{run['commit']} | `{run['command']}` |")
    return "\n".join(lines).lstrip("\n")


def _mib(n) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "–"


def _end_to_end_table(runs: list[dict]) -> list[str]:
    """End-to-end groups: times, speedup and peak memory of sgfd_fast vs the reference backend."""
    rows = []
    for k, run in enumerate(runs, 1):
        for group, members in sorted(_groups(run["benchmarks"]).items()):
            if not group.startswith("end_to_end:") or not {"reference", "sgfd_fast"} <= set(members):
                continue
            ref, fast = members["reference"], members["sgfd_fast"]
            model, step, data = (part.strip() for part in group.split("|"))
            mem = [b.get("extra_info", {}).get("peak_memory_bytes") for b in (ref, fast)]
            rounds = [str((b.get("stats") or {}).get("rounds", "?")) for b in (ref, fast)]
            rows.append(f"| R{k} | {model.split(':', 1)[1]} | {data} | {step} | "
                        f"{fmt_time(_median(ref))} | {fmt_time(_median(fast))} | "
                        f"{_median(ref) / _median(fast):.2f}× | {_mib(mem[0])} | {_mib(mem[1])} | "
                        f"{'/'.join(rounds)} |")
    if not rows:
        return []
    return ["", "| run | model | dataset | step | reference backend | sgfd_fast | speedup | "
                "peak memory (reference) | peak memory (sgfd_fast) | rounds |",
            "|---|---|---|---|---|---|---|---|---|---|"] + rows


def bar_chart(runs: list[dict], path: str, focus: str = "sgfd_fast") -> bool:
    """A horizontal bar chart of ``focus``'s speedup over each other provider, per group."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)",
              file=sys.stderr)
        return False
    labels, series = [], defaultdict(list)
    others: list[str] = []
    for k, run in enumerate(runs, 1):
        for group, members in sorted(_groups(run["benchmarks"]).items()):
            if focus not in members:
                continue
            labels.append(f"R{k} {group}")
            for p in members:
                if p != focus and p not in others:
                    others.append(p)
            for p in others:
                series[p].append(_median(members[p]) / _median(members[focus])
                                 if p in members else float("nan"))
    for p in others:  # providers first seen in a later group get NaN for the earlier ones
        series[p] = [float("nan")] * (len(labels) - len(series[p])) + series[p]
    if not labels:
        print(f"no group has a '{focus}' result: no PNG written", file=sys.stderr)
        return False
    others = _ordered(others)
    height = 0.8 / max(len(others), 1)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(labels) * max(len(others), 1) + 1.5))
    for j, p in enumerate(others):
        ax.barh([i + j * height for i in range(len(labels))], series[p], height=height, label=p)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"speedup of {focus} (median of provider / median of {focus}; log scale)")
    ax.legend(title="over", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--markdown", action="store_true", help="print the markdown tables")
    parser.add_argument("--png", metavar="PATH", help="write a bar chart of the speedups")
    parser.add_argument("--focus", default="sgfd_fast", help="provider whose speedups are shown")
    parser.add_argument("--merge", metavar="OUT", help="write the files merged into one JSON")
    args = parser.parse_args(argv)
    paths = [p for p in args.files if Path(p).is_file()]
    if not paths:
        print("error: no benchmark JSON file found among the arguments", file=sys.stderr)
        return 2
    if args.merge:
        merge(paths, args.merge)
        return 0
    runs = load(paths)
    if args.png:
        bar_chart(runs, args.png, args.focus)
    if args.markdown:
        print(markdown(runs, args.focus))
    else:
        for run in runs:
            print(f"== {run['path']}  ({run['device']}, {run['date']} UTC, "
                  f"--bench-size {run['bench_size']})")
            print(speedup_text(run["benchmarks"], args.focus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
