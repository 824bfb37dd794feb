"""MGCN (Yu et al., "Multi-View Graph Convolutional Network for Multimedia Recommendation",
ACM MM 2023) as MMRec implements it, with optional SGFD.

* Item–item graphs, frozen, built once from the raw features, one per modality m: the k nearest
  items by cosine (``knn_k``, the item itself included; :func:`~sgfd_fast.ops.knn_graph`) weighted
  by their cosines (clamped at 0), ``S_m = D^-1/2 A_m D^-1/2`` with D the row sums
  (:func:`~sgfd_fast.ops.degree_normalize`; MMRec's ``build_knn_normalized_graph``, ``sym``).
* User–item graph: the training graph ``Â = D^-1/2 A D^-1/2``; R its user→item block.
* Behaviour-guided purifier: ``Ẽ_m = E_i ⊙ σ(W_m T_m(f_m) + b_m)`` with ``T_m`` the modality's
  projection ``Linear(d_m, D)`` (MMRec's ``image_trs``/``text_trs``) or, with ``sgfd: true``, the
  SGFD student (leaky-ReLU + L2 as in BM3): SGFD's student replaces MMRec's projection.
* Views: content ``c = mean_{l=0..n_ui_layers} Â^l [E_u; E_i]`` (LightGCN); per modality
  ``h_m = S_m^{n_layers} Ẽ_m`` and ``e_m = [R h_m; h_m]``.
* Behaviour-aware fuser: ``α = softmax_m(q(e_m))`` with ``q = Linear(D, 1, no bias) ∘ tanh ∘
  Linear(D, D)`` shared by the modalities; ``common = Σ_m α_m e_m``;
  ``side = (common + Σ_m σ(P_m c + p_m) ⊙ (e_m - common)) / (M + 1)``; final ``z = c + side``;
  score ``z_u · z_i``.
* Loss per batch of B positive pairs, one sampled negative each::

      L = -mean log sigmoid(z_u·z_p - z_u·z_n)
          + reg_weight · ½ (‖z_u‖² + ‖z_p‖² + ‖z_n‖²) / train_batch_size
          + cl_loss · (InfoNCE(side_p, c_p) + InfoNCE(side_u, c_u))
          + SGFD losses on the positive and negative items                   (sgfd: true)

  with ``InfoNCE(a, b) = mean_i -log softmax_j(â_i · b̂_j / 0.2)[i]`` over the batch's rows
  (L2-normalised rows, in-batch negatives, duplicates kept; MMRec's temperature 0.2).

Modalities: MMRec has an image and a text one and MGCN needs both; a dataset with one modality is
a DataError. With more than two, every modality gets its purifier, view and preference gate and
the side embedding divides by M + 1 (MMRec's ``/ 3`` for two).

Deliberate differences from MMRec: the features stay frozen (MMRec fine-tunes them through its
``nn.Embedding.from_pretrained(freeze=False)``; as for every backbone here); the kNN graphs are
built in float64 and stored in float32, ties go to the lower item id and a zero feature row has
cosine 0 (``ops.knn_graph``); a negative cosine among an item's k nearest weighs 0 (MMRec keeps
it, and a row whose weights sum below 0 turns its normalisation NaN; on office no cosine among
the 10 nearest is negative, so the graphs are MMRec's); a modality with fewer than ``knn_k``
items keeps every item as a neighbour (MMRec's ``torch.topk`` would fail); the learning rate
stays constant (MMRec's ``learning_rate_scheduler: [0.96, 50]`` has no counterpart in this
trainer); under torchrun the InfoNCE is of the whole global batch (``Recommender.global_batch``),
so several processes train as one; training epochs are selected on the validation split
(``protocol: standard``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import DataError
from ..graph import CSR, normalized_bipartite
from .base import Recommender, rows
from .features import item_features
from .heads import Linear

__all__ = ["MGCN"]

#: MMRec's InfoNCE temperature (hard-coded there as well)
TEMPERATURE = 0.2


def knn_cosine_graph(x: torch.Tensor, k: int) -> CSR:
    """``D^-1/2 A D^-1/2`` of the kNN graph of ``x`` (n, d) weighted by the cosines clamped at 0,
    D the row sums: an (n, n) float32 CSR, computed in float64. A zero feature row's row is 0."""
    n = x.shape[0]
    col, _ = ops.knn_graph(x, k)
    keep = col >= 0  # fewer than k items: every item is a neighbour
    row = torch.arange(n).repeat_interleave(keep.sum(1))
    col = col[keep]
    unit = F.normalize(x.double(), dim=1)
    # the edges' cosines again, in float64; clamped: a negative row sum has no D^-1/2
    weight = (unit[row] * unit[col]).sum(1).clamp(min=0)
    g = CSR.from_coo(row, col, weight, n, n)
    return CSR(g.rowptr, g.col, ops.degree_normalize(g.rowptr, g.col, g.val, "sym").float(), n,
               validate=False)


def user_item_block(graph: CSR, n_users: int, n_items: int) -> CSR:
    """R, the (n_users, n_items) user→item block of the bipartite ``graph`` (users first)."""
    end = int(graph.rowptr[n_users])
    counts = graph.rowptr[1:n_users + 1] - graph.rowptr[:n_users]
    row = torch.arange(n_users).repeat_interleave(counts)
    return CSR.from_coo(row, graph.col[:end] - n_users, graph.val[:end], n_users, n_items)


