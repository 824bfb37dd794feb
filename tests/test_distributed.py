"""Training on several processes (torch.distributed, gloo on CPU, launched by torchrun on
localhost): 2 processes give the 1-process numbers, resume across world sizes, a dead rank ends
the job, grid_parallel selects as the serial grid; plus the in-process pieces (shard exactness of
every model's loss, metric sums, no process group in a plain run)."""

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sgfd_fast
from sgfd_fast.config import load_config
from sgfd_fast.data import write_sgfd
from sgfd_fast.errors import ConfigError
from sgfd_fast.evaluation import evaluate
from sgfd_fast.models import MODELS, build_model
from sgfd_fast.train import main
from sgfd_fast.training import distributed
from sgfd_fast.training.distributed import shard_bounds
from sgfd_fast.training.runtime import usable_cores
from test_trainer import tiny_dataset

BASE = ["--device", "cpu", "epochs=2", "train_batch_size=64", "embedding_size=16",
        "topk=[10,20]"]  # the tiny data have 40 items
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(sgfd_fast.__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_sgfd(tiny_dataset(n_users=60, n_items=40),
                      tmp_path_factory.mktemp("data") / "tiny")


def torchrun(*args, env=None, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sgfd_fast.train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**ENV, **(env or {})})


def one_process(*args):
    assert main(list(map(str, args))) == 0


def epochs(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(x["epoch"], x["losses"], x.get("valid")) for x in lines]


def assert_same_run(a, b):
    ea, eb = epochs(a), epochs(b)
    assert [e[0] for e in ea] == [e[0] for e in eb]
    for (_, la, va), (_, lb, vb) in zip(ea, eb):
        assert list(la) == list(lb)
        for k in la:
            assert lb[k] == pytest.approx(la[k], rel=1e-5, abs=1e-7), k
        for k in va:
            assert vb[k] == pytest.approx(va[k], abs=1e-4), k
    ra, rb = (json.loads((Path(d) / "results.json").read_text()) for d in (a, b))
    assert ra["best_epoch"] == rb["best_epoch"]
    for k in ra["test"]:
        assert rb["test"][k] == pytest.approx(ra["test"][k], abs=1e-4), k


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """BM3+SGFD, 2 epochs: one process, two processes, and each resumed from epoch 1 with the
    other world size."""
    root = tmp_path_factory.mktemp("runs")
    data = ["--data-path", data_dir]
    one_process(*data, *BASE, "--out", root / "one")
    p = torchrun(*data, *BASE, "--out", root / "two")
    assert p.returncode == 0, p.stderr[-3000:]
    one_process(*data, *BASE[:2], "epochs=1", *BASE[3:], "--out", root / "one_then_two")
    p = torchrun("--resume", root / "one_then_two", "epochs=2")
    assert p.returncode == 0, p.stderr[-3000:]
    p = torchrun(*data, *BASE[:2], "epochs=1", *BASE[3:], "--out", root / "two_then_one")
    assert p.returncode == 0, p.stderr[-3000:]
    one_process("--resume", root / "two_then_one", "epochs=2")
    return root


def test_two_processes_equal_one(runs):
    assert_same_run(runs / "one", runs / "two")
    # rank 0 alone wrote the run directory: the same files as one process, no leftovers
    assert sorted(p.name for p in (runs / "two").iterdir()) == \
        sorted(p.name for p in (runs / "one").iterdir())
    res = json.loads((runs / "two" / "results.json").read_text())
    assert res["world_size"] == 2 and res["dist_backend"] == "gloo"
    assert res["world_sizes"] == [2]
    log = (runs / "two" / "train.log").read_text()
    assert "device cpu, 2 processes (gloo), run directory" in log.splitlines()[0]
    # two CPU processes on one machine: the log says that threads use the cores better
    assert "2 processes on this machine's CPU split each step (1 thread each): one process " \
        "using the machine's cores as threads (python -m sgfd_fast.train, " \
        f"OMP_NUM_THREADS={usable_cores()})" in log


