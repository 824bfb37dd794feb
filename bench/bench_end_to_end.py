"""End to end: one training epoch and one full evaluation of each model (BM3+SGFD, GRCN, MAML,
VBPR+SGFD, LightGCN, FREEDOM+SGFD, LATTICE+SGFD, MGCN+SGFD; those registered in
``sgfd_fast.models.MODELS``), ``sgfd_fast`` (automatic backends) against the ``reference``
backend (``sgfd_fast.use_backend("reference")``: every op on its PyTorch reference).

Models: ``--e2e-models`` (default: all on CUDA, BM3 only on a CPU). Datasets: office at
``--bench-size small``; office, office-synthetic (the office graph with SYNTHETIC seeded
stand-ins of the paper's shapes: 4096-d image, 384-d text; office's labels) and
toysgames-synthetic at ``paper``; none at ``large`` (no large built-in dataset). Providers:
``reference``, ``sgfd_fast``, ``sgfd_fast_bf16`` (ours with ``precision: bf16``), for BM3+SGFD
``released`` (:class:`ReleasedBM3`) and for VBPR, LightGCN, FREEDOM, LATTICE (MMRec's dense
formulation) and MGCN ``mmrec`` (:class:`MMRecStyle`, :data:`MMREC_STYLE`).
CPU epoch rows of BM3+SGFD and CPU evaluation rows of dot-product models record the GEMM floor
at this process's float32 and bf16 ``torch.mm`` rates (:func:`gemm_floor`), the CPU's bf16 ISA,
and the step's fraction of the floor of its own precision (bf16 epochs: the bf16 floor; an
evaluation scores in float32 under either precision: the float32 floor). Config: the package defaults for the model and dataset
(``sgfd_fast.config.load_config``), so the batch size, width and layers are those a user gets.

* ``epoch``: the trainer's step loop (the model's ``begin_epoch`` hook, then shuffled positive
  pairs in batches of ``train_batch_size``, each step keyed as the trainer keys it, sampled
  negatives when the model asks for them, ``calculate_loss``, backward, Adam step).
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
import torch.nn.functional as F  # noqa: N812

MODEL_NAMES = ("BM3", "GRCN", "MAML", "VBPR", "LightGCN", "FREEDOM", "LATTICE", "MGCN")
# office-synthetic: the office graph with SYNTHETIC stand-in features of the paper's shapes
# (toysgames-synthetic has them built in); generated from a seed in _dataset
OFFICE_STANDIN = "office-synthetic"
DATASETS = {"small": ("office",),
            "paper": ("office", OFFICE_STANDIN, "toysgames-synthetic"), "large": ()}
PROVIDERS = ("reference", "released", "mmrec", "sgfd_fast", "sgfd_fast_bf16")
BF16_PROVIDER = "sgfd_fast_bf16"   # ours with precision: bf16
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
        self.model_name = model_name
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
        self.stepper = self.model  # what computes the loss: the model, or a formulation over it
        self.epochs = 0            # epochs run: the trainer's per-epoch and per-step keys

    @property
    def n_batches(self) -> int:
        return -(-self.pairs.shape[0] // self.batch_size)

    def batch(self, idx):
        users, items = self.pairs[idx, 0].to(self.device), self.pairs[idx, 1].to(self.device)
        return users, items, self.sampler.sample(users) if self.sampler else None

    def epoch(self, max_batches: int | None = None):
        from sgfd_fast.models.base import step_key

        seed = self.config["seed"]
        # the per-epoch hook (FREEDOM's pruning, LATTICE's graph rebuild) and the step keys, as
        # the trainer calls them
        self.stepper.begin_epoch(self.epochs, step_key(seed, self.epochs, -1))
        perm = torch.randperm(self.pairs.shape[0], generator=self.order)
        starts = range(0, perm.numel(), self.batch_size)
        for b, start in enumerate(starts[:max_batches]):
            self.model.begin_step(step_key(seed, self.epochs, b))
            parts = self.stepper.calculate_loss(*self.batch(perm[start:start + self.batch_size]))
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.optimizer.step()
        self.epochs += 1
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


def use_provider(run: Run, provider: str):
    """Point ``run``'s epoch at ``provider``'s step (its stepper, and for ``released`` the
    default Adam it uses) and return the provider's evaluation callable."""
    if provider == "released":
        run.stepper = ReleasedBM3(run.model, run.dataset, run.config)
        run.optimizer = torch.optim.Adam(run.model.parameters(), lr=run.config["learning_rate"],
                                         weight_decay=run.config["weight_decay"])  # as released
        return run.stepper.evaluation
    if provider == "mmrec":
        run.stepper = MMREC_STYLE[run.model_name](run.model, run.dataset, run.config)
        return run.stepper.evaluation
    return run.evaluation


