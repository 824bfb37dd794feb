"""``python -m sgfd_fast.train``: train a (multimodal) recommender with or without SGFD.

Run ``python -m sgfd_fast.train --help`` for the options, the configuration layers and every key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ._cli import quiet_on_closed_stdout, refuse_empty
from .config import CONFIG_DIR, key_docs, load_config, parse_overrides
from .errors import SGFDError

__all__ = ["main", "build_parser"]

_DESCRIPTION = """\
Train a multimodal recommender, with SGFD (semantic-guided feature distillation) or without it.

With no arguments: BM3 + SGFD on the built-in real Amazon Office dataset (about 0.8 s per
epoch on one AMD EPYC core; early stopping ends it after about 40 epochs), then the test
recall@20 and ndcg@20 are printed.

Configuration layers (later ones win):
  1. sgfd_fast/configs/overall.yaml             shared keys (below)
  2. sgfd_fast/configs/dataset/<dataset>.yaml   data keys (default.yaml for --data-path)
  3. sgfd_fast/configs/model/<MODEL>.yaml       the model's own keys
  4. --config FILE ...                          your YAML files, in order
  5. key=value ...                              command-line overrides (YAML values: 0.01, true,
                                                [1,2]); never evaluated as code
A key that no default file defines is an error (with the closest known names); values keep
their default's type; a key given twice in a file or on the command line (also as --device and
device=), a number other than plain decimal (YAML 1.1 reads 010 as 8, 1_0 as 10) and a value
listed twice are errors. hyper_parameters=[k1,k2] turns list values of k1, k2 into a grid: every
combination is trained from the same seed, selected on the validation valid_metric, and the
test metrics of the selected point are reported (valid_metric, protocol, device and the data
keys cannot be grid keys). For several seeds, which are compared rather than selected, run a
study: python -m sgfd_fast.study --help.
"""

_EPILOG = """\
examples:
  python -m sgfd_fast.train                                   # BM3+SGFD on office
  python -m sgfd_fast.train sgfd=false                        # plain BM3, for comparison
  python -m sgfd_fast.train sgfd_loss=standard protocol=legacy
  python -m sgfd_fast.train hyper_parameters=[n_layers] n_layers=[1,2]
  python -m sgfd_fast.train -d toysgames-synthetic epochs=5
  python -m sgfd_fast.train -d scientific                     # the second real dataset
  python -m sgfd_fast.train --data-path data/Office --format sgfd --config my.yaml
  python -m sgfd_fast.train --data-path data/baby --format mmrec --labels baby_labels.tsv
  python -m sgfd_fast.train --resume runs/BM3-office-20250101-120000 epochs=80
  torchrun --standalone --nproc_per_node=4 -m sgfd_fast.train   # 4 GPUs (README: several GPUs or machines)