@pytest.mark.parametrize("name", ["one_then_two", "two_then_one"])
def test_resume_with_another_world_size(runs, name):
    assert_same_run(runs / "one", runs / name)
    res = json.loads((runs / name / "results.json").read_text())
    assert res["world_sizes"] == [1, 2] and res["world_size"] == (2 if name == "one_then_two" else 1)


def test_a_last_batch_smaller_than_the_world(tmp_path):
    """300 pairs in batches of 299 and a 70-d feature (a two-layer teacher, whose first layer
    each process keeps local to its rows): the epoch's last batch (1 row) runs unsplit, the
    local rows made whole before it; the run equals one process, and SGFD's diagnostics, which
    rank 0 computes on its share, come from the batch before (rank 0 holds no row of the last)."""
    ds = tiny_dataset(n_users=60, n_items=40)
    ds.features["image"] = np.random.default_rng(3).standard_normal((40, 70)).astype(np.float32)
    data = write_sgfd(ds, tmp_path / "data")
    args = ["--data-path", data, *BASE[:2], "epochs=1",
            f"train_batch_size={ds.train.shape[0] - 1}", "embedding_size=16", "topk=[10,20]"]
    one_process(*args, "--out", tmp_path / "one")
    p = torchrun(*args, "--out", tmp_path / "two")
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    for d in ("one", "two"):
        line = json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1])
        assert "grad_share" in line["sgfd"], d


def test_two_processes_equal_one_grcn(data_dir, tmp_path):
    """GRCN (its students, routing, attention and EGCN split between the ranks) trains on 2
    processes as on one."""
    args = ["-m", "GRCN", "--data-path", data_dir, *BASE]
    one_process(*args, "--out", tmp_path / "one")
    p = torchrun(*args, "--out", tmp_path / "two")
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")


def two_nodes(*args, port, timeout=240):
    """torchrun as on two machines of one process each: two launches with ``--nnodes=2`` and
    their ``--node_rank``, meeting at a static rendezvous on 127.0.0.1:port (the multi-node
    command of README's scale-out section)."""
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
         "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "sgfd_fast.train", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for node in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout) for p in launches]
    finally:
        for p in launches:  # a launch left waiting for its peer
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(launches, outs):
        assert p.returncode == 0, err[-3000:]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_and_resume_as_one(runs, data_dir, tmp_path):
    """Two "nodes" (two torchrun launches, --nnodes=2, rendezvous on localhost) train as one
    process does, and resume from epoch 1 to the same end."""
    data = ["--data-path", data_dir]
    two_nodes(*data, *BASE, "--out", tmp_path / "nodes", port=free_port())
    assert_same_run(runs / "one", tmp_path / "nodes")
    res = json.loads((tmp_path / "nodes" / "results.json").read_text())
    assert res["world_size"] == 2
    # one process per "machine": nothing to say about threads
    assert "processes on this machine's CPU" not in (tmp_path / "nodes" / "train.log").read_text()
    two_nodes(*data, *BASE[:2], "epochs=1", *BASE[3:], "--out", tmp_path / "resumed",
              port=free_port())
    two_nodes("--resume", tmp_path / "resumed", "epochs=2", port=free_port())
    assert_same_run(runs / "one", tmp_path / "resumed")


@pytest.mark.parametrize("case", ["not empty", "below a file", "no run", "in use"])
def test_a_refused_run_directory_is_one_error_on_every_rank(case, runs, data_dir, tmp_path):
    """A run directory that rank 0 alone creates or locks, refused: every rank exits with rank
    0's message (the others had lost their connection to it: a gloo traceback; or, for a path
    without run.json, said to restore it)."""
    from sgfd_fast.training.rundir import RunDirectory

    new = ["--data-path", data_dir, *BASE]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("")
    args, match = {
        "not empty": ([*new, "--out", tmp_path / "full"], "is not empty (notes.txt)"),
        "below a file": ([*new, "--out", tmp_path / "file" / "run"], "file is a file"),
        "no run": (["--resume", tmp_path / "full"], "full is not a run directory"),
        "in use": (["--resume", runs / "one"], "is in use by another training process"),
    }[case]
    held = RunDirectory.open(runs / "one") if case == "in use" else None
    try:
        p = torchrun(*args)
    finally:
        if held is not None:
            held.close()
    assert p.returncode != 0
    # rank 0's message on both ranks (their stderr lines may interleave), no rank's traceback
    assert p.stderr.count(match) == 2 and "error: [rank 1] " in p.stderr, p.stderr[-3000:]
    assert "[rank1]:" not in p.stderr and "[rank0]:" not in p.stderr, p.stderr[-3000:]
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "file").read_text()