def _layer_mean(adj, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """MMRec's LightGCN propagation: the mean of layers 0..``n_layers`` of
    ``torch.sparse.mm(adj, .)``."""
    layers = [ego]
    for _ in range(n_layers):
        ego = torch.sparse.mm(adj, ego)
        layers.append(ego)
    return torch.stack(layers, dim=1).mean(dim=1)


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
            self.adj = _coo(g)
        known = torch.as_tensor(dataset.train, dtype=torch.long)
        self.known, self.ks, self.topk = known, list(config["topk"]), max(config["topk"])
        self.eval_batch = config["eval_batch_size"]
        truth = getattr(dataset, split)
        order = np.unique(truth[:, 0], return_index=True)[1]
        self.users = torch.as_tensor(truth[np.sort(order), 0], dtype=torch.long)  # as they appear
        self.truth = [truth[truth[:, 0] == u, 1] for u in self.users.tolist()]  # eval_items_per_u

    def begin_epoch(self, epoch: int, key: int) -> None:
        """Work before an epoch's first step (the model's ``begin_epoch``): none in the released
        BM3; MMRec's ``pre_epoch_processing`` in the :class:`MMRecStyle` formulations with one."""

    def _forward(self):
        m = self.m
        ego = torch.cat([m.user_embedding.weight, m.item_embedding.weight])
        u_g, i_g = _layer_mean(self.adj, ego, m.n_layers).split([m.n_users, m.n_items])
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


def _coo(g) -> torch.Tensor:
    """A CSR graph as the COO ``torch.sparse_coo_tensor`` MMRec builds (never coalesced)."""
    rows = torch.repeat_interleave(torch.arange(g.n_rows, device=g.device), g.rowptr.diff())
    return torch.sparse_coo_tensor(torch.stack([rows, g.col]), g.val, (g.n_rows, g.n_cols))


def _build_sim(x: torch.Tensor) -> torch.Tensor:
    """MMRec's ``build_sim``: the dense (n, n) cosine matrix of the rows of x, with our
    documented rule for a zero row (cosine 0; MMRec divides by its zero norm, and the NaN ranks
    first in every row's ``torch.topk``: office's relation features have 97 such rows)."""
    unit = F.normalize(x, p=2, dim=-1)
    return torch.mm(unit, unit.transpose(1, 0))


def _topk(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(sim, k, dim=-1)``, with our documented tie rule: in a row where the k-th
    value ties with unselected entries, the lower item ids among the tied are kept (MMRec leaves
    them to ``torch.topk``'s order; office's text features have such rows). One comparison pass
    over ``sim`` finds those rows and they alone are re-selected: small next to the product
    that made ``sim``."""
    val, ind = torch.topk(sim, k, dim=-1)
    kth = val[:, -1:]
    tied = sim == kth
    rows = (tied.sum(1) > (val == kth).sum(1)).nonzero().flatten()
    if rows.numel():
        s, t = sim[rows], tied[rows]
        keep = (s > kth[rows]) | (t & (t.cumsum(1) <= k - (s > kth[rows]).sum(1, keepdim=True)))
        ind = ind.index_copy(0, rows, keep.nonzero()[:, 1].view(-1, k))
        val = sim.gather(1, ind)
    return val, ind


class MMRecStyle(ReleasedBM3):
    """A backbone as MMRec computes it, in plain PyTorch, on the weights of one of our models
    (written here from MMRec's documented formulation, not copied): the subclass of the model's
    name in :data:`MMREC_STYLE` gives the step (``begin_epoch``: MMRec's
    ``pre_epoch_processing``; ``calculate_loss``) and ``_ranking_embeddings`` (MMRec's
    ``forward``, which its ``full_sort_predict`` reruns per batch of users); the evaluation is
    MMRec's trainer, as for :class:`ReleasedBM3` (dense scores, ``torch.topk``, the host metric
    loops). With SGFD the model's own students replace MMRec's projections and its SGFD losses
    are added."""

    def _sgfd(self, items, neg) -> torch.Tensor | float:
        m = self.m
        return m.sgfd.losses(torch.cat([items, neg]))["sgfd"] if m.sgfd is not None else 0.0

    def _students(self) -> list[torch.Tensor]:
        """Every item's projection per modality (MMRec's ``image_trs(image_embedding.weight)``
        and ``text_trs(...)``: all items, every forward)."""
        f = self.m.features
        return [f.student(j) for j in range(len(f.modalities))]


def _logsigmoid_bpr(u, p, q) -> torch.Tensor:
    """The ``bpr_loss`` of MMRec's FREEDOM, LATTICE and MGCN: ``-mean(logsigmoid(u·p - u·q))``."""
    return -torch.mean(F.logsigmoid(torch.sum(u * p, dim=1) - torch.sum(u * q, dim=1)))


class MMRecLightGCN(MMRecStyle):
    """MMRec's ``lightgcn.py``: COO ``torch.sparse.mm`` per layer, layer mean; ``BPRLoss`` and
    ``EmbLoss`` on the layer-0 rows."""

    def _ranking_embeddings(self):
        m = self.m
        ego = torch.cat([m.user_embedding, m.item_embedding])
        return _layer_mean(self.adj, ego, m.n_layers).split([m.n_users, m.n_items])

    def calculate_loss(self, users, items, negatives=None):
        m = self.m
        neg = negatives.reshape(-1)
        u_all, i_all = self._ranking_embeddings()
        u, p, q = u_all[users], i_all[items], i_all[neg]
        mf = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * q).sum(1))).mean()
        u, p, q = m.user_embedding[users], m.item_embedding[items], m.item_embedding[neg]
        reg = (u.norm() + p.norm() + q.norm()) / users.numel()
        return {"loss": mf + m.reg_weight * reg}


