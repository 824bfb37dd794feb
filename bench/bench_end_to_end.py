"""End to end: one training epoch and one full evaluation of each model (BM3+SGFD, GRCN, MAML,
VBPR+SGFD, LightGCN; those registered in ``sgfd_fast.models.MODELS``), ``sgfd_fast`` (automatic
backends) against the ``reference`` backend (``sgfd_fast.use_backend("reference")``: every op on its PyTorch reference).

Models: ``--e2e-models`` (default: all on CUDA, BM3 only on a CPU). Datasets: office at
``--bench-size small``; office, office-synthetic (the office graph with SYNTHETIC seeded
stand-ins of the paper's shapes: 4096-d image, 384-d text; office's labels) and
toysgames-synthetic at ``paper``; none at ``large`` (no large built-in dataset). Providers:
``reference``, ``sgfd_fast``, ``sgfd_fast_bf16`` (ours with ``precision: bf16``), for BM3+SGFD
``released`` (:class:`ReleasedBM3`) and for VBPR and LightGCN ``mmrec`` (:class:`MMRecStyle`).
CPU epoch rows of BM3+SGFD and CPU evaluation rows of dot-product models record the GEMM floor
at this process's float32 and bf16 ``torch.mm`` rates (:func:`gemm_floor`), the CPU's bf16 ISA,
and the step's fraction of the floor of its own precision (bf16 epochs: the bf16 floor; an
evaluation scores in float32 under either precision: the float32 floor). Config: the package defaults for the model and dataset
(``sgfd_fast.config.load_config``), so the batch size, width and layers are those a user gets.

* ``epoch``: the trainer's step loop (shuffled positive pairs in batches of ``train_batch_size``,
  sampled negatives when the model asks for them, ``calculate_loss``, backward, Adam step).
* ``evaluation``: ``sgfd_fast.evaluation.evaluate(model, dataset, "valid", config)`` — full
  ranking of every item for every validation user, train items masked, and the metrics (the
  released provider: the same split through the released trainer's loop and metric code).

With ``--benchmark-disable`` (the smoke) an "epoch" is cut to its first 2 batches.

Before timing, one step's loss parts and parameter gradients and the evaluation metrics of the
same weights are compared between the two backends. ``extra_info["peak_memory_bytes"]``: on CUDA
``torch.cuda.max_memory_allocated`` over the timed rounds; on CPU the process's peak resident set
during the timed rounds (``VmHWM`` after resetting it through /proc/self/clear_refs; when the
kernel refuses the reset, the process-lifetime peak, flagged by ``peak_memory_kind``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

MODEL_NAMES = ("BM3", "GRCN", "MAML", "VBPR", "LightGCN")
# office-synthetic: the office graph with SYNTHETIC stand-in features of the paper's shapes
# (toysgames-synthetic has them built in); generated from a seed in _dataset
OFFICE_STANDIN = "office-synthetic"
DATASETS = {"small": ("office",),
            "paper": ("office", OFFICE_STANDIN, "toysgames-synthetic"), "large": ()}
PROVIDERS = ("reference", "released", "mmrec", "sgfd_fast", "sgfd_fast_bf16")
BF16_PROVIDER = "sgfd_fast_bf16"   # ours with precision: bf16
MMREC_MODELS = ("VBPR", "LightGCN")   # the "mmrec" provider: MMRecStyle
STEPS = ("epoch", "evaluation")


def pytest_generate_tests(metafunc):
    if "dataset_name" in metafunc.fixturenames:
        names = DATASETS[metafunc.config.getoption("--bench-size")]
        metafunc.parametrize("dataset_name", names or [pytest.param(
            None, marks=pytest.mark.skip(reason="no built-in dataset at --bench-size large"))])


def _api():
    try:
        from sgfd_fast import use_backend
        from sgfd_fast.config import load_config
        from sgfd_fast.data import load_data
        from sgfd_fast.evaluation import evaluate
        from sgfd_fast.models import MODELS, build_model
        from sgfd_fast.sampling import NegativeSampler
    except ImportError as exc:
        pytest.skip(f"end-to-end benchmarks need sgfd_fast.models/evaluation/config/data, "
                    f"not importable yet: {exc}")
    return use_backend, load_config, load_data, evaluate, MODELS, build_model, NegativeSampler


@functools.lru_cache(maxsize=2)
def _dataset(load_data, name: str, valid_ratio, split_seed, modalities):
    if name == OFFICE_STANDIN:
        import dataclasses

        from sgfd_fast.data.builtin import synthetic_features

        ds = load_data({"name": "office"}, {"valid_ratio": valid_ratio, "split_seed": split_seed,
                                            "modalities": None})
        features, _ = synthetic_features(ds.n_items)  # image 4096-d, text 384-d; real labels kept
        return dataclasses.replace(ds, name=name, features=features,
                                   synthetic=("image", "text"))
    return load_data({"name": name}, {"valid_ratio": valid_ratio, "split_seed": split_seed,
                                      "modalities": modalities and list(modalities)})


class Run:
    """A freshly seeded model, its optimizer and the epoch / evaluation callables."""

    def __init__(self, model_name: str, dataset_name: str, device: torch.device,
                 precision: str = "fp32"):
        use_backend, load_config, load_data, evaluate, models, build_model, sampler_cls = _api()
        if model_name.upper() not in {k.upper() for k in models}:
            pytest.skip(f"{model_name} is not registered in sgfd_fast.models.MODELS yet")
        self.use_backend, self.evaluate = use_backend, evaluate
        config_name = "office" if dataset_name == OFFICE_STANDIN else dataset_name
        self.config = cfg = load_config(model_name, config_name,
                                        overrides=[("precision", precision)]).points()[0]
        modalities = None if dataset_name == OFFICE_STANDIN else cfg.get("modalities")
        self.dataset = _dataset(load_data, dataset_name, cfg["valid_ratio"], cfg["split_seed"],
                                tuple(modalities) if modalities else None)
        torch.manual_seed(self.config["seed"])
        self.model = build_model(model_name, self.dataset, self.config).to(device)
        self.model.train()
        self.device = device
        # the trainer's optimizer (fused Adam); the released provider swaps in the default one
        self.optimizer = torch.optim.Adam(self.model.parameters(),
                                          lr=self.config["learning_rate"],
                                          weight_decay=self.config["weight_decay"], fused=True)
        self.n_negatives = int(getattr(self.model, "n_negatives", 0) or 0)
        self.sampler = sampler_cls.from_pairs(
            self.dataset.n_users, self.dataset.n_items, self.dataset.train,
            n_neg=self.n_negatives, seed=self.config["seed"] + 1, device=device) \
            if self.n_negatives else None
        self.pairs = torch.as_tensor(self.dataset.train, dtype=torch.long)
        self.batch_size = self.config["train_batch_size"]
        self.order = torch.Generator().manual_seed(self.config["seed"])
        self.stepper = self.model  # what computes the loss: the model, or ReleasedBM3 over it

    @property
    def n_batches(self) -> int:
        return -(-self.pairs.shape[0] // self.batch_size)

    def batch(self, idx):
        users, items = self.pairs[idx, 0].to(self.device), self.pairs[idx, 1].to(self.device)
        return users, items, self.sampler.sample(users) if self.sampler else None

    def epoch(self, max_batches: int | None = None):
        perm = torch.randperm(self.pairs.shape[0], generator=self.order)
        starts = range(0, perm.numel(), self.batch_size)
        for start in starts[:max_batches]:
            parts = self.stepper.calculate_loss(*self.batch(perm[start:start + self.batch_size]))
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def evaluation(self):
        with torch.no_grad():
            return self.evaluate(self.model, self.dataset, "valid", self.config)

    # -- the check: both backends compute the same step and the same metrics
    def step_parts(self, backend: str, users, items, negatives):
        torch.manual_seed(1234)  # identical dropout masks under both backends
        with self.use_backend(backend):
            parts = self.model.calculate_loss(users, items, negatives)
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
        grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                 if p.grad is not None}
        self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in parts.items()}, grads


class ReleasedBM3:
    """The released SGFD-BM3 step and evaluation, on the weights of one of our BM3 models (so both
    formulations train the same parameters from the same start).

    Step, as released: COO ``torch.sparse.mm`` per layer on a never-coalesced adjacency, layer
    mean; predictor and dropout on every user and item row; each student over ALL items (its
    output feeds the BM3 contrastive terms) and again on the batch's items with duplicates inside
    the feature extractor, next to the layer-by-layer (uncollapsed) teacher; SGFD losses per row.
    Evaluation, as released (MMRec's trainer and ``TopKEvaluator``), of one split: its users in
    order of appearance, per batch of ``eval_batch_size`` users the whole graph forward again, dense
    scores of every item, train items set to -1e10 by a scatter, ``torch.topk``; then, on the host,
    the per-user Python hit lists (``i in m`` per ranked item) and the metric functions
    (:func:`released_metrics`).
    """

    def __init__(self, model, dataset, config, split: str = "valid"):
        import torch.nn.functional as F  # noqa: N812

        from sgfd_fast.ops import sgfd_loss_reference

        self.m, self.F, self.sgfd_loss = model, F, sgfd_loss_reference
        g = getattr(model, "graph", None)   # VBPR has none
        if g is not None:
            rows = torch.repeat_interleave(torch.arange(g.rowptr.numel() - 1), g.rowptr.diff())
            self.adj = torch.sparse_coo_tensor(torch.stack([rows, g.col]), g.val,
                                               (g.rowptr.numel() - 1,) * 2)  # never coalesced
        known = torch.as_tensor(dataset.train, dtype=torch.long)
        self.known, self.ks, self.topk = known, list(config["topk"]), max(config["topk"])
        self.eval_batch = config["eval_batch_size"]
        truth = getattr(dataset, split)
        order = np.unique(truth[:, 0], return_index=True)[1]
        self.users = torch.as_tensor(truth[np.sort(order), 0], dtype=torch.long)  # as they appear
        self.truth = [truth[truth[:, 0] == u, 1] for u in self.users.tolist()]  # eval_items_per_u

    def _forward(self):
        m = self.m
        ego = torch.cat([m.user_embedding.weight, m.item_embedding.weight])
        layers = [ego]
        for _ in range(m.n_layers):
            ego = torch.sparse.mm(self.adj, ego)
            layers.append(ego)
        u_g, i_g = torch.stack(layers, dim=1).mean(dim=1).split([m.n_users, m.n_items])
        return u_g, i_g + m.item_embedding.weight

    def _ranking_embeddings(self):
        u_g, i_o = self._forward()
        return self.m.predictor(u_g), self.m.predictor(i_o)

    def _head(self, x, layers):
        for layer in layers:
            x = layer(x)
        return self.F.normalize(self.F.leaky_relu(x), dim=1)

    def calculate_loss(self, users, items, negatives=None):
        m, F, s = self.m, self.F, self.m.sgfd
        neg_cos = lambda a, b: 1.0 - F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
        u_o, i_o = self._forward()
        u_on, i_on = m.predictor(u_o), m.predictor(i_o)
        with torch.no_grad():
            u_tgt, i_tgt = F.dropout(u_o, m.dropout), F.dropout(i_o, m.dropout)
        bm3 = neg_cos(u_on[users], i_tgt[items]) + neg_cos(i_on[items], u_tgt[users])
        reg = (u_o.norm() + i_o.norm()) / m.n_items
        cl, ce, ld, fd, teachers = 0.0, 0.0, 0.0, 0.0, []
        y = s.labels[items]
        for j in range(len(m.modalities)):
            feat = s.feature(j)
            s_all = self._head(feat, [s.students[j]])  # the student over ALL items
            q = m.predictor(s_all)
            with torch.no_grad():
                s_tgt = F.dropout(s_all, m.dropout)
            cl = cl + neg_cos(q[items], i_tgt[items]) + neg_cos(q[items], s_tgt[items])
            x = feat[items]  # the extractor: batch rows with duplicates
            f_t = self._head(x, list(s.teachers[j]))
            f_s = self._head(x, [s.students[j]])
            teachers.append(f_t)
            c = s.classifiers[j]
            ce_j, ld_j, fd_j = self.sgfd_loss(f_t, f_s, c.weight, c.bias, y, s.tau, s.flavour)
            ce, ld, fd = ce + ce_j, ld + ld_j, fd + fd_j
        n = len(m.modalities)
        g = F.leaky_relu(s.fusion(torch.cat(teachers, dim=1)))
        fusion = F.cross_entropy(s.fusion_classifier(g), y)
        sgfd = s.ce_weight * (ce / n + fusion) + s.kd_weight * (ld / n + fd / n)
        total = bm3 + m.reg_weight * reg + m.cl_weight * cl + sgfd
        return {"loss": total, "bm3": bm3.detach(), "sgfd": sgfd.detach()}

    def ranking(self) -> torch.Tensor:
        """(U, max(topk)) ranked items of ``self.users``, as the released trainer computes them."""
        with torch.no_grad():
            tops = []
            for start in range(0, self.users.numel(), self.eval_batch):
                users = self.users[start:start + self.eval_batch]
                u, i = self._ranking_embeddings()  # recomputed per batch, as released
                scores = u[users] @ i.T
                sel = torch.isin(self.known[:, 0], users)
                order = torch.argsort(users)
                rows = order[torch.searchsorted(users[order], self.known[sel, 0].contiguous())]
                scores[rows, self.known[sel, 1]] = -1e10
                tops.append(torch.topk(scores, self.topk, dim=1)[1])
        return torch.cat(tops)

    def evaluation(self) -> dict:
        return released_metrics(self.ranking().cpu().numpy(), self.truth, self.ks)


class MMRecStyle(ReleasedBM3):
    """VBPR and LightGCN as MMRec's ``vbpr.py`` / ``lightgcn.py`` compute them, in plain PyTorch,
    on the weights of one of our models. Step: LightGCN propagates with COO ``torch.sparse.mm`` per
    layer; VBPR projects every item's features every step (MMRec's ``forward``; with SGFD through
    the model's own students, plus its SGFD losses); then ``BPRLoss`` + ``EmbLoss`` on gathered
    rows. Evaluation: MMRec's trainer, as for
    :class:`ReleasedBM3` (the forward again per batch of users, dense scores, ``torch.topk``,
    the host metric loops)."""

    def _ranking_embeddings(self):
        m = self.m
        if m.features is None:   # LightGCN
            ego = torch.cat([m.user_embedding, m.item_embedding])
            layers = [ego]
            for _ in range(m.n_layers):
                ego = torch.sparse.mm(self.adj, ego)
                layers.append(ego)
            return torch.stack(layers, dim=1).mean(dim=1).split([m.n_users, m.n_items])
        f = m.features            # VBPR: every item projected
        phi = sum(f.student(j) for j in range(len(f.modalities)))
        return m.user_embedding, torch.cat([m.item_embedding, phi], 1)

    def calculate_loss(self, users, items, negatives=None):
        m = self.m
        neg = negatives.reshape(-1)
        u_all, i_all = self._ranking_embeddings()
        u, p, q = u_all[users], i_all[items], i_all[neg]
        mf = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * q).sum(1))).mean()
        if m.features is None:   # LightGCN's EmbLoss is on the layer-0 rows
            u, p, q = m.user_embedding[users], m.item_embedding[items], m.item_embedding[neg]
        reg = (u.norm() + p.norm() + q.norm()) / users.numel()
        loss = mf + m.reg_weight * reg
        if m.sgfd is not None:
            loss = loss + m.sgfd.losses(torch.cat([items, neg]))["sgfd"]
        return {"loss": loss}


def released_metrics(topk_index, pos_items, ks) -> dict:
    """MMRec's ``TopKEvaluator.evaluate`` as the released BM3 runs it (docs/RELEASED_CODE.md §4.7):
    a Python hit list per user (``i in m`` on the user's item array), then ``recall2_`` (micro),
    ``ndcg2_`` (its loop over cut-offs, users and positions), ``precision_``, ``map_`` (a loop over
    users) and ``hk_`` (any hit in the first 20), each read at index k-1 and rounded to 4 places.
    Keys as :func:`sgfd_fast.evaluation.ranking_metrics` names them (``hk`` is ``hit``)."""
    import math

    pos_index = np.asarray([[True if i in m else False for i in n]
                            for m, n in zip(pos_items, topk_index)])
    pos_len = np.asarray([len(m) for m in pos_items])
    n_users, depth = pos_index.shape
    cum = np.cumsum(pos_index, axis=1)
    recall = cum.sum(axis=0) / pos_len.sum()
    ndcg = np.zeros(depth)
    for j in range(depth):
        total = 0.0
        for u in range(n_users):
            h = int(pos_index[u, :j].sum())
            if h > 0:
                idcg = sum(1.0 / math.log(i + 2) for i in range(min(h, j)))
                dcg = sum(float(pos_index[u, i]) / math.log(i + 2) for i in range(depth))
                total += dcg / idcg
        ndcg[j] = total / n_users
    precision = (cum / np.arange(1, depth + 1)).mean(axis=0)
    sum_pre = np.cumsum(cum / np.arange(1, depth + 1) * pos_index, axis=1)
    ap = np.zeros((n_users, depth))
    for row, lens in enumerate(np.minimum(pos_len, depth)):
        ranges = np.arange(1, depth + 1)
        ranges[lens:] = ranges[lens - 1]
        ap[row] = sum_pre[row] / ranges
    hk = np.full(depth, pos_index[:, :20].any(axis=1).mean())  # hk_ looks at 20 positions
    table = {"recall": recall, "ndcg": ndcg, "precision": precision, "map": ap.mean(axis=0),
             "hit": hk}
    return {f"{name}@{k}": round(float(v[k - 1]), 4) for name, v in table.items() for k in ks}


def _gemm_rate(dtype: torch.dtype = torch.float32) -> float:
    """This process's GEMM rate (FLOP/s) in ``dtype``: the fastest of five 2048³ ``torch.mm`` (a
    floor divides by the best rate: a slower round, e.g. a neighbour's load, must not lower the
    floor below what was timed)."""
    import time

    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * 2048 ** 3 / min(times)


def cpu_isa() -> str:
    """The CPU's name and what multiplies bf16 on it (``sgfd_fast info``'s answer)."""
    from sgfd_fast.ops._bf16_filter import bf16_hardware

    fields = {}
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:  # "AMD EPYC" alone does not say which generation
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return (f"{name}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 "
            f"products: {bf16_hardware('cpu') or 'emulated (no AMX-BF16 or AVX512-BF16)'}")


def gemm_floor(run, step: str) -> dict | None:
    """FLOPs of the step's necessary dense GEMMs, and the seconds they take at this machine's
    GEMM rates (the fastest of five 2048³ ``torch.mm`` in this process, same threads, in float32:
    ``floor_s``, and in bf16: ``floor_s_bf16``).

    ``epoch`` (BM3+SGFD): per batch with n distinct items and per modality m (width d_m, teacher
    weight shapes S_m), ``2 · (min(teacher_costs(S_m, n)) + 2·n·D·d_m)`` — the teacher in its
    cheaper GEMM order, forward + weight gradient, and the student's forward + weight gradient
    (raw features are constants: no input gradient). Everything else (propagation, predictor,
    classifiers, losses) is left out, so this is a floor.

    ``evaluation`` (models that rank by a dot product): ``2 · U · I · d``, the scores of every
    item for each of the U evaluated users — a product every full-ranking evaluation performs,
    the released one included, so released time / floor bounds the ratio any implementation can
    reach against it at this GEMM rate.
    """
    from sgfd_fast.models.sgfd import teacher_costs

    model = run.model
    if step == "evaluation":
        with torch.no_grad():
            emb = model.ranking_embeddings()
        if emb is None:
            return None
        ds = run.dataset
        has_train = np.bincount(ds.train[:, 0], minlength=ds.n_users) > 0
        truth = ds.test if run.config["protocol"] == "legacy" else ds.valid  # as evaluate()
        users = np.unique(truth[:, 0])
        macs = int(has_train[users].sum()) * ds.n_items * emb[1].shape[1]
    else:
        if type(model).__name__ != "BM3" or getattr(model, "sgfd", None) is None:
            return None
        dim, sgfd = model.sgfd.dim, model.sgfd
        shapes = [([tuple(l.weight.shape) for l in sgfd.teachers[j]], sgfd.feature(j).shape[1])
                  for j in range(len(sgfd.modalities))]
        perm = torch.randperm(run.pairs.shape[0], generator=torch.Generator().manual_seed(0))
        macs = 0
        for start in range(0, perm.numel(), run.batch_size):
            n = int(torch.unique(run.pairs[perm[start:start + run.batch_size], 1]).numel())
            macs += sum(min(teacher_costs(sh, n)) + 2 * n * dim * d for sh, d in shapes)
    rate, rate_bf16 = _gemm_rate(), _gemm_rate(torch.bfloat16)
    return {"floor_flops": 2 * macs, "gemm_flop_per_s": rate, "floor_s": 2 * macs / rate,
            "gemm_flop_per_s_bf16": rate_bf16, "floor_s_bf16": 2 * macs / rate_bf16}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.double().norm())
    diff = float((got.double() - want.double()).norm())
    return diff / scale if scale > 0 else diff


@functools.lru_cache(maxsize=None)
def check_backends_agree(model_name: str, dataset_name: str, device_type: str) -> str:
    """One training step (loss parts, every parameter gradient) and the evaluation metrics of the
    same weights under the reference and the automatic backends; fails the test on a mismatch."""
    run = Run(model_name, dataset_name, torch.device(device_type))
    batch = run.batch(torch.arange(min(run.batch_size, run.pairs.shape[0])))  # same negatives
    ref_parts, ref_grads = run.step_parts("reference", *batch)
    got_parts, got_grads = run.step_parts("auto", *batch)
    problems = []
    for k, want in ref_parts.items():
        if k not in got_parts or _rel_err(got_parts[k], want) > 1e-4:
            problems.append(f"loss part {k}: {got_parts.get(k)} vs reference {want}")
    for name, want in ref_grads.items():
        got = got_grads.get(name)
        if got is None or _rel_err(got, want) > 1e-3:
            err = "missing" if got is None else f"relative error {_rel_err(got, want):.2e}"
            problems.append(f"gradient of {name}: {err}")
    with run.use_backend("reference"):
        ref_metrics = run.evaluation()
    with run.use_backend("auto"):
        got_metrics = run.evaluation()
    for k, want in ref_metrics.items():
        if abs(got_metrics.get(k, float("nan")) - want) > 1e-3:
            problems.append(f"metric {k}: {got_metrics.get(k)} vs reference {want}")
    if problems:
        pytest.fail(f"{model_name} on {dataset_name}: sgfd_fast and reference backends disagree:\n"
                    + "\n".join(problems))
    return "ok"


@functools.lru_cache(maxsize=None)
def check_bf16_close(model_name: str, dataset_name: str, device_type: str) -> str:
    """One training step's loss under ``precision: bf16`` within 2 % of float32's (the same
    weights and batch; tests/test_precision.py holds the training-level checks)."""
    runs = {p: Run(model_name, dataset_name, torch.device(device_type), p)
            for p in ("fp32", "bf16")}
    batch = runs["fp32"].batch(torch.arange(min(runs["fp32"].batch_size,
                                                runs["fp32"].pairs.shape[0])))
    loss = {}
    for p, run in runs.items():
        torch.manual_seed(1234)
        loss[p] = float(run.model.calculate_loss(*batch)["loss"])
    if not abs(loss["bf16"] - loss["fp32"]) <= 2e-2 * abs(loss["fp32"]):
        pytest.fail(f"{model_name} on {dataset_name}: bf16 step loss {loss['bf16']} vs float32 "
                    f"{loss['fp32']}")
    return "ok"


@functools.lru_cache(maxsize=None)
def check_released_agrees(model_name: str, dataset_name: str, device_type: str) -> str:
    """The released formulation computes our step's loss (dropout 0: the two draw their masks
    over different rows) and the same top-k lists; skips models it does not cover."""
    run = Run(model_name, dataset_name, torch.device(device_type))
    if model_name.upper() != "BM3" or run.model.sgfd is None:
        pytest.skip("the released formulation is transcribed for BM3+SGFD only")
    released = ReleasedBM3(run.model, run.dataset, run.config)
    users, items, _ = run.batch(torch.arange(min(run.batch_size, run.pairs.shape[0])))
    run.model.dropout = 0.0
    want = float(run.model.calculate_loss(users, items)["loss"])
    got = float(released.calculate_loss(users, items)["loss"])
    if abs(got - want) > 1e-4 * abs(want):
        pytest.fail(f"released BM3 step on {dataset_name}: loss {got} vs sgfd_fast {want}")
    users = torch.sort(released.users).values
    with torch.no_grad():
        u, i = run.model.ranking_embeddings()
        scores = u[users] @ i.T
    known = released.known[torch.isin(released.known[:, 0], users)]
    scores[torch.searchsorted(users, known[:, 0].contiguous()), known[:, 1]] = -1e10
    top = torch.topk(scores, released.topk, dim=1)[1]
    ranked = released.ranking()
    agree = float((ranked[torch.argsort(released.users)] == top).float().mean())
    if agree < 0.99:  # float ties may swap a few ranks
        pytest.fail(f"released evaluation on {dataset_name}: top-k agrees on {agree:.3f}")
    # the transcribed metric loops give the legacy BM3 definitions of sgfd_fast.evaluation
    from sgfd_fast.evaluation import ranking_metrics

    counts = torch.as_tensor([len(t) for t in released.truth])
    rowptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    truth = torch.as_tensor(np.concatenate(released.truth), dtype=torch.long)
    want = ranking_metrics(ranked, rowptr, truth, released.ks, "legacy", "mmrec")
    got = released_metrics(ranked.numpy(), released.truth, released.ks)
    wrong = {k: (got[k], v) for k, v in want.items() if abs(got[k] - v) > 5.1e-5}
    if wrong:
        pytest.fail(f"released metrics on {dataset_name} (got, legacy ranking_metrics): {wrong}")
    return "ok"


@functools.lru_cache(maxsize=None)
def check_mmrec_agrees(model_name: str, dataset_name: str, device_type: str) -> str:
    """The MMRec-style formulation computes our step's loss and the same top-k lists; skips the
    models it does not cover."""
    run = Run(model_name, dataset_name, torch.device(device_type))
    if model_name not in MMREC_MODELS:
        pytest.skip(f"the MMRec-style formulation covers {', '.join(MMREC_MODELS)} only")
    mmrec = MMRecStyle(run.model, run.dataset, run.config)
    batch = run.batch(torch.arange(min(run.batch_size, run.pairs.shape[0])))
    want = float(run.model.calculate_loss(*batch)["loss"])
    got = float(mmrec.calculate_loss(*batch)["loss"])
    if abs(got - want) > 1e-4 * abs(want):
        pytest.fail(f"MMRec-style {model_name} step on {dataset_name}: loss {got} vs {want}")
    users = torch.sort(mmrec.users).values
    with torch.no_grad():
        u, i = run.model.ranking_embeddings()
        scores = u[users] @ i.T
    known = mmrec.known[torch.isin(mmrec.known[:, 0], users)]
    scores[torch.searchsorted(users, known[:, 0].contiguous()), known[:, 1]] = -1e10
    top = torch.topk(scores, mmrec.topk, dim=1)[1]
    agree = float((mmrec.ranking()[torch.argsort(mmrec.users)] == top).float().mean())
    if agree < 0.99:  # float ties may swap a few ranks
        pytest.fail(f"MMRec-style {model_name} evaluation on {dataset_name}: top-k agrees on "
                    f"{agree:.3f}")
    return "ok"


class PeakMemory:
    """Peak memory over a block: CUDA allocations, or the resident set on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.kind = "peak RSS during the timed rounds (VmHWM)"
            except OSError:
                self.kind = "peak RSS of the whole process (VmHWM; reset not permitted)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _vm_kb("VmHWM") * 1024
        return False