def test_a_dead_rank_ends_every_process(data_dir, tmp_path):
    start = time.monotonic()
    p = torchrun("--data-path", data_dir, *BASE, "dist_timeout=30", "--out", tmp_path / "r",
                 env={distributed.FAIL_ENV: "1:2"}, timeout=120)
    assert p.returncode != 0
    assert time.monotonic() - start < 90, "the surviving rank waited past dist_timeout"
    assert not (tmp_path / "r" / "results.json").exists()


# Run under torchrun: the trainer, with the gloo threads (c10d's "pt_gloo_runloop", gloo's
# "gloo_tcp_loop") listed just before and just after destroy_process_group().
_GLOO_THREADS_SCRIPT = """\
import os, sys
import torch.distributed as dist
from sgfd_fast.train import main

def gloo_threads():
    names = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    return sorted(n for n in names if "gloo" in n)

seen = {}
destroy = dist.destroy_process_group
def watched(group=None):
    seen["before"] = gloo_threads()
    destroy(group)
    seen["after"] = gloo_threads()
dist.destroy_process_group = watched
rc = main(sys.argv[1:])
assert seen["before"], "no gloo thread found to watch"
assert not seen["after"], f"the process group outlived destroy_process_group: {seen['after']}"
sys.exit(rc)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads in /proc")
def test_a_finished_run_frees_its_process_group_and_exits_0(data_dir, tmp_path):
    """destroy_process_group() frees the group, so no gloo thread is left for interpreter
    shutdown to tear down: a gloo group alive at exit aborted a finished run now and then
    ("terminate called without an active exception", exit 1). The group was kept alive by
    torch.distributed.nn.functional's defaults (group=group.WORLD, bound when the first Adam
    imports it inside the group), then by ZeroRedundancyOptimizer's module (its
    _broadcast_object, imported by sharded_adam); the thread check fails on every run while
    that holds, the exit status only sometimes. Three processes, twice."""
    script = tmp_path / "watch.py"
    script.write_text(_GLOO_THREADS_SCRIPT)
    for i in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=3", str(script), "--data-path", str(data_dir), *BASE,
               "--out", str(tmp_path / f"r{i}")]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "terminate called" not in p.stderr
        assert (tmp_path / f"r{i}" / "results.json").exists()


def test_grid_parallel_selects_as_the_serial_grid(data_dir, tmp_path):
    grid = ["hyper_parameters=[n_layers]", "n_layers=[0,1,2]", "epochs=1"]
    base = BASE[:2] + BASE[3:]  # without its epochs: a key is given once on a command line
    one_process("--data-path", data_dir, *base, *grid, "--out", tmp_path / "serial")
    p = torchrun("--data-path", data_dir, *base, *grid, "grid_parallel=true",
                 "--out", tmp_path / "parallel")
    assert p.returncode == 0, p.stderr[-3000:]
    serial, parallel = (json.loads((tmp_path / d / "results.json").read_text())
                        for d in ("serial", "parallel"))
    assert parallel["selected_point"] == serial["selected_point"]
    assert parallel["grid"] == serial["grid"]     # each point trained alone: the same numbers
    assert parallel["test"] == serial["test"]
    # whole points per process, nothing split: the threads note does not apply
    assert "processes on this machine's CPU" not in (tmp_path / "parallel" / "train.log").read_text()
    for i in range(3):   # point 1 was trained and written by rank 1
        assert epochs(tmp_path / "parallel" / f"grid-{i}") == \
            epochs(tmp_path / "serial" / f"grid-{i}")


# --- in-process pieces ------------------------------------------------------------------------


def sharded_gradients(model, users, items, neg, world):
    """Parameter gradients of ``model``'s loss on the batch split into ``world`` shards as the
    trainer splits it (``begin_step`` with the shard's fraction and the global batch; each shard's
    loss scaled by its fraction, the gradients summed)."""
    model.zero_grad(set_to_none=True)
    n = users.numel()
    for lo, hi in (shard_bounds(n, r, world) for r in range(world)):
        fraction = (hi - lo) / n
        model.begin_step(12345, fraction, (users, items, neg) if world > 1 else None)
        sl = slice(lo, hi)
        loss = model.calculate_loss(users[sl], items[sl], neg[sl] if neg is not None else None)
        (loss["loss"] * fraction).backward()
    model.begin_step(0)
    return {k: p.grad.clone() if p.grad is not None else None
            for k, p in model.named_parameters()}


def assert_shards_add_up(model, users, items, neg, world=3):
    """The sharded gradients equal the whole batch's (what summing gradients over ranks relies
    on), for a float64 ``model``."""
    whole = sharded_gradients(model, users, items, neg, 1)
    split = sharded_gradients(model, users, items, neg, world)
    assert any(g is not None and g.abs().max() > 0 for g in whole.values())
    for k, g in whole.items():
        if g is None:
            assert split[k] is None, k
        else:
            assert torch.allclose(split[k], g, rtol=1e-9, atol=1e-12), k


@pytest.mark.parametrize("name", list(MODELS))
def test_sharded_losses_add_up_to_the_batch_gradient(name):
    """Each model's loss on W shards, scaled by the shard fractions, has the gradient of the
    whole batch's loss (what summing gradients over ranks relies on)."""
    ds = tiny_dataset(n_users=12, n_items=10)
    ds.features["text"] = ds.features["image"][:, ::-1].copy()  # MGCN needs two modalities
    cfg = load_config(name, None, overrides=["embedding_size=8", "dropout=0.5"]
                      if name == "BM3" else ["embedding_size=8"]).values
    torch.manual_seed(0)
    model = build_model(name, ds, cfg).double()
    users, items = (torch.from_numpy(ds.train[:, c].copy()) for c in (0, 1))
    neg = torch.randint(ds.n_items, (users.numel(), model.n_negatives), generator=torch.Generator()
                        .manual_seed(0)) if model.n_negatives else None
    assert_shards_add_up(model, users, items, neg)


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_shards_add_up_to_bf16_rounding(name):
    """Under precision=bf16 each shard's dense weight gradient is a bf16 product, rounded before
    the shards are added (README, "Several GPUs or machines"): the sharded gradients equal the
    whole batch's to bf16 rounding (measured up to 1.6 % of a parameter's largest entry, MAML's
    attention), far from what a lost or doubled shard gives (about 50 %)."""
    knn = ["knn_k=3"] if name in ("FREEDOM", "LATTICE", "MGCN") else []
    cfg = load_config(name, None, overrides=["embedding_size=8", "precision=bf16", *knn]).values
    torch.manual_seed(0)
    model = build_model(name, split_dataset(), cfg)
    model.begin_epoch(0, 777)
    whole = sharded_gradients(model, *split_batch(model), 1)
    split = sharded_gradients(model, *split_batch(model), 2)
    for k, g in whole.items():
        if g is None:
            assert split[k] is None, k
        else:
            assert (split[k] - g).abs().max() <= 0.05 * g.abs().max(), k