class MMRecVBPR(MMRecStyle):
    """MMRec's ``vbpr.py``: every item's features projected every step (``forward``), then
    ``BPRLoss`` + ``EmbLoss`` on gathered rows."""

    def _ranking_embeddings(self):
        m = self.m
        return m.user_embedding, torch.cat([m.item_embedding, sum(self._students())], 1)

    def calculate_loss(self, users, items, negatives=None):
        m = self.m
        neg = negatives.reshape(-1)
        u_all, i_all = self._ranking_embeddings()
        u, p, q = u_all[users], i_all[items], i_all[neg]
        mf = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * q).sum(1))).mean()
        reg = (u.norm() + p.norm() + q.norm()) / users.numel()
        return {"loss": mf + m.reg_weight * reg + self._sgfd(items, neg)}


class MMRecFREEDOM(MMRecStyle):
    """MMRec's ``freedom.py``. Setup (untimed): per modality the dense ``build_sim`` matrix,
    ``torch.topk`` indices, unit weights normalised with row sums + 1e-7 as a COO tensor, mixed
    with the model's modality weights (MMRec: ``mm_image_weight`` image, the rest text); the
    user–item ``norm_adj`` with degrees + 1e-7. Per epoch (``pre_epoch_processing``):
    ``torch.multinomial`` draws the kept training pairs from the global RNG, their adjacency is
    renormalised with ``torch.sparse.sum`` degrees. Step: ``torch.sparse.mm`` per layer, every
    item projected per modality, FREEDOM's ``bpr_loss`` and the projections' auxiliary ones.
    The pre-timing check compares the loss on the unpruned graph (the two prune with
    different random streams)."""

    def __init__(self, model, dataset, config, split: str = "valid"):
        from sgfd_fast.models.freedom import modality_weights

        super().__init__(model, dataset, config, split)
        m, dev = model, model.device
        nu, ni = m.n_users, m.n_items
        pairs = torch.as_tensor(dataset.train, dtype=torch.long).to(dev)
        rows = torch.cat([pairs[:, 0], pairs[:, 1] + nu])
        cols = torch.cat([pairs[:, 1] + nu, pairs[:, 0]])
        d = (torch.bincount(rows, minlength=nu + ni).double() + 1e-7).pow(-0.5)
        self.norm_adj = torch.sparse_coo_tensor(torch.stack([rows, cols]),
                                                (d[rows] * d[cols]).float(), (nu + ni,) * 2)
        self.masked_adj = self.norm_adj
        self.edge_indices = pairs.T.contiguous()                  # get_edge_info
        self.edge_values = self._normalize_adj_m(self.edge_indices)
        k = config["knn_k"]
        weights = modality_weights(m.modalities, config["mm_image_weight"])
        self.mm_adj = functools.reduce(torch.add, [w * self._knn_adj(m.features.feature(j), k)
                                                   for j, w in enumerate(weights)])

    def _knn_adj(self, x, k):
        """``get_knn_adj_mat``: top-k of the dense cosines, unit weights, D^-1/2 A D^-1/2."""
        _, knn_ind = _topk(_build_sim(x), k)
        n = x.shape[0]
        rows = torch.arange(n, device=x.device).unsqueeze(1).expand(-1, k)
        indices = torch.stack([rows.flatten(), knn_ind.flatten()])
        adj = torch.sparse_coo_tensor(indices, torch.ones_like(indices[0]), (n, n))
        r = (1e-7 + torch.sparse.sum(adj, -1).to_dense()).pow(-0.5)
        return torch.sparse_coo_tensor(indices, r[indices[0]] * r[indices[1]], (n, n))

    def _normalize_adj_m(self, indices):
        size = (self.m.n_users, self.m.n_items)
        adj = torch.sparse_coo_tensor(indices, torch.ones_like(indices[0]), size)
        row = (1e-7 + torch.sparse.sum(adj, -1).to_dense()).pow(-0.5)
        col = (1e-7 + torch.sparse.sum(adj.t(), -1).to_dense()).pow(-0.5)
        return row[indices[0]] * col[indices[1]]

    def begin_epoch(self, epoch, key):
        m = self.m
        if m.dropout <= 0:
            self.masked_adj = self.norm_adj
            return
        n_keep = int(self.edge_values.size(0) * (1.0 - m.dropout))
        keep = self.edge_indices[:, torch.multinomial(self.edge_values, n_keep)]
        values = self._normalize_adj_m(keep)
        keep[1] += m.n_users
        self.masked_adj = torch.sparse_coo_tensor(
            torch.cat([keep, torch.flip(keep, [0])], 1), torch.cat([values, values]),
            self.norm_adj.shape)

    def _forward(self, adj):
        m = self.m
        h = m.item_embedding
        for _ in range(m.n_mm_layers):
            h = torch.sparse.mm(self.mm_adj, h)
        ego = torch.cat([m.user_embedding, m.item_embedding])
        layers = [ego]
        for _ in range(m.n_ui_layers):
            ego = torch.sparse.mm(adj, ego)
            layers.append(ego)
        u, i = torch.stack(layers, dim=1).mean(dim=1).split([m.n_users, m.n_items])
        return u, i + h

    def _ranking_embeddings(self):
        return self._forward(self.norm_adj)

    def calculate_loss(self, users, items, negatives=None):
        m = self.m
        neg = negatives.reshape(-1)
        ua, ia = self._forward(self.masked_adj)
        u = ua[users]
        mf = _logsigmoid_bpr(u, ia[items], ia[neg])
        modal = sum(_logsigmoid_bpr(u, s[items], s[neg]) for s in self._students())
        return {"loss": mf + m.reg_weight * modal + self._sgfd(items, neg)}


