"""A study's report from its finished runs: :func:`summarise` (per arm and metric mean ± std, the
paired differences against the baseline and the spec's contrasts, epochs, compute time, SGFD
diagnostics) and :func:`write_report` (``study.json``, ``study.md`` and, with matplotlib,
``bars.png`` and ``curves.png``); ``fmt`` and ``diff_cells`` format numbers for ``--summary`` too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..records import read_metrics, read_results
from .rundirs import finished_results
from .spec import STUDIES_DIR, Spec
from .stats import describe, paired

__all__ = ["summarise", "write_report", "fmt", "diff_cells"]


def _best_line(point_dir: Path, epoch: int) -> dict:
    return next((x for x in read_metrics(point_dir) if x["epoch"] == epoch), {})


def _compute_time(run_dir: Path) -> float:
    """Seconds of training and validation in every metrics.jsonl under a run directory."""
    total = 0.0
    for f in run_dir.rglob("metrics.jsonl"):
        for x in read_metrics(f.parent):
            total += x.get("epoch_time_s", 0.0) + x.get("eval_time_s", 0.0)
    return total


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(spec: Spec, runs: list, failed: dict | None = None) -> dict:
    """The study's summary from the finished runs' ``results.json`` (see module doc)."""
    keys = [f"{split}/{m}" for split in ("valid", "test") for m in spec.metrics]
    per_arm: dict[str, dict] = {a: {} for a in spec.arms}
    pending, at_cap, finished, seconds = [], 0, 0, 0.0
    other_epochs = {}  # pending runs that finished under another epochs (a resumable key)
    for run in runs:
        if run.dir.exists():
            seconds += _compute_time(run.dir)
        res = finished_results(run, spec)
        if res is None:
            pending.append(f"{run.arm}/seed-{run.seed}")
            if (run.dir / "results.json").exists():
                other_epochs[pending[-1]] = read_results(run.dir)["config"].get("epochs")
            continue
        finished += 1
        cap = not res["early_stopped"]
        at_cap += cap
        point_dir = (run.dir / res["checkpoint"]).parent
        diag = _best_line(point_dir, res["best_epoch"]).get("sgfd", {})
        per_arm[run.arm][run.seed] = {
            **{k: res[k.split("/")[0]].get(k.split("/")[1]) for k in keys},
            "epochs_trained": res["epochs_trained"], "best_epoch": res["best_epoch"],
            "at_cap": cap, "params": (res["grid"][res["selected_point"]]["params"]
                                      if "grid" in res else None),
            "grad_share": diag.get("grad_share"),
            "teacher_acc": _mean(diag.get("teacher_acc", {}).values()),
            "student_acc": _mean(diag.get("student_acc", {}).values()),
        }
    arms = {}
    for arm, by_seed in per_arm.items():
        seeds = sorted(by_seed)
        entry = {"overrides": spec.arms[arm], "seeds": seeds,
                 "per_seed": {str(s): by_seed[s] for s in seeds},
                 "metrics": {k: describe([by_seed[s][k] for s in seeds]) for k in keys},
                 "epochs_trained": describe([by_seed[s]["epochs_trained"] for s in seeds]),
                 "at_cap": sum(by_seed[s]["at_cap"] for s in seeds),
                 "diagnostics": {d: _mean(by_seed[s][d] for s in seeds)
                                 for d in ("grad_share", "teacher_acc", "student_acc")}}
        if arm != spec.baseline:
            entry["vs_baseline"] = paired(per_arm[arm], per_arm[spec.baseline], keys)
        arms[arm] = entry
    contrasts = {name: {"arm": a, "reference": r, **paired(per_arm[a], per_arm[r], keys)}
                 for name, (a, r) in spec.contrasts.items()}
    shipped = spec.path.resolve().parent == STUDIES_DIR  # a path of this machine says nothing
    return {"study": spec.name,
            "spec": f"{spec.path.stem} (shipped)" if shipped else str(spec.path),
            "description": spec.description,
            "model": spec.model,
            "dataset": spec.dataset or (spec.data or {}).get("path") or "a dataset in memory",
            "baseline": spec.baseline, "seeds": spec.seeds, "metrics": keys,
            "shared_config": spec.shared,
            # what the command line changed: the spec's own seeds (None: kept), every arm's keys
            "command_line": {"spec_seeds": spec.spec_seeds, "config": spec.command_line},
            "arms": arms, "contrasts": contrasts,
            "runs": {"total": len(runs), "finished": finished, "pending": pending,
                     "finished_with_other_epochs": other_epochs,
                     "failed": failed or {}, "at_epoch_cap": at_cap,
                     "compute_time_s": seconds}}


def other_epochs_note(runs: dict) -> str:
    """One sentence on pending runs that finished under another ``epochs`` (``{"arm/seed-N":
    epochs}``): a study run continues them; a report of them as they are needs their options."""
    epochs = sorted({json.dumps(v) for v in runs.values()})
    return (f"{len(runs)} pending run(s) ({', '.join(list(runs)[:3])}"
            f"{', ...' if len(runs) > 3 else ''}) finished with epochs={' or '.join(epochs)}, not "
            f"this report's: running the study continues them; to report them as they are, give "
            f"the options they ran with (e.g. --epochs {epochs[0]}, and their --seeds).")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def fmt(x, digits=4, sign=""):
    """``x`` rounded to ``digits`` places; a value that rounds to zero prints unsigned-zero
    (``0.0000``, ``+0.0000`` with ``sign="+"``), never ``-0.0000``."""
    return "–" if x is None else f"{round(x, digits) + 0.0:{sign}.{digits}f}"


def diff_cells(d: dict) -> tuple[str, str]:
    """The "Δ [95 % CI] (n)" and "p" cells of a paired difference."""
    ci = f" [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]" if d["ci95"] else ""
    floor = d.get("min_p")
    p = fmt(d["wilcoxon_p"], 3) + (f" (min {floor:.3f})" if floor and floor > 0.05 else "")
    return f"{fmt(d['mean'], sign='+')}{ci} (n={d['n']})", p


def _markdown(s: dict) -> str:
    runs = s["runs"]
    lines = [f"# Study {s['study']}: {s['model']} on {s['dataset']}", ""]
    if s["description"]:
        lines += [s["description"], ""]
    cap = runs["at_epoch_cap"]
    changed = s.get("command_line") or {}
    if changed.get("spec_seeds") is not None or changed.get("config"):
        parts = ([f"seeds {s['seeds']} (the spec has {changed['spec_seeds']})"]
                 if changed.get("spec_seeds") is not None else [])
        if changed.get("config"):
            parts.append("every arm: " + ", ".join(f"{k}={json.dumps(v)}"
                                                   for k, v in changed["config"].items()))
        lines += [f"**Changed from the command line, not the spec's study:** "
                  f"{'; '.join(parts)}.", ""]
    lines += [f"Spec `{s['spec']}`; seeds {s['seeds']}; baseline arm `{s['baseline']}`. "
              f"{runs['finished']} of {runs['total']} runs finished"
              + (f", {len(runs['pending'])} pending" if runs["pending"] else "")
              + (f", {len(runs['failed'])} failed" if runs["failed"] else "")
              + f"; {cap} of {runs['finished']} finished runs "
              f"({100 * cap / max(runs['finished'], 1):.0f} %) stopped at the epoch cap "
              f"instead of early. Training + validation time, summed over runs: "
              f"{_duration(runs['compute_time_s'])}."
              + (" **More than 10 % of the runs ended at the epoch cap: their best epoch may lie "
                 "beyond it; raise `epochs` in the spec and rerun the study: the runs at the cap "
                 "continue where they stopped.**"
                 if cap > 0.1 * runs["finished"] else ""), "",
              "Mean ± sample std (ddof 1) over seeds. Δ: mean paired difference arm − baseline "
              "over the seeds both finished, with its 95 % t confidence interval; p: two-sided "
              "Wilcoxon signed-rank test of those differences (it drops zero differences; with "
              "m non-zero ones no p below 2/2^m exists: m < 6 cannot reach 0.05).", ""]
    for key in s["metrics"]:
        lines += [f"## {key}", "", f"| arm | n | {key} | Δ vs {s['baseline']} [95 % CI] | "
                                   f"Wilcoxon p |", "|---|---|---|---|---|"]
        for arm, a in s["arms"].items():
            m = a["metrics"][key]
            cell = f"{fmt(m['mean'])} ± {fmt(m['std'])}" if m["n"] else "–"
            if arm == s["baseline"]:
                diff, p = "(baseline)", ""
            elif a.get("vs_baseline"):
                diff, p = diff_cells(a["vs_baseline"][key])
            else:
                diff, p = "–", ""
            lines.append(f"| {arm} | {m['n']} | {cell} | {diff} | {p} |")
        lines.append("")
    if s.get("contrasts"):
        lines += ["## Contrasts", "", "Each the paired difference arm − reference, as above.", "",
                  "| contrast | arm − reference | metric | Δ [95 % CI] | Wilcoxon p |",
                  "|---|---|---|---|---|"]
        for name, c in s["contrasts"].items():
            for key in s["metrics"]:
                diff, p = diff_cells(c[key]) if key in c else ("–", "")
                lines.append(f"| {name} | {c['arm']} − {c['reference']} | {key} | {diff} | {p} |")
        lines.append("")
    lines += ["## Runs", "", "| arm | overrides | epochs trained | at epoch cap | grid point "
              "selected (per seed) | SGFD grad share | teacher acc | student acc |",
              "|---|---|---|---|---|---|---|---|"]
    for arm, a in s["arms"].items():
        e = a["epochs_trained"]
        sel = "; ".join(f"{seed}: " + ", ".join(f"{k}={v}" for k, v in x["params"].items())
                        for seed, x in a["per_seed"].items() if x["params"])
        over = ", ".join(f"{k}={v}" for k, v in a["overrides"].items()) or "(shared config)"
        dg = a["diagnostics"]
        lines.append(f"| {arm} | {over} | {fmt(e['mean'], 1)} ± {fmt(e['std'], 1)} | "
                     f"{a['at_cap']}/{e['n']} | {sel or '–'} | {fmt(dg['grad_share'], 6)} | "
                     f"{fmt(dg['teacher_acc'], 3)} | {fmt(dg['student_acc'], 3)} |")
    lines += ["", "SGFD diagnostics are those of the best epoch, averaged over seeds (and "
              "modalities): grad share = ‖∇_student L_SGFD‖ / ‖∇_student L‖ on the epoch's last "
              "batch; accuracies of each modality's classifier over all items."]
    if runs["failed"]:
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in runs["failed"].items()]
    if runs["pending"]:
        lines += ["", f"Pending runs: {', '.join(runs['pending'])}."]
    if runs.get("finished_with_other_epochs"):
        lines += ["", other_epochs_note(runs["finished_with_other_epochs"])]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out) -> list[Path]:
    """Write ``study.json``, ``study.md`` and, with matplotlib, ``bars.png`` and ``curves.png``
    into ``out``; returns the PNGs written (a missing matplotlib is reported on stderr)."""
    from ..training.checkpoint import write_json, write_text

    out = Path(out)
    write_json(out / "study.json", summary)
    write_text(out / "study.md", _markdown(summary))
    from .. import plot

    try:
        return plot.study_plots(summary, out)
    except plot.PlotUnavailable as e:
        print(f"note: {e}; study.json and study.md are written", file=sys.stderr)
        return []