def peak_rss_own_process(model_name: str, dataset_name: str, provider: str,
                         batches: int | None) -> int:
    """Peak resident set of one epoch and one validation evaluation of this provider, run by
    ``bench/peak_rss.py`` in a fresh process (bytes)."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, str(Path(__file__).with_name("peak_rss.py")), model_name,
           dataset_name, provider] + ([f"--batches={batches}"] if batches else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])["peak_rss_bytes"]


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_end_to_end(bench, request, device, model_name, dataset_name, step, provider):
    wanted = request.config.getoption("--e2e-models")
    if wanted == "auto":
        wanted = ",".join(MODEL_NAMES) if device.type == "cuda" else "BM3"
    if model_name.upper() not in {m.strip().upper() for m in wanted.split(",")}:
        pytest.skip(f"{model_name} not in --e2e-models={wanted} (on a CPU only BM3 runs by "
                    f"default: a GRCN or MAML epoch takes many minutes there)")
    check_backends_agree(model_name, dataset_name, device.type)
    bf16 = provider == BF16_PROVIDER
    if bf16:
        check_bf16_close(model_name, dataset_name, device.type)
    run = Run(model_name, dataset_name, device, "bf16" if bf16 else "fp32")
    backend = "reference" if provider == "reference" else "auto"
    action = run.evaluation
    if provider == "released":
        check_released_agrees(model_name, dataset_name, device.type)
        run.stepper = ReleasedBM3(run.model, run.dataset, run.config)
        run.optimizer = torch.optim.Adam(run.model.parameters(), lr=run.config["learning_rate"],
                                         weight_decay=run.config["weight_decay"])  # as released
        action = run.stepper.evaluation
    elif provider == "mmrec":
        check_mmrec_agrees(model_name, dataset_name, device.type)
        run.stepper = MMRecStyle(run.model, run.dataset, run.config)
        action = run.stepper.evaluation
    if step == "epoch":  # the --benchmark-disable smoke runs 2 batches of the epoch, not all
        action = functools.partial(run.epoch, 2 if bench.benchmark.disabled else None)

    def timed():
        with run.use_backend(backend):
            action()

    if device.type == "cuda":
        timed()  # warm-up: lazy module loads, cuBLAS handles, allocator growth
    # whole epochs are long on a CPU: few rounds (the median of 3, or 2 on the larger dataset)
    rounds = 5 if device.type == "cuda" else 3 if dataset_name == "office" else 2
    ds = run.dataset
    info = {"op": f"end_to_end:{model_name}", "mode": step, "workload": dataset_name,
            "dtype": "bfloat16 products" if bf16 else "float32",
            "precision": "bf16" if bf16 else "fp32", "cpu_isa": cpu_isa(),
            "sizes": {"n_users": ds.n_users, "n_items": ds.n_items,
                      "n_train": int(ds.train.shape[0]), "n_test": int(ds.test.shape[0]),
                      "train_batch_size": run.batch_size, "n_batches": run.n_batches,
                      "eval_batch_size": run.config["eval_batch_size"],
                      "embedding_size": run.config["embedding_size"],
                      "modalities": sorted(ds.features)},
            "backends": backend}
    floor = None if bench.benchmark.disabled or device.type != "cpu" else gemm_floor(run, step)
    if floor:
        info.update(floor)
    if ds.synthetic:
        info["synthetic"] = list(ds.synthetic)
    if step == "epoch" and device.type == "cpu":
        info["peak_rss_own_process_bytes"] = peak_rss_own_process(
            model_name, dataset_name, provider, 2 if bench.benchmark.disabled else None)
    with PeakMemory(device) as mem:
        median = bench.run_timed(group=f"end_to_end:{model_name} | {step} | {dataset_name}",
                                 provider=provider, fn=timed, info=info, rounds=rounds)
    bench.benchmark.extra_info.update(peak_memory_bytes=mem.peak, peak_memory_kind=mem.kind)
    if floor and median:  # printed by conftest's end-of-run summary
        own = floor["floor_s_bf16" if bf16 and step == "epoch" else "floor_s"]
        bench.benchmark.extra_info["floor_fraction"] = own / median