@pytest.mark.parametrize("protocol", ["standard", "legacy"])
def test_evaluation_shards_add_up(protocol):
    ds = tiny_dataset()
    cfg = load_config("BM3", None, overrides=["embedding_size=8", f"protocol={protocol}",
                                              "topk=[5,10]", "valid_metric=recall@10"]).values
    torch.manual_seed(0)
    model = build_model("BM3", ds, cfg)
    whole = evaluate(model, ds, "test", cfg)
    parts = []

    def collect(vec):
        parts.append(vec)
        return vec

    for r in range(3):
        evaluate(model, ds, "test", cfg, shard=(r, 3), reduce=collect)
    total = sum(parts)
    names = list(whole)
    got = {n: float(total[j, 0] / total[j, 1]) for j, n in enumerate(names)}
    assert got == pytest.approx(whole, rel=1e-12)


def test_plain_run_never_starts_a_process_group(data_dir, tmp_path):
    """A plain run imports nothing of torch.distributed itself (torch imports its core, and
    torch._dynamo more, on their own), never torchrun's machinery, and joins no group."""
    code = ("import sys, torch\n"
            "before = {m for m in sys.modules if m.startswith('torch.distributed')}\n"
            "import sgfd_fast.train, sgfd_fast.training.distributed\n"
            "after = {m for m in sys.modules if m.startswith('torch.distributed')}\n"
            "assert after == before, sorted(after - before)\n"
            f"assert sgfd_fast.train.main(['--data-path', {str(data_dir)!r}, '--out', "
            f"{str(tmp_path / 'r')!r}, '--device', 'cpu', 'epochs=1', 'embedding_size=8', "
            "'topk=[10,20]']) == 0\n"
            "assert not torch.distributed.is_initialized()\n"
            "assert not [m for m in sys.modules if m.startswith(('torch.distributed.run', "
            "'torch.distributed.elastic'))]\n")
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]