class MMRecLATTICE(MMRecStyle):
    """MMRec's ``lattice.py`` (``cf_model: lightgcn``), the dense formulation. Setup (untimed):
    per modality the frozen graph as dense n×n matrices (``build_sim``,
    ``build_knn_neighbourhood``: top-k values scattered into zeros, ``compute_normalized_laplacian``:
    ``diagflat`` and two n×n ``torch.mm``). At an epoch's first step (``build_item_graph``, set
    by ``pre_epoch_processing``) the learned graph the same dense way from every item's
    projection, with gradient, mixed with ``softmax(modal_weight)``, then
    ``(1 - λ) learned + λ frozen``; later steps detach it. Every step: every item projected, the
    item–item layer a dense ``torch.mm``, LightGCN with COO ``torch.sparse.mm`` on ``D^-1 (A +
    I)``, LATTICE's ``bpr_loss`` and its ½‖·‖² / batch_size regulariser. Ranking
    (``full_sort_predict``) rebuilds the graph for every batch of users."""

    def __init__(self, model, dataset, config, split: str = "valid"):
        super().__init__(model, dataset, config, split)
        m = model
        self.original = [self._laplacian(self._knn(_build_sim(m.features.feature(j)), m.knn_k))
                         for j in range(len(m.modalities))]
        self.build_item_graph, self.item_adj = True, None

    @staticmethod
    def _knn(adj, k):
        """``build_knn_neighbourhood``: the top-k values of each row, zeros elsewhere (dense)."""
        knn_val, knn_ind = _topk(adj, k)
        return torch.zeros_like(adj).scatter_(-1, knn_ind, knn_val)

    @staticmethod
    def _laplacian(adj):
        """``compute_normalized_laplacian``: ``D^-1/2 A D^-1/2`` by two dense n×n products."""
        d_inv_sqrt = torch.pow(torch.sum(adj, -1), -0.5)
        d_inv_sqrt[torch.isinf(d_inv_sqrt)] = 0.0
        d_mat = torch.diagflat(d_inv_sqrt)
        return torch.mm(torch.mm(d_mat, adj), d_mat)

    def begin_epoch(self, epoch, key):
        self.build_item_graph = True

    def _forward(self, build_item_graph):
        m = self.m
        feats = self._students()
        if build_item_graph:
            w = torch.softmax(m.modal_weight, dim=0) if len(feats) > 1 else [1.0]
            learned = sum(w[j] * self._knn(_build_sim(x), m.knn_k) for j, x in enumerate(feats))
            learned = self._laplacian(learned)
            original = sum(w[j] * a for j, a in enumerate(self.original))
            self.item_adj = (1 - m.lambda_coeff) * learned + m.lambda_coeff * original
        else:
            self.item_adj = self.item_adj.detach()
        h = m.item_embedding
        for _ in range(m.n_mm_layers):
            h = torch.mm(self.item_adj, h)
        ego = torch.cat([m.user_embedding, m.item_embedding])
        u, i = _layer_mean(self.adj, ego, m.n_ui_layers).split([m.n_users, m.n_items])
        return u, i + F.normalize(h, p=2, dim=1)

    def _ranking_embeddings(self):
        return self._forward(True)

    def calculate_loss(self, users, items, negatives=None):
        m = self.m
        neg = negatives.reshape(-1)
        ua, ia = self._forward(self.build_item_graph)
        self.build_item_graph = False
        u, p, q = ua[users], ia[items], ia[neg]
        mf = _logsigmoid_bpr(u, p, q)
        reg = (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (q ** 2).sum()) / m.batch_size
        return {"loss": mf + m.reg_weight * reg + self._sgfd(items, neg)}


