"""Where a BM3+SGFD training step's cost goes as the data grow: a few steps per size, one thread.

For each size of ``bench_scale.py``'s SYNTHETIC series (generated from ``--seed``; nothing in it
is real) this builds BM3+SGFD with the default config and Adam as the trainer does, runs
``--steps`` training steps (the trainer's first batches of epoch 0; ``--warmup`` more before them
are not counted) and reports per step, from ``resource.getrusage`` around each phase:

* minor page faults and user / system CPU seconds of the forward (``calculate_loss``), the
  backward and Adam's step;
* the CPU seconds of the components, each timed alone on the last batch (``time.thread_time``,
  mean of ``--steps`` calls): Adam over every parameter (first, while they all have their
  gradients), the step's whole-graph part (BM3's encoder ``_Encode``, forward and backward: the
  propagation twice, the residual, the norms and their gradients), one propagation (``out=`` a
  reused buffer), the gather of the batch's 4096-d feature rows, and evaluation's scoring of
  ``--eval-users`` users against all items (``ops.masked_topk``; an evaluation costs that times
  ``n_users / eval_users``).

With several sizes it adds the growth exponent of each quantity between consecutive sizes,
``log(cost ratio) / log(size ratio)``, size = training interactions (the graph's edges, which
grow like users here). CPU seconds, not wall time: the machine may be shared.

    OMP_NUM_THREADS=1 python bench/step_cost.py --sizes toys,sports,100k --steps 8
    OMP_NUM_THREADS=1 python bench/step_cost.py --sizes smoke --steps 2     # does it run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_scale import SIZES, synthetic  # noqa: E402


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_utime, r.ru_stime


def _delta(a, b):
    return {"minflt": b[0] - a[0], "user_s": b[1] - a[1], "sys_s": b[2] - a[2]}


def _cpu(fn, repeat: int) -> float:
    t = time.thread_time()
    for _ in range(repeat):
        fn()
    return (time.thread_time() - t) / repeat


def run_size(name: str, seed: int, steps: int, warmup: int, eval_users: int,
             n_layers: int | None = None) -> dict:
    from sgfd_fast import ops
    from sgfd_fast.config import load_config
    from sgfd_fast.models import build_model
    from sgfd_fast.models.base import step_key
    from sgfd_fast.models.bm3 import _Encode
    from sgfd_fast.training.runtime import seed_everything

    n_users, n_items = SIZES[name]
    widths = (64, 16) if name == "smoke" else (4096, 384)
    data = synthetic(n_users, n_items, seed, widths)
    config = load_config("BM3", None, overrides=[] if n_layers is None else
                         [("n_layers", n_layers)]).points()[0]
    seed_everything(config["seed"])
    model = build_model("BM3", data, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config["learning_rate"],
                           weight_decay=config["weight_decay"], fused=True)
    pairs = torch.as_tensor(data.train, dtype=torch.long)
    bs = config["train_batch_size"]
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(1))
    phases = {k: {"minflt": 0, "user_s": 0.0, "sys_s": 0.0}
              for k in ("forward", "backward", "adam")}
    losses = []
    n_batches = -(-len(pairs) // bs)
    for b in range(warmup + steps):
        idx = perm[b % n_batches * bs:(b % n_batches + 1) * bs]
        users, items = pairs[idx, 0], pairs[idx, 1]
        opt.zero_grad(set_to_none=True)
        model.begin_step(step_key(config["seed"], 0, b))
        u0 = _usage()
        parts = model.calculate_loss(users, items)
        u1 = _usage()
        parts["loss"].backward()
        u2 = _usage()
        opt.step()
        u3 = _usage()
        losses.append(float(parts["loss"].detach()))
        if b >= warmup:
            for k, (x, y) in zip(phases, ((u0, u1), (u1, u2), (u2, u3))):
                for f, v in _delta(x, y).items():
                    phases[k][f] += v / steps
    del parts
    # the components alone, on the last batch
    graph = model.graph
    weights = [model.user_embedding.weight, model.item_embedding.weight]
    ego = torch.cat(weights).detach()
    out = torch.empty_like(ego)
    uniq_u, uniq_i = torch.unique(users), torch.unique(items)

    def encoder():  # the step's whole-graph part: BM3's encoder forward and backward
        u, i, nu, ni = _Encode.apply(*weights, uniq_u, uniq_i, model)
        torch.autograd.backward([u, i, nu, ni], [torch.ones_like(u), torch.ones_like(i),
                                                  torch.ones_like(nu), torch.ones_like(ni)])
        for w in weights:
            w.grad = None

    with torch.no_grad():
        emb_u, emb_i = model.ranking_embeddings()
    ev_users = torch.arange(min(eval_users, n_users))
    mask_rowptr = torch.zeros(ev_users.numel() + 1, dtype=torch.long)
    mask_col = torch.zeros(0, dtype=torch.long)
    comp = {"adam_s": _cpu(opt.step, steps)}  # first: every parameter still has its .grad
    encoder()
    comp |= {
        "encoder_s": _cpu(encoder, steps),
        "propagate_s": _cpu(lambda: graph.propagate(ego, model.n_layers, out=out), steps),
        "feature_gather_s": _cpu(lambda: model.features.rows(0, uniq_i), steps),
        "eval_users_s": _cpu(lambda: ops.masked_topk(emb_u[ev_users], emb_i, mask_rowptr,
                                                     mask_col, 50, None, validate=False), 1),
    }
    n_embedding = sum(w.numel() for w in weights)
    return {"size": name, "users": n_users, "items": n_items, "train": int(len(pairs)),
            "nnz": int(graph.col.numel()), "batch_items": int(uniq_i.numel()),
            "embedding_params": n_embedding, "params": sum(p.numel() for p in params),
            "eval_users": int(ev_users.numel()), "phases": phases, "components": comp,
            "losses": losses}


def _flat(r: dict) -> dict:
    out = {f"{k}_{f}": v for k, p in r["phases"].items() for f, v in p.items()}
    return {**out, **r["components"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="toys,sports")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--eval-users", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--n-layers", type=int, help="BM3's n_layers (default: the package's, 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"# load average before: {os.getloadavg()}; SYNTHETIC data, seed {args.seed}")
    rows = []
    for name in args.sizes.split(","):
        r = run_size(name, args.seed, args.steps, args.warmup, args.eval_users, args.n_layers)
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
    keys = list(_flat(rows[0]))
    header = ["quantity per step", *(f"{r['users']} x {r['items']}" for r in rows),
              *(f"exponent {a['size']}->{b['size']}" for a, b in zip(rows, rows[1:]))]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for k in keys:
        vals = [_flat(r)[k] for r in rows]
        # no exponent between equal sizes (--sizes smoke,smoke) or from a zero cost
        exps = [math.log(b / a) / math.log(rb["train"] / ra["train"])
                if a > 0 and b > 0 and ra["train"] != rb["train"] else float("nan")
                for a, b, ra, rb in zip(vals, vals[1:], rows, rows[1:])]
        print("| " + " | ".join([k, *(f"{v:.4g}" for v in vals), *(f"{e:.2f}" for e in exps)])
              + " |")
    print(f"# load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
