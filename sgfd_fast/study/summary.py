"""``python -m sgfd_fast.study --summary DIR...``: one view across finished studies.

Each DIR is a study directory holding the ``study.json`` its run (or ``--report``) wrote. Of each
study one contrast is taken, ``arm - reference`` on one metric, and computed from the study's
per-seed values with the report's own statistics (:func:`.stats.paired`: the mean paired
difference over the seeds both arms finished, its 95 % t interval, the Wilcoxon p), so a row
repeats the study's own report. One row per backbone x dataset, in ``summary.md`` and
``summary.json``, and one forest plot, ``forest.png`` (matplotlib, :func:`sgfd_fast.plot.forest`).

The contrast is a named contrast of the studies' specs (``distillation``) or ``ARM-REFERENCE``
(default ``sgfd-plain``); the metric ``recall@20`` means the test split (``valid/recall@20`` the
validation one). Refused, before anything is written (:class:`~sgfd_fast.errors.ConfigError`):
a directory without a study report, a contrast whose arms a study lacks or (by its report) has
not finished on every seed, a metric a study does not record, a directory given twice, two
studies of one backbone x dataset (the CLI also refuses an ``--out`` inside any study's
directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError, SGFDError
from ..records import read_json
from .report import diff_cells, fmt
from .stats import paired

__all__ = ["summarise_studies", "write_summary", "DEFAULT_CONTRAST", "DEFAULT_METRIC"]

DEFAULT_CONTRAST = "sgfd-plain"
DEFAULT_METRIC = "recall@20"

#: What a study.json must hold to be read here: key -> type.
_REPORT_KEYS = {"study": str, "model": str, "dataset": str, "seeds": list, "metrics": list,
                "arms": dict, "contrasts": dict, "runs": dict}


def _read_study(d: Path) -> dict:
    if not d.is_dir():
        raise ConfigError(f"--summary: {d} is not a directory"
                          f"{'' if d.exists() else ' (it does not exist)'}; give study "
                          f"directories (each a study's --out)")
    f = d / "study.json"
    if not f.is_file():
        raise ConfigError(f"--summary: {d} holds no study.json, so it is not a finished study; "
                          f"a study writes it when its runs end (or: python -m sgfd_fast.study "
                          f"SPEC --out {d} --report)")
    try:
        s = read_json(f)
    except SGFDError as e:
        raise ConfigError(f"--summary: {e}") from None
    wrong = [k for k, t in _REPORT_KEYS.items() if not isinstance(s, dict)
             or not isinstance(s.get(k), t)]
    if wrong or not all(isinstance(a, dict) and isinstance(a.get("per_seed"), dict)
                        for a in s["arms"].values()):
        raise ConfigError(f"--summary: {f} is not a study report (it lacks "
                          f"{', '.join(wrong) or 'per-seed values'}); write it again: "
                          f"python -m sgfd_fast.study SPEC --out {d} --report")
    return s


def _arms(s: dict, d: Path, contrast: str) -> tuple[str, str]:
    """The (arm, reference) that ``contrast`` names in study ``s``."""
    if contrast in s["contrasts"]:
        c = s["contrasts"][contrast]
        return c["arm"], c["reference"]
    splits = [(contrast[:i], contrast[i + 1:]) for i, ch in enumerate(contrast) if ch == "-"]
    found = [(a, r) for a, r in splits if a in s["arms"] and r in s["arms"]]
    if len(found) == 1:
        return found[0]
    named = f"; its named contrasts: {', '.join(s['contrasts'])}" if s["contrasts"] else ""
    missing = sorted({x for a, r in splits for x in (a, r) if x and x not in s["arms"]})
    raise ConfigError(
        f"--summary: study {s['study']} ({d}) has no contrast {contrast!r}: "
        + (f"it names two pairs of its arms ({' or '.join(f'{a}-{r}' for a, r in found)})"
           if found else
           f"no arm {' or '.join(repr(m) for m in missing)}" if missing else
           "it is neither a named contrast nor ARM-REFERENCE")
        + f" (its arms: {', '.join(s['arms'])}{named}); give --contrast ARM-REFERENCE of arms "
          f"every study has")


def _per_seed(s: dict, d: Path, arm: str, key: str) -> dict[int, dict]:
    """``{seed: {key: value}}`` of ``arm``, which the report must show finished on every seed
    of the study."""
    per_seed = {int(seed): x for seed, x in s["arms"][arm]["per_seed"].items()}
    missing = [seed for seed in s["seeds"] if seed not in per_seed]
    if missing:
        raise ConfigError(f"--summary: study {s['study']} ({d}): its report has no finished run "
                          f"of arm {arm!r} for seed{'s' * (len(missing) > 1)} "
                          f"{', '.join(map(str, missing))} of {s['seeds']}; finish the study "
                          f"(rerun its command, which writes the report again), or, if those "
                          f"runs have finished since, write the report: python -m "
                          f"sgfd_fast.study SPEC --out {d} --report")
    for seed, x in per_seed.items():
        if not isinstance(x.get(key), (int, float)):
            raise ConfigError(f"--summary: {d / 'study.json'} has no {key} for {arm} seed "
                              f"{seed}; write it again: python -m sgfd_fast.study SPEC --out "
                              f"{d} --report")
    return {seed: {key: x[key]} for seed, x in per_seed.items()}


def summarise_studies(dirs, *, contrast: str = DEFAULT_CONTRAST,
                      metric: str = DEFAULT_METRIC) -> dict:
    """The contrast of each finished study in ``dirs`` (see the module doc).

    Returns ``{"contrast", "metric", "rows"}``; ``metric`` is the study's key (``test/recall@20``)
    and each row holds ``model``, ``dataset``, ``study``, ``dir``, ``arm``, ``reference``,
    ``arm_mean``, ``reference_mean``, ``command_line`` (what the study's command line changed)
    and the paired statistics of :func:`.stats.paired_difference` (``n``, ``mean``, ``ci95``,
    ``wilcoxon_p``, ``min_p``, ``diffs``, ``seeds``). Rows are sorted by dataset, then backbone.

    Raises:
        ConfigError: no directories, or one refused (see the module doc).
    """
    dirs = [Path(d).expanduser() for d in dirs]
    if not dirs:
        raise ConfigError("--summary needs study directories (each a study's --out, holding "
                          "its study.json), e.g. --summary runs/study-office-bm3 "
                          "runs/study-office-grcn")
    if not contrast:
        raise ConfigError(f"--contrast is empty; give a named contrast or ARM-REFERENCE "
                          f"(default {DEFAULT_CONTRAST})")
    if not metric:
        raise ConfigError(f"--metric is empty; give one such as {DEFAULT_METRIC}")
    key = metric if "/" in metric else f"test/{metric}"
    twice = [d for k, d in enumerate(dirs) if d.resolve() in {e.resolve() for e in dirs[:k]}]
    if twice:
        raise ConfigError(f"--summary: {twice[0]} is given twice; give each study once")
    rows, seen = [], {}
    for d in dirs:
        s = _read_study(d)
        if key not in s["metrics"]:
            raise ConfigError(f"--summary: study {s['study']} ({d}) does not record {key} (it "
                              f"records {', '.join(s['metrics'])}); give --metric one of them")
        arm, ref = _arms(s, d, contrast)
        which = (s["model"], s["dataset"])
        if which in seen:
            raise ConfigError(f"--summary: {seen[which]} and {d} are both studies of "
                              f"{s['model']} on {s['dataset']}; give one study per backbone "
                              f"and dataset")
        seen[which] = d
        stats = paired(_per_seed(s, d, arm, key), _per_seed(s, d, ref, key), [key])[key]
        means = {a: s["arms"][a].get("metrics", {}).get(key, {}).get("mean") for a in (arm, ref)}
        rows.append({"model": s["model"], "dataset": s["dataset"], "study": s["study"],
                     "dir": str(d), "arm": arm, "reference": ref, "arm_mean": means[arm],
                     "reference_mean": means[ref], "command_line": s.get("command_line"),
                     **stats})
    rows.sort(key=lambda r: (r["dataset"], r["model"]))
    return {"contrast": contrast, "metric": key, "rows": rows}


def _changed(row: dict) -> str:
    c = row["command_line"] or {}
    parts = ([f"seeds {row['seeds']} (the spec has {c['spec_seeds']})"]
             if c.get("spec_seeds") is not None else [])
    parts += [f"{k}={v}" for k, v in (c.get("config") or {}).items()]
    return "; ".join(parts)


def _markdown(t: dict) -> str:
    split, _, metric = t["metric"].partition("/")
    lines = [f"# {t['contrast']} across studies: {split} {metric}", "",
             f"One row per backbone × dataset: the mean paired difference arm − reference of "
             f"{split} {metric} over the seeds both arms finished, its 95 % t confidence "
             f"interval and the two-sided Wilcoxon signed-rank p (with m non-zero differences no "
             f"p below 2/2^m exists), as each study's own report gives them.", "",
             f"| backbone | dataset | study | arm − reference | Δ {metric} [95 % CI] (n) | "
             f"Wilcoxon p | arm | reference |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in t["rows"]:
        diff, p = diff_cells(r)
        changed = _changed(r)
        if changed:
            notes.append(f"{r['study']}: changed from the command line, not the spec's study: "
                         f"{changed}.")
        lines.append(f"| {r['model']} | {r['dataset']} | {r['study']}{' *' if changed else ''} "
                     f"| {r['arm']} − {r['reference']} | {diff} | {p} | {fmt(r['arm_mean'])} | "
                     f"{fmt(r['reference_mean'])} |")
    if notes:
        lines += [""] + [f"\\* {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_summary(table: dict, out) -> list[Path]:
    """Write ``summary.json``, ``summary.md`` and, with matplotlib, ``forest.png`` of a
    :func:`summarise_studies` table into the directory ``out`` (made if missing); returns the
    files written (a missing matplotlib is reported on stderr)."""
    from .. import plot
    from ..training.checkpoint import write_json, write_text

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out}: {e.strerror or e}") from None
    write_json(out / "summary.json", table)
    write_text(out / "summary.md", _markdown(table))
    written = [out / "summary.json", out / "summary.md"]
    split, _, metric = table["metric"].partition("/")
    try:
        written.append(plot.forest(
            [(f"{r['model']} · {Path(r['dataset']).name}", r["mean"], r["ci95"],
              diff_cells(r)[0])  # a dataset directory by its name, as train names its runs
             for r in table["rows"]], out / "forest.png",
            xlabel=f"Δ {split} {metric}, mean paired difference with 95 % CI",
            title=f"{table['contrast']} across studies"))
    except plot.PlotUnavailable as e:
        print(f"note: {e}; summary.json and summary.md are written", file=sys.stderr)
    return written
