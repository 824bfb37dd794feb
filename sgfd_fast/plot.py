"""``python -m sgfd_fast.plot RUN_DIR...``: training curves of runs, and the study figures.

The only module that imports matplotlib (an optional extra: ``pip install 'sgfd_fast[plot]'``);
without it every function raises :class:`PlotUnavailable`, which says so.

* :func:`run_curves`: per run (per grid point of a grid run), from its ``metrics.jsonl``: the
  validation metric, the training loss and, for SGFD runs, the SGFD losses' share of the
  student's gradient (``sgfd_fast.training.diagnostics``) against the epoch.
* :func:`study_plots`: ``bars.png`` (per metric, each arm's mean with ± one sample std and its
  seeds as dots, on an axis from 0) and ``curves.png`` (the validation curves of every arm x seed, one colour per
  arm) from a :func:`sgfd_fast.study.summarise` summary.
* :func:`forest`: ``forest.png`` of ``python -m sgfd_fast.study --summary``, one contrast's mean
  paired difference and 95 % interval per study.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._cli import quiet_on_closed_stdout, refuse_empty
from .errors import ConfigError, SGFDError
from .records import read_metrics, read_results, read_run

__all__ = ["PlotUnavailable", "run_curves", "study_plots", "forest", "point_dirs", "main"]


class PlotUnavailable(SGFDError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed, so no PNG is drawn (pip install "
                              "'sgfd_fast[plot]')") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save through a temporary file and a rename: a reader (or a second study shard writing
    the same report) never sees half an image."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def point_dirs(run_dir) -> list[tuple[str, Path]]:
    """``(label, directory holding metrics.jsonl)`` of a run: itself, or each ``grid-<i>/``."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        return [(run_dir.name, run_dir)]
    grid = sorted(run_dir.glob("grid-*/metrics.jsonl"), key=lambda f: int(f.parent.name[5:]))
    if not grid:
        raise ConfigError(f"{run_dir} holds no metrics.jsonl (nor grid-*/metrics.jsonl); give "
                          f"the directory a training wrote")
    return [(f"{run_dir.name}/{f.parent.name}", f.parent) for f in grid]


def _curves(run_dirs: list[Path]) -> list[tuple[str, list[dict]]]:
    """``(label, metrics lines)`` per grid point of each run; labels are the run directories'
    names, with their parents' when the names collide (``plain/seed-1``, ``sgfd/seed-1``)."""
    names = [r.name for r in run_dirs]
    if len(set(names)) < len(names):
        names = ["/".join(r.resolve().parts[-2:]) for r in run_dirs]
    return [(name + label[len(r.name):], read_metrics(d))
            for r, name in zip(run_dirs, names) for label, d in point_dirs(r)]


def _valid_metric(run_dir: Path) -> str:
    for d in (run_dir, run_dir.parent):
        if (d / "run.json").exists():
            return read_run(d)["config"].get("valid_metric", "recall@20")
    return "recall@20"


def _series(lines, get):
    xs, ys = [], []
    for x in lines:
        y = get(x)
        if y is not None:
            xs.append(x["epoch"])
            ys.append(y)
    return xs, ys