class MMRecMGCN(MMRecStyle):
    """MMRec's ``mgcn.py``. Setup (untimed): per modality the dense ``build_sim`` matrix,
    ``torch.topk`` values and indices, the ``sym`` laplacian of the cosine weights as a COO
    tensor (``build_knn_normalized_graph``); ``norm_adj`` and its user→item block ``R`` as COO.
    Step: every item projected and gated per modality, LightGCN content view and the item–item
    views with ``torch.sparse.mm``, the attention fuser, ``bpr_loss``, the ½‖·‖² / batch_size
    regulariser and MMRec's ``InfoNCE`` (exp / sum / log) on the batch's item and user rows."""

    def __init__(self, model, dataset, config, split: str = "valid"):
        super().__init__(model, dataset, config, split)
        m = model
        self.R = _coo(m.user_item)
        self.mm_adj = [self._knn_normalized(_build_sim(m.features.feature(j)), config["knn_k"])
                       for j in range(len(m.modalities))]

    @staticmethod
    def _knn_normalized(adj, k):
        """``build_knn_normalized_graph(norm_type='sym', is_sparse=True)``."""
        knn_val, knn_ind = _topk(adj, k)
        n = adj.shape[0]
        row = torch.arange(n, device=adj.device).repeat_interleave(k)
        col, val = knn_ind.flatten(), knn_val.flatten()
        deg = torch.zeros(n, dtype=val.dtype, device=val.device).index_add_(0, row, val)
        d = deg.pow(-0.5)
        d.masked_fill_(d == float("inf"), 0)
        return torch.sparse_coo_tensor(torch.stack([row, col]), d[row] * val * d[col], (n, n))

    def _forward(self):
        m = self.m
        content = _layer_mean(self.adj, torch.cat([m.user_embedding, m.item_embedding]),
                              m.n_ui_layers)
        views = []
        for j, feats in enumerate(self._students()):
            h = m.item_embedding * torch.sigmoid(m.purifiers[j](feats))
            for _ in range(m.n_layers):
                h = torch.sparse.mm(self.mm_adj[j], h)
            views.append(torch.cat([torch.sparse.mm(self.R, h), h]))
        weight = torch.softmax(torch.cat([m.query(v) for v in views], dim=-1), dim=-1)
        common = sum(weight[:, j].unsqueeze(1) * v for j, v in enumerate(views))
        sep = sum(torch.sigmoid(g(content)) * (v - common) for g, v in zip(m.preferences, views))
        side = (sep + common) / (len(views) + 1)
        return content + side, side, content

    @staticmethod
    def _info_nce(v1, v2, temperature=0.2):
        v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
        pos = torch.exp((v1 * v2).sum(dim=-1) / temperature)
        ttl = torch.exp(torch.matmul(v1, v2.transpose(0, 1)) / temperature).sum(dim=1)
        return torch.mean(-torch.log(pos / ttl))

    def _ranking_embeddings(self):
        return self._forward()[0].split([self.m.n_users, self.m.n_items])

    def calculate_loss(self, users, items, negatives=None):
        m = self.m
        nu, ni = m.n_users, m.n_items
        neg = negatives.reshape(-1)
        all_embeds, side, content = self._forward()
        ua, ia = all_embeds.split([nu, ni])
        u, p, q = ua[users], ia[items], ia[neg]
        mf = _logsigmoid_bpr(u, p, q)
        reg = (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (q ** 2).sum()) / m.batch_size
        side_u, side_i = side.split([nu, ni])
        content_u, content_i = content.split([nu, ni])
        cl = self._info_nce(side_i[items], content_i[items]) \
            + self._info_nce(side_u[users], content_u[users])
        return {"loss": mf + m.reg_weight * reg + m.cl_loss * cl + self._sgfd(items, neg)}


