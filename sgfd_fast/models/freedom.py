"""FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation", ACM MM 2023) as MMRec implements it, with optional SGFD.

* Item–item graph, frozen, built once from the raw features: per modality the k nearest items by
  cosine (``knn_k``, the item itself included; :func:`~sgfd_fast.ops.knn_graph`), unit weights,
  ``S_m = D^-1/2 A_m D^-1/2`` with D the row sums + 1e-7 (values 1/(k + 1e-7);
  :func:`~sgfd_fast.ops.degree_normalize`), mixed ``S = w S_image + (1 - w) S_text``
  (``mm_image_weight`` = w; the union of the patterns).
* User–item graph: the training graph ``Â = D^-1/2 A D^-1/2`` for ranking; for training, rebuilt
  every epoch by degree-sensitive pruning: keep ``int(nnz (1 - dropout))`` training pairs drawn
  without replacement with probability ∝ ``(d_u + 1e-7)^-1/2 (d_i + 1e-7)^-1/2`` (the degrees of
  the whole training graph; :func:`~sgfd_fast.ops.sample_edges`, keyed by the epoch's key), then
  ``Â_pruned`` normalised with the kept graph's degrees.
* Embeddings: ID embeddings E_u, E_i (xavier_uniform); ``h = S^{n_mm_layers} E_i``;
  ``u, i = split(mean_{l=0..n_ui_layers} Â^l [E_u; E_i])``; items ``i + h``; score ``u . (i + h)``.
* Loss per batch of B positive pairs, one sampled negative each (FREEDOM's own BPR, without the
  1e-10 of MMRec's ``BPRLoss``)::

      bpr(a, b) = -mean log sigmoid(a - b)
      L = bpr(u·(i_p + h_p), u·(i_n + h_n)) + reg_weight · Σ_m bpr(u·s_m(p), u·s_m(n))
          + SGFD losses on the positive and negative items                  (sgfd: true)

  with u from the pruned graph and s_m the modality's projection ``Linear(d_m, D)`` (MMRec's
  ``image_trs``/``text_trs``, nn.Linear's initialisation) or, with ``sgfd: true``, the SGFD
  student (leaky-ReLU + L2 as in BM3).

Modalities: MMRec has an image and a text one. With one modality its graph is used alone; with
several, the one named ``image`` gets ``mm_image_weight`` and the others share the rest equally,
and without an ``image`` modality all weigh the same. A modality with fewer than ``knn_k`` items
keeps every item as a neighbour (MMRec's ``torch.topk`` would fail).

Deliberate differences from MMRec: the features stay frozen (MMRec fine-tunes them through its
``nn.Embedding.from_pretrained(freeze=False)``; as for every backbone here); MMRec's
``feat_embed_dim`` is ``embedding_size`` here (its auxiliary BPR needs the two equal); the
user–item graphs give an isolated node an empty row (MMRec adds 1e-7 to every degree: other
weights differ by that relative amount, as for LightGCN); ties in the kNN go to the lower item id
and a zero feature row has cosine 0 (``ops.knn_graph``); the pruning draws its edges from a
counter-based stream keyed by (seed, epoch) (the distribution of MMRec's ``torch.multinomial``,
the same edges on every process); training epochs are selected on the validation split
(``protocol: standard``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..graph import CSR, normalized_bipartite
from .base import Recommender, rows
from .features import item_features

__all__ = ["FREEDOM"]


def _bpr(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """FREEDOM's ``bpr_loss``: ``-mean log sigmoid(pos - neg)``."""
    return -F.logsigmoid(pos - neg).mean()


def modality_weights(modalities: list[str], image_weight: float) -> list[float]:
    """The mixing weight of each modality's kNN graph (see the module docstring)."""
    if len(modalities) == 1:
        return [1.0]
    if "image" not in modalities:
        return [1.0 / len(modalities)] * len(modalities)
    rest = (1.0 - image_weight) / (len(modalities) - 1)
    return [image_weight if m == "image" else rest for m in modalities]


