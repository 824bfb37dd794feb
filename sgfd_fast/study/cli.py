"""The command line ``python -m sgfd_fast.study``: run a spec, ``--report``, ``--list`` and
``--summary`` (one view across finished studies)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from .._cli import quiet_on_closed_stdout, refuse_empty, show_warning
from ..config import parse_overrides
from ..errors import ConfigError, SGFDError
from .report import other_epochs_note
from .run import run_study
from .spec import SPEC_FORMAT, change_in_spec, find_spec, load_spec, shipped_specs
from .stats import require_scipy
from .summary import DEFAULT_CONTRAST, DEFAULT_METRIC, summarise_studies, write_summary

__all__ = ["main", "build_parser"]

#: ``python -m sgfd_fast.train``'s options that choose what is trained; a study's spec has these
#: keys instead. They are parsed (hidden) only to refuse them with that advice, not argparse's
#: bare "unrecognized arguments".
_TRAIN_OPTIONS = {"model": ("-m", "--model"), "dataset": ("-d", "--dataset"),
                  "data_path": ("--data-path",), "format": ("--format",),
                  "labels": ("--labels",)}


def _list() -> None:
    for name, path in shipped_specs().items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        n = len(raw.get("arms") or {}) * len(raw.get("seeds") or [])
        about = raw.get("description") or f"{raw.get('model')} on {raw.get('dataset')}"
        print(f"{name:<22} {n} runs: {about}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sgfd_fast.study",
        description="Train every arm x seed of a study spec and compare the arms with the\n"
                    "baseline (mean ± std, paired differences with 95% CIs, Wilcoxon p).",
        epilog="examples:\n  python -m sgfd_fast.study --list\n"
               "  python -m sgfd_fast.study office-bm3                # runs/study-office-bm3\n"
               "  python -m sgfd_fast.study my_spec.yaml --out runs/mine --shard 1/2\n"
               "  python -m sgfd_fast.study office-bm3 --seeds 1,2 --epochs 5 --out runs/try\n"
               "  python -m sgfd_fast.study --summary runs/study-office-bm3 runs/study-office-grcn \\\n"
               "      --out runs/summary\n"
               "A rerun of the same command skips finished runs and resumes unfinished ones.\n\n"
               + SPEC_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="a shipped spec's name (see --list) or a spec file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied to every arm, after the spec's (parsed as "
                        "YAML, as train's)")
    p.add_argument("--seeds", metavar="S,T",
                   help="train these seeds instead of the spec's, e.g. --seeds 1,2")
    p.add_argument("--epochs", metavar="N", help="epochs=N for every arm (the same as epochs=N)")
    p.add_argument("--out", metavar="DIR", help="the study directory (default runs/study-<name>)")
    p.add_argument("--shard", metavar="I/N", default="1/1",
                   help="train only the I-th of every N runs (N independent processes)")
    p.add_argument("--arms", metavar="A,B",
                   help="train only these arms (the report covers every finished run)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="override the device key of every run")
    p.add_argument("--report", action="store_true",
                   help="train nothing; write the report of the finished runs")
    p.add_argument("--list", action="store_true", help="list the shipped specs and exit")
    for key, flags in _TRAIN_OPTIONS.items():  # nargs="?": a bare -d is refused the same way
        p.add_argument(*flags, dest=f"train_{key}", nargs="?", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    g = p.add_argument_group(
        "one view across finished studies",
        "--summary DIR...: train nothing; read each study's study.json and write one table\n"
        "(summary.md, summary.json) and one forest plot (forest.png) of --contrast on --metric,\n"
        "one row per backbone x dataset, with the paired 95 % intervals of the studies' own\n"
        "reports, into --out (default runs/summary)")
    g.add_argument("--summary", nargs="*", metavar="DIR", default=None,
                   help="study directories (each a study's --out)")
    g.add_argument("--contrast", metavar="NAME", default=None,
                   help=f"a contrast the studies' specs name (e.g. distillation) or "
                        f"ARM-REFERENCE (default {DEFAULT_CONTRAST})")
    g.add_argument("--metric", metavar="M", default=None,
                   help=f"a metric the studies report, on the test split (valid/M: validation; "
                        f"default {DEFAULT_METRIC})")
    return p


def _summary(args) -> int:
    """``--summary``: refuse the options of a study run, then summarise and write."""
    given = [opt for opt, v in (("a spec", args.spec), ("key=value", args.overrides),
                                ("--seeds", args.seeds), ("--epochs", args.epochs),
                                ("--shard", args.shard != "1/1"), ("--arms", args.arms),
                                ("--device", args.device), ("--report", args.report),
                                ("--list", args.list)) if v]
    # argparse gives --summary every word after it: a key=value there is an override too
    given += [a for a in args.summary if "=" in a and not Path(a).expanduser().exists()]
    if given:
        raise ConfigError(f"--summary reads finished studies and trains nothing, so "
                          f"{', '.join(given)} cannot be given with it")
    refuse_empty(args, out="--out")
    require_scipy()
    table = summarise_studies(args.summary, contrast=args.contrast or DEFAULT_CONTRAST,
                              metric=DEFAULT_METRIC if args.metric is None else args.metric)
    out = Path(args.out).expanduser() if args.out else Path("runs") / "summary"
    # any study's directory, summarised here or not, holds only what its study writes
    for d in (out.resolve(), *out.resolve().parents):
        if (d / "study.json").is_file():
            raise ConfigError(f"--out {out} lies in the study directory {d}, which holds only "
                              f"what its study writes; give another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    write_summary(table, out)
    n = len(table["rows"])
    print(f"{n} stud{'y' if n == 1 else 'ies'}, {table['contrast']} on {table['metric']}: "
          f"{out / 'summary.md'}")
    return 0


def _refuse_train_options(args) -> None:
    """``-d X``, ``--model=Y``, ...: train's options; a study's spec says what it trains."""
    for key, flags in _TRAIN_OPTIONS.items():
        if hasattr(args, f"train_{key}"):
            try:
                where = f" ({find_spec(args.spec)})" if args.spec else ""
            except ConfigError:  # a misspelt spec: this advice first, its own error next
                where = ""
            raise ConfigError(f"{'/'.join(flags)} is an option of python -m sgfd_fast.train; "
                              f"a study's {key} is a key of its spec{where}: "
                              f"{change_in_spec(key)}")


def _parse_seeds(text: str) -> list[int]:
    parts = [x.strip() for x in text.split(",")]
    if not all(x.isascii() and x.isdigit() for x in parts):
        raise ConfigError(f"--seeds {text!r} must be comma-separated non-negative ints, e.g. "
                          f"--seeds 1,2")
    return [int(x) for x in parts]


def _parse_shard(text: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)/(\d+)$", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4")
    return int(m.group(1)), int(m.group(2))


@quiet_on_closed_stdout
def main(argv=None) -> int:
    """Entry point of ``python -m sgfd_fast.study``."""
    import warnings

    # intermixed: key=value overrides may come before, between or after the options
    args = build_parser().parse_intermixed_args(argv)
    warnings.showwarning = show_warning  # a data warning is one line, as train prints it
    out = None
    try:
        _refuse_train_options(args)
        if args.list and args.summary is None:
            _list()
            return 0
        if args.summary is not None:
            return _summary(args)
        if args.contrast is not None or args.metric is not None:
            raise ConfigError("--contrast and --metric choose what --summary shows; a study "
                              "reports every arm and metric of its spec")
        if not args.spec:
            raise ConfigError("give a study spec (a name from --list, or a YAML file)")
        refuse_empty(args, out="--out")
        shard = _parse_shard(args.shard)
        seeds = None if args.seeds is None else _parse_seeds(args.seeds)
        options = {k: f"--{k} {v}" for k, v in (("epochs", args.epochs),
                                                  ("device", args.device)) if v}
        overrides = dict(parse_overrides(args.overrides, options)
                         + parse_overrides([f"epochs={args.epochs}"] if args.epochs else []))
        spec = load_spec(find_spec(args.spec), seeds=seeds, overrides=overrides)
        require_scipy()  # the statistics need it: fail before hours of training, not after
        out = Path(args.out).expanduser() if args.out else Path("runs") / f"study-{spec.name}"
        arms = None if args.arms is None else [a.strip() for a in args.arms.split(",")
                                               if a.strip()]
        if arms == []:
            raise ConfigError("--arms is empty; give arm names, e.g. --arms plain,sgfd")
        if arms and len(set(arms)) != len(arms):
            twice = next(a for a in arms if arms.count(a) > 1)
            raise ConfigError(f"--arms {args.arms} lists the arm {twice!r} twice; list each "
                              f"arm once")
        summary = run_study(spec, out, shard=shard, arms=arms, device=args.device,
                            report_only=args.report)
    except SGFDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from ..training import Terminated

        print(f"interrupted; rerun the same command to continue (finished runs are kept, the "
              f"interrupted one resumes from its last.pt){f' in {out}' if out else ''}",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    runs = summary["runs"]
    print(f"{runs['finished']}/{runs['total']} runs finished"
          + (f", {len(runs['failed'])} failed" if runs["failed"] else "")
          + f", {runs['at_epoch_cap']} at the epoch cap; report: {out / 'study.md'}")
    if runs.get("finished_with_other_epochs"):
        print(f"note: {other_epochs_note(runs['finished_with_other_epochs'])}")
    return 1 if runs["failed"] else 0