def test_nccl_on_cpu_is_a_config_error(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="dist_backend=nccl needs CUDA"):
        with distributed.process_group("nccl", 5, "cpu"):
            pass


def test_more_local_ranks_than_gpus_is_a_config_error(monkeypatch):
    """The CUDA branch of process_group, reached without a GPU: it raised UnboundLocalError on
    `torch` (a later `import torch.distributed.nn` in the function made `torch` local)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "resolve_device", lambda d: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="LOCAL_RANK 1 has no GPU .*this machine has 1"):
        with distributed.process_group("auto", 5, "cuda"):
            pass


def test_dist_keys_are_checked():
    with pytest.raises(ConfigError, match="dist_backend"):
        load_config("BM3", None, overrides=["dist_backend=mpi"])
    with pytest.raises(ConfigError, match="dist_timeout"):
        load_config("BM3", None, overrides=["dist_timeout=0"])


# --- whole-graph work split between processes (models.split) ---------------------------------

#: backbones whose step divides its graph propagation between processes (docs/DEVELOPING.md);
#: under a split every model with a multi-layer SGFD teacher divides its collapse too
SPLIT_MODELS = ["BM3", "GRCN", "LightGCN", "FREEDOM", "MGCN"]


def split_dataset():
    """Tiny data whose node count (22) and feature width (70) do not divide by 3, with a teacher
    of two layers (70 -> 17 -> 8 at embedding_size 8), so the collapse is split too."""
    ds = tiny_dataset(n_users=12, n_items=10)
    rng = np.random.default_rng(1)
    ds.features["image"] = rng.standard_normal((10, 70)).astype(np.float32)
    ds.features["text"] = rng.standard_normal((10, 9)).astype(np.float32)
    return ds


#: (model, its overrides) of the split test: every model, GRCN's released evaluation and BM3
#: with two layers (its backward's row blocks gathered between layers)
SPLIT_CASES = [*MODELS, "GRCN protocol=legacy", "BM3 n_layers=2"]


def split_model(case):
    name, *extra = case.split()
    knn = ["knn_k=3"] if name in ("FREEDOM", "LATTICE", "MGCN") else []
    cfg = load_config(name, None, overrides=["embedding_size=8", *knn, *extra]).values
    torch.manual_seed(0)
    model = build_model(name, split_dataset(), cfg).double()
    model.begin_epoch(0, 777)  # FREEDOM samples its epoch's graph here
    return model


def split_batch(model):
    ds = split_dataset()
    users, items = (torch.from_numpy(ds.train[:, c].copy()) for c in (0, 1))
    neg = torch.randint(ds.n_items, (users.numel(), model.n_negatives), generator=torch.Generator()
                        .manual_seed(0)) if model.n_negatives else None
    return users, items, neg


def _adam_steps(model, optimizer, steps=3, rows=None, sync=True):
    """``steps`` steps of ``optimizer`` on the split batch (its first ``rows`` pairs), as the
    trainer takes them: each rank its shard, scaled by its fraction, and
    ``optimizer.reduce_grads`` under torch.distributed; a batch smaller than the world runs
    unsplit, the ranks without rows idle."""
    users, items, neg = (t[:rows] if t is not None else None for t in split_batch(model))
    dist = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist \
        else (0, 1)
    split = model.split
    if dist and users.numel() < world:  # as the trainer: the local rows whole before it
        optimizer.sync()
    model.set_split(split if users.numel() >= world else None)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        lo, hi = shard_bounds(users.numel(), rank, world)
        fraction = (hi - lo) / users.numel()
        model.begin_step(step, fraction, (users, items, neg) if dist else None)
        if hi > lo:
            loss = model.calculate_loss(users[lo:hi], items[lo:hi],
                                        neg[lo:hi] if neg is not None else None)
            (loss["loss"] * fraction).backward()
        if dist:
            optimizer.reduce_grads(users.numel() >= world)
        optimizer.step()
    if dist and sync:  # as the trainer at the end of an epoch
        optimizer.sync()
    model.set_split(split)


#: the model whose trainer step (ShardedAdam with its split rows) is checked on 3 processes
ADAM_CASE = "BM3"


def _rows_of(rank, k, dtype):
    """Rank ``rank``'s k rows for ``all_rows``, a NaN, an infinity and a -0.0 among them."""
    rows = (torch.arange(k * 6.0).view(k, 2, 3) + 100 * rank).to(dtype)
    if k:
        rows[0, 0] = torch.tensor([float("nan"), float("-inf"), -0.0])
    return rows