def item_item_graph(features: list[torch.Tensor], weights: list[float], k: int) -> CSR:
    """``Σ_m w_m D^-1/2 A_m D^-1/2`` of the modalities' kNN graphs (unit weights, D + 1e-7)."""
    n = features[0].shape[0]
    rows_, cols, vals = [], [], []
    for x, w in zip(features, weights):
        col, _ = ops.knn_graph(x, k)
        keep = col >= 0  # fewer than k items: every item is a neighbour
        row = torch.arange(n).repeat_interleave(keep.sum(1))
        col = col[keep]
        rowptr = torch.zeros(n + 1, dtype=torch.int64)
        rowptr[1:] = keep.sum(1).cumsum(0)
        val = ops.degree_normalize(rowptr, col, torch.ones(col.numel(), dtype=torch.float64),
                                   "sym", 1e-7)
        rows_.append(row), cols.append(col), vals.append(w * val)
    row, col, val = torch.cat(rows_), torch.cat(cols), torch.cat(vals)
    # the union of the patterns: an edge two modalities share carries the sum of their values
    keys, inverse = torch.unique(row * n + col, return_inverse=True)
    val = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inverse, val)
    return CSR.from_coo(keys // n, keys % n, val.float(), n, n)


class FREEDOM(Recommender):
    """FREEDOM with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size`` (D), ``knn_k``, ``mm_image_weight``, ``n_mm_layers``,
    ``n_ui_layers``, ``dropout`` (the share of training pairs pruned per epoch), ``reg_weight``,
    ``sgfd`` and, when ``sgfd`` is true, the SGFD keys of
    :meth:`SGFD.from_config <sgfd_fast.models.sgfd.SGFD.from_config>`.
    """

    n_negatives = 1

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        dim = config["embedding_size"]
        self.n_mm_layers = config["n_mm_layers"]
        self.n_ui_layers = config["n_ui_layers"]
        self.reg_weight = config["reg_weight"]
        self.dropout = config["dropout"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        f = self.attach_features(item_features(
            dataset, config, model="FREEDOM", leaky=True,
            extractor=dict(activation="identity", norm="none", init="pytorch")))
        # constants of the dataset: rebuilt, not checkpointed; ``.to()`` moves them
        self.item_graph = item_item_graph(
            [f.feature(j) for j in range(len(f.modalities))],
            modality_weights(f.modalities, config["mm_image_weight"]), config["knn_k"])
        self.graph = normalized_bipartite(self.n_users, self.n_items, dataset.train)
        self.train_graph = self.graph  # pruned by begin_epoch
        self._pairs = np.asarray(dataset.train, dtype=np.int64).reshape(-1, 2)
        pairs = torch.from_numpy(self._pairs)
        d_u = torch.bincount(pairs[:, 0], minlength=self.n_users).double() + 1e-7
        d_i = torch.bincount(pairs[:, 1], minlength=self.n_items).double() + 1e-7
        self._edge_weight = d_u[pairs[:, 0]].pow(-0.5) * d_i[pairs[:, 1]].pow(-0.5)

    def begin_epoch(self, epoch: int, key: int) -> None:
        """Degree-sensitive pruning of the training graph for this epoch (MMRec's
        ``pre_epoch_processing``), drawn from ``key``: the same edges on every process."""
        if self.dropout <= 0 or not len(self._pairs):
            self.train_graph = self.graph
            return
        n_keep = int(len(self._pairs) * (1.0 - self.dropout))
        kept = ops.sample_edges(self._edge_weight, n_keep, key).numpy()
        self.train_graph = normalized_bipartite(self.n_users, self.n_items, self._pairs[kept]) \
            .to(self.device, self.user_embedding.dtype)

    def forward(self, graph: CSR) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users (n_users, D), items (n_items, D))`` propagated over ``graph`` (user–item) and
        the item–item graph."""
        g = self.item_graph
        h = self.item_embedding
        for _ in range(self.n_mm_layers):
            h = ops.spmm_csr(g.rowptr, g.col, g.val, h, transpose=g.transpose(), validate=False)
        ego = torch.cat([self.user_embedding, self.item_embedding])
        users, items = self.propagate(graph, ego, self.n_ui_layers).split(
            [self.n_users, self.n_items])
        return users, items + h

    def calculate_loss(self, users, items, negatives=None):
        u_all, i_all = self.forward(self.train_graph)
        neg = negatives.reshape(-1)
        n = users.numel()
        u = rows(u_all, users)
        bpr = _bpr((u * rows(i_all, items)).sum(-1), (u * rows(i_all, neg)).sum(-1))
        # each modality's projection once per distinct item of the batch
        uniq, inv = torch.unique(torch.cat([items, neg]), return_inverse=True)
        modal = 0.0
        for j in range(len(self.features.modalities)):
            p, q = rows(self.features.student(j, uniq), inv).split([n, n])
            modal = modal + _bpr((u * p).sum(-1), (u * q).sum(-1))
        return self.loss_output(bpr + self.reg_weight * modal, {"bpr": bpr, "modal_bpr": modal},
                                self.features.losses(torch.cat([items, neg])))

    def ranking_embeddings(self):
        return self.forward(self.graph)