def run_curves(run_dirs, path, *, metric: str | None = None) -> Path:
    """Draw the curves of ``run_dirs`` (see module doc) into the PNG ``path``.

    ``metric``: the validation metric to draw (default: the first run's ``valid_metric``).

    Raises:
        ConfigError: a directory holds no metrics.jsonl, or no run validated ``metric``;
        RunDirectoryError: a metrics.jsonl is damaged; PlotUnavailable: no matplotlib.
    """
    plt = _pyplot()
    run_dirs = [Path(d) for d in run_dirs]
    metric = metric or _valid_metric(run_dirs[0])
    curves = _curves(run_dirs)
    drawn = sorted({m for _, lines in curves for x in lines for m in x.get("valid", {})})
    if metric not in drawn:
        raise ConfigError(f"no run here validated {metric!r}; "
                          + (f"the metrics validated: {', '.join(drawn)}" if drawn else
                             "no epoch has been validated yet"))
    with_sgfd = any("grad_share" in x.get("sgfd", {}) for _, lines in curves for x in lines)
    n = 3 if with_sgfd else 2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    axes = axes[0]
    for label, lines in curves:
        axes[0].plot(*_series(lines, lambda x: x.get("valid", {}).get(metric)), marker=".",
                     label=label)
        axes[1].plot(*_series(lines, lambda x: x["losses"].get("loss")), label=label)
        if with_sgfd:
            axes[2].plot(*_series(lines, lambda x: x.get("sgfd", {}).get("grad_share")),
                         label=label)
    axes[0].set_ylabel(f"validation {metric}")
    axes[1].set_ylabel("training loss (epoch mean)")
    if with_sgfd:
        axes[2].set_ylabel("SGFD share of the student's gradient")
        shares = [x["sgfd"]["grad_share"] for _, lines in curves for x in lines
                  if x.get("sgfd", {}).get("grad_share") is not None]
        positive = [v for v in shares if v > 0]
        if positive and len(positive) == len(shares):  # shares span decades: 7e-5 .. 0.04
            axes[2].set_yscale("log")
        else:  # zeros (a control arm) need a linear stretch around 0, as wide as the data
            axes[2].set_yscale("symlog", linthresh=min(positive, default=1e-6))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(curves) <= 12:
        axes[0].legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def study_plots(summary: dict, out) -> list[Path]:
    """``bars.png`` and ``curves.png`` of a study summary into the study directory ``out``.

    Bars start at 0 (the report's table gives the differences); an arm without a finished run
    gets no bar but the words "no finished run", and a summary without any says so instead of
    drawing axes (either would otherwise look like a score of 0)."""
    plt = _pyplot()
    out = Path(out)
    arms = list(summary["arms"])
    keys = summary["metrics"]
    runs = summary["runs"]
    if not runs["finished"]:
        written = []
        for name in ("bars.png", "curves.png"):
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{summary['study']}: no finished runs yet (0 of {runs['total']})",
                    ha="center", va="center")
            written.append(out / name)
            _save(fig, written[-1])
            plt.close(fig)
        return written
    cols = min(len(keys), 2)
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * len(arms) * cols + 2, 3.5 * rows),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        stats = [summary["arms"][a]["metrics"][key] for a in arms]
        seeds = [[x[key] for x in summary["arms"][a]["per_seed"].values()] for a in arms]
        drawn = [i for i, m in enumerate(stats) if m["n"]]
        ax.bar(drawn, [stats[i]["mean"] for i in drawn],
               yerr=[stats[i]["std"] or 0.0 for i in drawn], capsize=4,
               color=["tab:gray" if arms[i] == summary["baseline"] else "tab:blue"
                      for i in drawn])
        for i, values in enumerate(seeds):
            ax.plot([i] * len(values), values, "k.", ms=4)
        top = max(max(stats[i]["mean"] + (stats[i]["std"] or 0.0) for i in drawn),
                  max(v for values in seeds for v in values))
        ax.set_ylim(0, 1.15 * top or 1.0)  # from 0: small differences must look small
        for i in set(range(len(arms))) - set(drawn):
            ax.text(i, 0.02 * ax.get_ylim()[1], "no finished run", rotation=90, ha="center",
                    va="bottom", fontsize="small", color="tab:gray")
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(key)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{summary['study']}: mean ± std over seeds (dots: seeds)")
    fig.tight_layout()
    written = [out / "bars.png"]
    _save(fig, written[0])
    plt.close(fig)

    metric = keys[0].split("/", 1)[1]
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(arms):
        for j, seed in enumerate(summary["arms"][arm]["per_seed"]):
            run = out / arm / f"seed-{seed}"
            point = (run / read_results(run)["checkpoint"]).parent
            lines = read_metrics(point)  # [] for results copied without their curves
            ax.plot(*_series(lines, lambda x: x.get("valid", {}).get(metric)),
                    color=colours[i % len(colours)], alpha=0.7, label=arm if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric} (selected grid point)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    written.append(out / "curves.png")
    _save(fig, written[1])
    plt.close(fig)
    return written


def forest(rows, path, *, xlabel: str, title: str) -> Path:
    """A forest plot into ``path``: one line per ``(label, mean, ci95, text)`` of ``rows``, top
    to bottom, the mean as a dot and its interval ``ci95 = [low, high]`` as a bar (None: the dot
    alone, n < 2), ``text`` written at the right, and a dashed line at 0 (no difference).

    Raises:
        PlotUnavailable: no matplotlib.
    """
    plt = _pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * max(n, 1)))
    ax.axvline(0.0, color="tab:gray", linestyle="--", linewidth=1)
    for i, (label, mean, ci95, text) in enumerate(rows):
        y = n - 1 - i
        if ci95 is not None:
            ax.plot(ci95, [y, y], color="tab:blue", linewidth=2)
        ax.plot([mean], [y], "o", color="tab:blue")
        ax.annotate(text, (1.01, y), xycoords=("axes fraction", "data"), va="center",
                    fontsize="small")
    ax.set_yticks(range(n), [label for label, *_ in reversed(rows)])
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=5))  # signed 4-digit labels overlap at 8+
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


@quiet_on_closed_stdout
def main(argv=None) -> int:
    """Entry point of ``python -m sgfd_fast.plot``."""
    p = argparse.ArgumentParser(
        prog="python -m sgfd_fast.plot",
        description="Draw runs' curves (validation metric, training loss, SGFD gradient share "
                    "per epoch, from metrics.jsonl) into one PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument("--out", metavar="PNG", default=None,
                   help="the image (a .png, .pdf or .svg file, or a directory to hold "
                        "curves.png; default RUN_DIR/curves.png for one run, else curves.png)")
    p.add_argument("--metric", default=None,
                   help="validation metric to draw, e.g. ndcg@20 (default the run's valid_metric)")
    args = p.parse_args(argv)
    try:
        refuse_empty(args, out="--out")
        if args.metric == "":
            raise ConfigError("--metric is empty; give a validated metric such as ndcg@20")
        for r in args.runs:
            if not Path(r).is_dir():
                raise ConfigError(f"{r} is not a directory; give run directories")
        out = Path(args.out) if args.out else \
            (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
        if out.is_dir():
            out = out / "curves.png"
        if out.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ConfigError(f"--out {out}: give a .png, .pdf or .svg file, or a directory")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {out}: {out.parent} "
                              + ("is not a directory" if out.parent.exists() else
                                 "does not exist"))
        try:
            run_curves(args.runs, out, metric=args.metric)
        except OSError as e:
            raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    except SGFDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