def _split_worker(rank, world, init, out):
    """Every model's step and ranking embeddings under a RowSplit of ``world`` ranks; the split
    rows of each model's declaration (``split_rows``) as this rank computed them; and BM3's
    Adam steps through ``sharded_adam``, with its consolidated state dict."""
    import torch.distributed as dist

    from sgfd_fast.models.split import RowSplit

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        got = {}
        for name in SPLIT_CASES:
            model = split_model(name)
            split = RowSplit(rank, world)
            model.set_split(split)
            users, items, neg = split_batch(model)
            lo, hi = shard_bounds(users.numel(), rank, world)
            fraction = (hi - lo) / users.numel()
            model.begin_step(12345, fraction, (users, items, neg))
            loss = model.calculate_loss(users[lo:hi], items[lo:hi],
                                        neg[lo:hi] if neg is not None else None)
            (loss["loss"] * fraction).backward()
            names = {p: k for k, p in model.named_parameters()}
            rows = {}  # name -> (first row, this rank's rows of the gradient)
            for p, n, offset in model.split_rows():
                a, b = (min(max(v - offset, 0), p.shape[0]) for v in split.bounds(n))
                g = p.grad
                assert g is not None, names[p]
                assert not g[:a].any() and not g[b:].any(), names[p]  # zero off its rows
                rows[names[p]] = (a, g[a:b].clone())
            distributed.all_reduce_grads(list(model.parameters()))
            model.eval()
            with torch.no_grad():
                emb = model.ranking_embeddings()
            got[name] = {"grads": {k: p.grad for k, p in model.named_parameters()},
                         "emb": emb, "sent": split.sent, "rows": rows}
        # RowSplit.all_rows: rank 1 has no rows; every dtype a gradient may have
        split = RowSplit(rank, world)
        k = [3, 0, 5][rank]
        got["all_rows"] = [split.all_rows(torch.arange(k) * 7 + rank, _rows_of(rank, k, dtype), 6)
                           for dtype in (torch.float32, torch.float64, torch.bfloat16)]
        got["all_rows sums"] = split.all_rows(torch.zeros(0, dtype=torch.long),
                                              torch.zeros(0, 4), 0,
                                              sums=torch.tensor([0.5, -2.0]) * (rank + 1))[2]
        model = split_model(ADAM_CASE)
        split = RowSplit(rank, world)
        model.set_split(split)
        params = list(model.parameters())
        optimizer = distributed.sharded_adam(params, split, model.split_rows(),
                                             model.split_local(), lr=0.01, weight_decay=1e-3,
                                             fused=True)
        assert optimizer._views, "BM3 declares split rows"
        local = model.split_local()
        assert local, "SGFD's teacher declares its first layer local"
        before = [p.detach().clone() for p in local]
        from sgfd_fast.models import bm3

        held, found = bm3.split_held, []
        bm3.split_held = lambda buffer: found.append(held(buffer)) or found[-1]
        try:
            _adam_steps(model, optimizer, sync=False)
        finally:
            bm3.split_held = held
        # the step's row views release their gradients: BM3 reuses its gradient buffer at
        # every step (a buffer still referenced is replaced by a fresh one)
        assert found and not any(found), found
        # a local parameter is not broadcast by the steps: another rank's rows stay as they
        # were until sync(), this rank's own rows have moved
        for p, old in zip(local, before):
            a, b = optimizer._rows[p][:2]
            assert torch.equal(torch.cat([p[:a], p[b:]]), torch.cat([old[:a], old[b:]]))
            assert b == a or not torch.equal(p[a:b], old[a:b])
        optimizer.sync()
        _adam_steps(model, optimizer, 1, rows=2)  # 2 pairs on 3 ranks: an unsplit step
        optimizer.consolidate_state_dict(to=0)
        adam = {"params": {k: p.detach().clone() for k, p in model.named_parameters()},
                "state": copy.deepcopy(optimizer.state_dict()) if rank == 0 else None}
        # the state dict loads back (as a resume on another world size would) and steps on
        optimizer.load_state_dict(copy.deepcopy(distributed.broadcast_object(adam["state"])))
        _adam_steps(model, optimizer, 1)
        adam["resumed"] = {k: p.detach().clone() for k, p in model.named_parameters()}
        got[ADAM_CASE + " adam"] = adam
        torch.save(got, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    """Every model's step on 3 processes (gloo) under a RowSplit, as each rank saw it."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("split")
    mp.spawn(_split_worker, args=(3, f"file://{tmp / 'rdv'}", str(tmp / "rank.pt")), nprocs=3)
    return [torch.load(f"{tmp / 'rank.pt'}.{r}") for r in range(3)]


@pytest.mark.parametrize("name", SPLIT_CASES)
def test_split_step_equals_one_process(name, split_runs):
    """Each rank computing its row blocks of the propagation and of the collapsed teacher: the
    summed gradients and the ranking embeddings equal one process's (float64), and each
    parameter a model declares split by rows (``split_rows``) has, on every rank, the whole
    gradient on that rank's rows and zeros elsewhere."""
    got = split_runs[0][name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: MAML's float64 products sum in another order on 2
    try:
        model = split_model(name)
        whole = sharded_gradients(model, *split_batch(model), 1)
    finally:
        torch.set_num_threads(threads)
    if name.split()[0] in SPLIT_MODELS or model.sgfd is not None:
        assert got["sent"] > 0  # the split did communicate
    for k, g in whole.items():
        if g is None:
            assert got["grads"][k] is None, k
        else:
            assert torch.allclose(got["grads"][k], g, rtol=1e-9, atol=1e-12), k
    declared = {k for r in split_runs for k in r[name]["rows"]}
    assert declared == set(got["rows"])
    if name.split()[0] == "BM3":
        assert {"user_embedding.weight", "item_embedding.weight",
                "sgfd.teachers.0.0.weight", "sgfd.teachers.0.0.bias"} <= declared
    for k in declared:  # the ranks' rows cover the parameter once
        covered = torch.zeros(whole[k].shape[0], dtype=torch.long)
        for r in split_runs:
            a, g = r[name]["rows"][k]
            covered[a:a + g.shape[0]] += 1
            assert torch.allclose(g, whole[k][a:a + g.shape[0]], rtol=1e-9, atol=1e-12), k
        assert (covered == 1).all(), k
    model.eval()
    with torch.no_grad():
        emb = model.ranking_embeddings()
    assert (emb is None) == (got["emb"] is None)  # None: a model that ranks otherwise (MAML)
    for a, b in zip(got["emb"] or (), emb or ()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_own_rows_reuses_its_gradient_buffer_unless_it_is_held():
    """``RowSplit.own_rows``: the rows' gradient, zeros elsewhere, in one buffer across steps
    (no process group needed: no collective); a gradient kept from the last backward
    (accumulation) gets a fresh buffer, so accumulating stays exact."""
    from sgfd_fast.models.split import RowSplit

    split = RowSplit(1, 2)  # rows [2, 5) of 5
    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    w1, w2 = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    zeros = torch.zeros(2, 3, dtype=torch.float64)

    (split.own_rows(p) * w1).sum().backward()
    assert torch.equal(p.grad, torch.cat([zeros, w1]))
    first = p.grad.data_ptr()
    p.grad = None
    (split.own_rows(p) * w2).sum().backward()
    assert torch.equal(p.grad, torch.cat([zeros, w2])) and p.grad.data_ptr() == first
    (split.own_rows(p) * w1).sum().backward()  # accumulated onto the kept gradient
    assert torch.equal(p.grad, torch.cat([zeros, w1 + w2]))
    kept = p.grad
    p.grad = None
    (split.own_rows(p) * w1).sum().backward()  # the accumulated buffer is still referenced
    assert torch.equal(p.grad, torch.cat([zeros, w1])) and torch.equal(kept[2:], w1 + w2)


def test_all_rows_concatenates_every_ranks_rows(split_runs):
    """``RowSplit.all_rows`` on 3 ranks with 3, 0 and 5 rows: every rank gets every rank's ids
    and rows, in rank order, bit for bit, in the rows' dtype; and ``sums`` summed over the
    ranks when no rank has rows."""
    counts = [3, 0, 5]
    ids = torch.cat([torch.arange(k) * 7 + r for r, k in enumerate(counts)])
    for j, dtype in enumerate((torch.float32, torch.float64, torch.bfloat16)):
        rows = torch.cat([_rows_of(r, k, dtype) for r, k in enumerate(counts)])
        for r in split_runs:
            got_ids, got_rows = r["all_rows"][j]
            assert got_ids.dtype == torch.int64 and got_rows.dtype == dtype
            assert torch.equal(got_ids, ids)
            assert got_rows.shape == rows.shape  # bit for bit: NaN, -0.0 and all
            assert torch.equal(got_rows.reshape(-1).view(torch.uint8),
                               rows.reshape(-1).view(torch.uint8))
    for r in split_runs:  # no rows anywhere; the sums (1 + 2 + 3 times the values)
        assert torch.equal(r["all_rows sums"], torch.tensor([3.0, -12.0]))


def test_all_rows_refuses_more_rows_than_its_capacity():
    """Checked before any collective (no process group needed)."""
    from sgfd_fast.models.split import RowSplit

    with pytest.raises(ValueError, match="capacity 2"):
        RowSplit(0, 2).all_rows(torch.arange(3), torch.zeros(3, 4), 2)


def test_sharded_adam_equals_one_process(split_runs):
    """BM3+SGFD's Adam steps on 3 processes (ZeRO for the shared parameters, each rank's rows
    for the split ones, then broadcast; one step on a batch smaller than the world, unsplit):
    the parameters equal one process's Adam (float64), the consolidated state dict is one
    process's, and loading it back continues the same."""
    model = split_model(ADAM_CASE)
    optimizer = torch.optim.Adam(list(model.parameters()), lr=0.01, weight_decay=1e-3,
                                 fused=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _adam_steps(model, optimizer)
        _adam_steps(model, optimizer, 1, rows=2)
        one = copy.deepcopy(optimizer.state_dict())  # the next step updates it in place
        params = {k: p.detach().clone() for k, p in model.named_parameters()}
        _adam_steps(model, optimizer, 1)
    finally:
        torch.set_num_threads(threads)
    for r in split_runs:  # every rank holds every parameter after the step
        for k, p in params.items():
            assert torch.allclose(r[ADAM_CASE + " adam"]["params"][k], p, rtol=1e-9,
                                  atol=1e-12), k
    got = split_runs[0][ADAM_CASE + " adam"]["state"]
    assert got["param_groups"] == one["param_groups"]
    assert set(got["state"]) == set(one["state"])
    for i, s in one["state"].items():
        assert set(got["state"][i]) == set(s)
        for key, v in s.items():
            assert torch.allclose(got["state"][i][key], v, rtol=1e-9, atol=1e-12), (i, key)
    for k, p in model.named_parameters():
        assert torch.allclose(split_runs[1][ADAM_CASE + " adam"]["resumed"][k], p.detach(),
                              rtol=1e-9, atol=1e-12), k