def _spmm(g: CSR, x: torch.Tensor) -> torch.Tensor:
    return ops.spmm_csr(g.rowptr, g.col, g.val, x, transpose=g.transpose(), validate=False)


def info_nce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MMRec's MGCN ``InfoNCE(a, b, 0.2)``: rows i of ``a`` and ``b`` (B, D) are the positive
    pairs, the other rows of ``b`` the negatives; a scalar."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / TEMPERATURE
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


class MGCN(Recommender):
    """MGCN with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size`` (D), ``knn_k``, ``n_layers`` (item–item layers),
    ``n_ui_layers``, ``reg_weight``, ``cl_loss``, ``train_batch_size`` (the regulariser's divisor)
    and, when ``sgfd`` is true, the SGFD keys of
    :meth:`SGFD.from_config <sgfd_fast.models.sgfd.SGFD.from_config>`.

    Raises:
        DataError: the dataset has fewer than two item feature modalities.
    """

    n_negatives = 1

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        if len(dataset.features) < 2:
            from . import MODELS  # the registry, read when needed: it imports this module

            one = ", ".join(m for m in MODELS if m not in ("MGCN", "LightGCN"))  # LightGCN: none
            chosen = config.get("modalities")  # name the narrowing, not only the dataset
            source = f"dataset {dataset.name!r}" + (
                f" with modalities=[{','.join(chosen)}]" if chosen else "")
            raise DataError(
                f"MGCN needs two item feature modalities (MMRec: image and text), but "
                f"{source} has {len(dataset.features)} "
                f"({', '.join(dataset.features) or 'none'}); use a dataset with two (office: text "
                f"and relation) without narrowing `modalities` to one, or a backbone that takes "
                f"one modality ({one})")
        dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.n_ui_layers = config["n_ui_layers"]
        self.reg_weight = config["reg_weight"]
        self.cl_loss = config["cl_loss"]
        self.batch_size = config["train_batch_size"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        f = self.attach_features(item_features(
            dataset, config, model="MGCN", leaky=True,
            extractor=dict(activation="identity", norm="none", init="pytorch")))
        n_mod = len(f.modalities)
        self.purifiers = nn.ModuleList(Linear(f.width(j), dim) for j in range(n_mod))
        self.query = nn.Sequential(Linear(dim, dim), nn.Tanh(), Linear(dim, 1, bias=False))
        self.preferences = nn.ModuleList(Linear(dim, dim) for _ in range(n_mod))
        # constants of the dataset: rebuilt, not checkpointed; ``.to()`` moves them
        for j in range(n_mod):
            setattr(self, f"item_graph{j}", knn_cosine_graph(f.feature(j), config["knn_k"]))
        self.graph = normalized_bipartite(self.n_users, self.n_items, dataset.train)
        self.user_item = user_item_block(self.graph, self.n_users, self.n_items)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(content, side)``, each (n_users + n_items, D), users first: the user–item view and
        the fused item–item views (their sum is what scores)."""
        content = self.propagate(self.graph, torch.cat([self.user_embedding, self.item_embedding]),
                                 self.n_ui_layers)
        views = []
        for j in range(len(self.features.modalities)):
            h = self.item_embedding * torch.sigmoid(self.purifiers[j](self.features.student(j)))
            for _ in range(self.n_layers):
                h = _spmm(getattr(self, f"item_graph{j}"), h)
            views.append(torch.cat([_spmm(self.user_item, h), h]))
        views = torch.stack(views, 1)  # (N, M, D)
        alpha = torch.softmax(self.query(views), dim=1)  # (N, M, 1)
        common = (alpha * views).sum(1)
        side = common
        for j, gate in enumerate(self.preferences):
            side = side + torch.sigmoid(gate(content)) * (views[:, j] - common)
        return content, side / (len(self.preferences) + 1)

    def calculate_loss(self, users, items, negatives=None):
        content, side = self.forward()
        u_all, i_all = (content + side).split([self.n_users, self.n_items])
        neg = negatives.reshape(-1)
        u, p, n = rows(u_all, users), rows(i_all, items), rows(i_all, neg)
        bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        # a sum over the batch's rows: divided by the shard's share (docs/DEVELOPING.md)
        reg = 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) \
            / self.batch_size / self.shard_fraction
        # in-batch negatives couple the rows: the whole global batch on every process
        gu, gi, _ = self.whole_batch(users, items, neg)
        c_u, c_i = content.split([self.n_users, self.n_items])
        s_u, s_i = side.split([self.n_users, self.n_items])
        cl = info_nce(rows(s_i, gi), rows(c_i, gi)) + info_nce(rows(s_u, gu), rows(c_u, gu))
        total = bpr + self.reg_weight * reg + self.cl_loss * cl
        return self.loss_output(total, {"bpr": bpr, "reg": reg, "cl": cl},
                                self.features.losses(torch.cat([items, neg])))

    def ranking_embeddings(self):
        content, side = self.forward()
        return (content + side).split([self.n_users, self.n_items])