#: the "mmrec" provider's formulation of each model it covers
MMREC_STYLE = {"VBPR": MMRecVBPR, "LightGCN": MMRecLightGCN, "FREEDOM": MMRecFREEDOM,
               "LATTICE": MMRecLATTICE, "MGCN": MMRecMGCN}


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
    if model_name not in MMREC_STYLE:
        pytest.skip(f"the MMRec-style formulation covers {', '.join(MMREC_STYLE)} only")
    mmrec = MMREC_STYLE[model_name](run.model, run.dataset, run.config)
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
    import os
    import subprocess
    import sys

    import sgfd_fast

    cmd = [sys.executable, str(Path(__file__).with_name("peak_rss.py")), model_name,
           dataset_name, provider] + ([f"--batches={batches}"] if batches else [])
    # the sgfd_fast this process imported (a checkout run from its root is not on the child's
    # path: it would import whichever sgfd_fast is installed)
    path = [str(Path(sgfd_fast.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))})
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
    if provider == "released":
        check_released_agrees(model_name, dataset_name, device.type)
    elif provider == "mmrec":
        check_mmrec_agrees(model_name, dataset_name, device.type)
    run = Run(model_name, dataset_name, device, "bf16" if bf16 else "fp32")
    backend = "reference" if provider == "reference" else "auto"
    action = use_provider(run, provider)
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