run directory (--out, default runs/<model>-<dataset>-<timestamp>, -2, -3, ... when taken; new,
or empty):
  train.log, metrics.jsonl (one line per epoch; with SGFD also "sgfd": the SGFD losses' share of
  the student's gradient and the teacher's/student's label accuracy), last.pt (resumable
  checkpoint), best.pt (the best epoch's model; grid-<i>/ per grid point), run.json (the config
  and a fingerprint of the data), results.json (best epoch, valid and test metrics, mean epoch
  and evaluation times, the resolved config), run.lock (one process per run directory; a second
  one is refused with the holder's pid).
  Config, data and device are checked before the directory is created, and the run's size
  (grid points, parameters, memory per point, disk) is logged; a run whose estimate exceeds the
  available memory or free disk is refused with it. A run that fails before its first last.pt
  removes what it created. Ctrl-C saves last.pt; --resume RUN_DIR continues
  exactly (only epochs, stopping_step, device, eval_batch_size may change then; epochs not below
  what was trained). --resume refuses data that differ from the recorded fingerprint (unless
  --allow-data-change, which continues on data of the same shape only), a record that is not
  what sgfd_fast wrote (run.json, results.json, metrics.jsonl, a last.pt or best.pt of another
  model, configuration or data shape) and a grid point with metrics but no last.pt, all before
  anything is written; a point with neither starts at epoch 1; a finished run reports its
  results and trains nothing.

shared keys (configs/overall.yaml):
"""


def _keys_help() -> str:
    lines = []
    for f in (CONFIG_DIR / "overall.yaml", CONFIG_DIR / "dataset" / "default.yaml"):
        for k, doc in key_docs(f).items():
            lines.append(f"  {k:<18} {doc}")
        if f.name == "overall.yaml":
            lines.append("\ndata keys (configs/dataset/*.yaml):")
    for f in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        lines.append(f"\n{f.stem} keys (configs/model/{f.name}):")
        lines += [f"  {k:<18} {doc}" for k, doc in key_docs(f).items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .data.registry import DATASETS, DEFAULT_DATASET, DEFAULT_FORMAT, FORMATS
    from .models import MODELS

    p = argparse.ArgumentParser(
        prog="python -m sgfd_fast.train", description=_DESCRIPTION,
        epilog=_EPILOG + _keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None,  # None: BM3, and --resume can tell it was given
                   help=f"the backbone: {', '.join(MODELS) or 'BM3'} (default BM3)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-d", "--dataset", default=None,
                     help=f"a built-in dataset: {', '.join(DATASETS)} (default "
                          f"{DEFAULT_DATASET}; python -m sgfd_fast.data inspect --help says "
                          f"what each is)")
    src.add_argument("--data-path", metavar="DIR", default=None,
                     help=f"a dataset directory in one of the formats {', '.join(FORMATS)} "
                          f"(see --format)")
    p.add_argument("--format", choices=tuple(FORMATS), default=None,
                   help=f"the format of --data-path (default {DEFAULT_FORMAT}): "
                        + "; ".join(f"{k}: {f.about}" for k, f in FORMATS.items()))
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="item category labels for --data-path (.npy of ints or TSV itemID<TAB>"
                        "label); required by MMRec datasets")
    p.add_argument("--config", metavar="FILE", nargs="+", action="extend", default=[],
                   help="YAML files applied after the package defaults, in order")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="configuration overrides, applied last")
    p.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="the run directory (default runs/<model>-<dataset>-<timestamp>, with "
                        "-2, -3, ... when that name is taken)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue although the data differ from those the run "
                        "was trained on (its run.json fingerprint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="auto (default: CUDA when available), cpu or cuda")
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _unknown(what: str, name: str, known, fix: str = "") -> SGFDError:
    """``unknown model 'bm3'; available: BM3, ... (did you mean 'BM3'?)``; case is ignored when
    looking for the closest name."""
    import difflib

    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return SGFDError(f"unknown {what} {name!r}; {fix or 'available: '}{', '.join(known)}"
                     + (f" (did you mean {by_lower[close[0]]!r}?)" if close else ""))


def _print_results(results: dict, run_dir: Path) -> None:
    test = results["test"]
    k = "20" if "recall@20" in test else results["valid_metric"].split("@")[1]
    sgfd = "+SGFD" if results["sgfd"] else ""
    print(f"{results['model']}{sgfd} on {results['dataset']} ({results['protocol']} protocol, "
          f"best epoch {results['best_epoch']} of {results['epochs_trained']}):")
    if "grid" in results:
        i = results["selected_point"]
        params = results["grid"][i]["params"]
        print(f"  selected grid point {i + 1}/{len(results['grid'])}: "
              + ", ".join(f"{k}={v}" for k, v in params.items()))
    for name in (f"recall@{k}", f"ndcg@{k}"):
        if name in test:
            print(f"  test {name:<10} {test[name]:.4f}")
    print(f"  run directory: {run_dir}")


@quiet_on_closed_stdout
def main(argv=None) -> int:
    """Entry point of ``python -m sgfd_fast.train`` and ``sgfd-fast-train``."""
    import warnings

    from . import training

    warnings.showwarning = _show_warning  # one line per DataWarning, as the data CLI prints them
    try:
        # intermixed: key=value overrides may come before, between or after the options
        args = build_parser().parse_intermixed_args(argv)
        # --config takes several files, so it swallows overrides written after it: move them
        files = [f for f in args.config if "=" not in f or Path(f).exists()]
        items = [f for f in args.config if f not in files] + list(args.overrides)
        args.config = files
        refuse_empty(args, out="--out", resume="--resume", data_path="--data-path",
                     labels="--labels")
        device = {"device": f"--device {args.device}"} if args.device else {}
        overrides = parse_overrides(items, device)
        if args.device:
            overrides.append(("device", args.device))
        if args.resume:
            given = [opt for opt, v in (("-m", args.model), ("-d", args.dataset),
                                        ("--data-path", args.data_path),
                                        ("--format", args.format), ("--labels", args.labels),
                                        ("--config", args.config), ("--out", args.out)) if v]
            if given:
                raise SGFDError(f"--resume continues a run as it was configured, so "
                                f"{', '.join(given)} cannot be given; it takes only key=value "
                                f"overrides of epochs, stopping_step, eval_batch_size and "
                                f"--device")
            run_dir = Path(args.resume)
            # under torchrun the process group needs the run's dist_* keys before resuming
            values = training.read_checked_run(run_dir)["config"] \
                if (run_dir / "run.json").exists() else {}
            with _process_group(values, args.device):
                results = training.resume(run_dir, overrides,
                                          allow_data_change=args.allow_data_change)
        else:
            if args.allow_data_change:
                raise SGFDError("--allow-data-change applies to --resume only")
            if args.data_path is None and (args.format or args.labels):
                raise SGFDError("--format and --labels describe a --data-path directory; "
                                "built-in datasets (-d) bring their own")
            from .data.registry import DATASETS, DEFAULT_DATASET, DEFAULT_FORMAT
            from .models import MODELS

            args.model = args.model or "BM3"
            if args.model not in MODELS:
                raise _unknown("model", args.model, list(MODELS))
            if args.data_path is not None:
                data = {"path": args.data_path, "format": args.format or DEFAULT_FORMAT,
                        "labels": args.labels}
                name = Path(args.data_path).resolve().name
                cfg = load_config(args.model, None, args.config, overrides)
            else:
                name = args.dataset or DEFAULT_DATASET
                if name not in DATASETS:
                    raise _unknown("dataset", name, list(DATASETS),
                                   "use --data-path DIR for your own; built-in datasets are ")
                data = {"name": name}
                cfg = load_config(args.model, name, args.config, overrides)
            run_dir = Path(args.out) if args.out else \
                Path("runs") / f"{args.model}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            with _process_group(cfg.values, args.device):
                from .training import distributed

                run_dir = distributed.broadcast_object(run_dir)  # rank 0's timestamp
                results = training.train(args.model, cfg, run_dir=run_dir, data=data,
                                         unique_name=not args.out)
                run_dir = Path(results["run_dir"])
    except SGFDError as e:
        rank = os.environ.get("RANK", "0")
        print(f"error: {e}" if rank == "0" else f"error: [rank {rank}] {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the run logged how to resume
        from .training import Terminated

        return 143 if isinstance(e, Terminated) else 130
    if os.environ.get("RANK", "0") == "0":
        _print_results(results, run_dir)
    return 0


def _process_group(values: dict, device: str | None):
    """Under torchrun, the torch.distributed group for the run's ``dist_*`` keys (a no-op
    context otherwise: a plain run never imports torch.distributed)."""
    from .training import distributed

    return distributed.process_group(values.get("dist_backend", "auto"),
                                     values.get("dist_timeout", 600),
                                     device or values.get("device", "auto"))


if __name__ == "__main__":
    sys.exit(main())
