"""GRCN (Wei et al., MM 2020) as the released SGFD-GRCN runs it (docs/RELEASED_CODE.md §5).

Node space: users ``[0, n_users)`` then items ``[n_users, n_users + n_items)``; the graph is the
training interactions in both directions (CSR rows = message targets, columns = sources).

Per modality m (CGCN, ``Model_routing.py`` L95-145):

* item features ``c_m = normalize(leaky_relu(S_m(F_m)))`` for all items, where S_m is the SGFD
  student (``sgfd: true``; GRCN runs SGFD without leaky-ReLU, ``is_pruning = has_act = False``, so
  the student is ``normalize(W F + b)``) or, for ``sgfd: false``, original GRCN's extractor
  ``Linear(d_m, D)``. Both give ``normalize(leaky_relu(W F + b))`` (leaky-ReLU is positively
  homogeneous), the released and the original GRCN function;
* user preferences ``p_m = normalize(P_m)``;
* routing, ``num_routing`` times: ``p_m = normalize(p_m + GAT(p_m <- c_m))`` where GAT at user u
  is ``sum_i softmax_i(p_u . c_i) c_i`` over u's training items (``ops.edge_softmax_aggregate``);
* ``x_m = [p_m; c_m]``, ``rep_m = x_m + GAT(x_m)`` over both directions, which also yields the
  attention weight ``alpha_m[e]`` of every edge e (softmax over the edges into its target).

Edge weights (``weight_mode = confid``): ``w[e] = max_m alpha_m[e] * conf[src(e), m]`` with a
trainable per-node confidence ``conf (n_nodes, M)``; no ReLU (``pruning = False``), so weights may
be negative. EGCN: ``x0 = normalize(E)``, ``x1 = A_w x0``, ``x2 = A_w x1`` (weightless sum
aggregation, ``ops.spmm_csr`` with the edge weights as values), ``id_rep = x0 + x1 + x2``.
Representation ``rep = [id_rep; rep_1; ...; rep_M]`` (width ``D * (M + 1)``), score = dot product.

Loss per batch (``Net.loss``, L310-340), with one sampled negative per positive pair::

    L = -mean log sigmoid(s(u, p) - s(u, n))
        + reg_weight * (mean(E[u]^2) + mean(E[p; n]^2) + sum_m mean(P_m[u]^2))
        + SGFD losses on the positive and negative items (sgfd: true)

Protocols (config ``protocol``), what differs:

* ``standard`` (correct behaviour): routing messages run item -> user, the direction that reaches
  users. The released code routes over the one-directional user -> item edge list, where no user is
  a message target, so its routing only re-normalises the preferences (docs/RELEASED_CODE.md §8 #10); ours actually
  routes. Evaluation recomputes ``rep`` from the current parameters, and training items are excluded
  from the ranking.
* ``legacy`` (paper parity): routing is the released no-op (``p_m = normalize(P_m)``); evaluation
  ranks with the ``rep`` of the last training forward (the released ``self.result``: computed
  before that batch's optimizer step; kept in the checkpointed buffer ``legacy_rep`` so that the
  selected epoch's copy is the one evaluated); ``legacy_mask_value = 1e-5`` makes
  :mod:`sgfd_fast.evaluation` score training items 1e-5 instead of excluding them, and the
  evaluation module reports the hit-normalised NDCG (docs/RELEASED_CODE.md §5.5).

Other deviations from the released code, in both protocols: ``log sigmoid`` is computed stably
(``F.logsigmoid``; same value where the released form is finite); edge dropout (released default 0)
and the unused ``reg_confid_loss`` are not implemented; the student runs as one product, not in 50
row chunks (same function); any number (>= 1) of modalities, fusion order = dataset modality order
(released: visual then text); the negatives come from the trainer's sampler (uniform over items
minus the user's training items, as released).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..graph import CSR, normalized_bipartite
from . import split
from .base import Recommender, rows
from .features import item_features, require_features

__all__ = ["GRCN"]


class GRCN(Recommender):
    """GRCN backbone with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size`` (D = dim_E = dim_C), ``num_routing``, ``reg_weight``,
    ``protocol``, ``sgfd`` and, when ``sgfd`` is true, the SGFD keys of :meth:`SGFD.from_config`.
    """

    n_negatives = 1
    legacy_metrics = "hit_normalized"
    legacy_mask_value = 1e-5

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        dim = config["embedding_size"]
        self.num_routing = config["num_routing"]
        self.reg_weight = config["reg_weight"]
        self.legacy = config["protocol"] == "legacy"
        require_features(dataset, "GRCN")  # before the per-modality parameters below
        n_nodes, n_mod = self.n_users + self.n_items, len(dataset.features)

        # xavier_normal on a (rows, D) matrix, as released for every node-level parameter
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, dim)))
        self.preferences = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, dim)))
            for _ in range(n_mod))
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, n_mod)))

        # the SGFD student, or original GRCN's CGCN.MLP (default nn.Linear initialisation)
        self.attach_features(item_features(
            dataset, config, model="GRCN", leaky=False,
            extractor=dict(activation="identity", norm="none", init="pytorch")))

        # Graphs (constants of the dataset: rebuilt, not checkpointed; ``.to()`` moves them). Both
        # directions of the training interactions; the edge order is the CSR order, shared by the
        # attention weights and the EGCN's edge weights (the normalized values go unused). Each
        # graph caches its transpose (the backward passes') on first use.
        self.graph = normalized_bipartite(self.n_users, self.n_items, dataset.train)
        # item -> user routing graph: rows users, columns item ids (0-based)
        self.route = CSR.from_coo(dataset.train[:, 0], dataset.train[:, 1], None, self.n_users,
                                  self.n_items)
        if self.legacy:
            # the released evaluation's ``self.result``; filled by every training forward
            self.register_buffer("legacy_rep", torch.zeros(n_nodes, dim * (n_mod + 1)))
            self.register_buffer("legacy_rep_set", torch.zeros((), dtype=torch.bool))

    def _routed_preference(self, j: int, content: torch.Tensor) -> torch.Tensor:
        if self.legacy:  # released: users receive no routing message (see module doc)
            return F.normalize(self.preferences[j])
        # routing is row-local (a user's query is its own preference): by user blocks
        lo, hi = split.bounds(self.split, self.n_users)
        route = split.rows_of(self.split, self.route)
        pref = F.normalize(self.preferences[j][lo:hi])
        for _ in range(self.num_routing):
            msg, _ = ops.edge_softmax_aggregate(
                route.rowptr, route.col, pref, content, content, validate=False,
                transpose=route.transpose())
            pref = F.normalize(pref + msg)
        return split.gather(self.split, pref, self.n_users)

    def forward(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(rep (n_users + n_items, D * (M + 1)), [pre-graph item features per modality])``.

        Under :attr:`split` (torchrun) each process computes its block of items' students, of
        users' routing and of the graph's rows (attention, edge weights, both EGCN layers), and
        the blocks are gathered (``models.split``)."""
        sp, n_nodes = self.split, self.n_users + self.n_items
        ilo, ihi = split.bounds(sp, self.n_items)
        raw = [split.gather(sp, self.features.student(j, x=self.features.rows(j)[ilo:ihi]),
                            self.n_items) for j in range(len(self.modalities))]
        lo, hi = split.bounds(sp, n_nodes)
        g = split.rows_of(sp, self.graph)  # this process's rows (message targets)
        rowptr, col, transpose = g.rowptr, g.col, g.transpose()
        reps, alphas = [], []
        for j, s in enumerate(raw):
            content = F.normalize(F.leaky_relu(s))
            x = torch.cat([self._routed_preference(j, content), content])
            msg, alpha = ops.edge_softmax_aggregate(rowptr, col, x[lo:hi], x, x,
                                                    transpose=transpose, validate=False)
            reps.append(x[lo:hi] + msg)
            alphas.append(alpha)
        # confidence of each edge's source node (released: edge_index[0] for u->i, [1] for i->u)
        weight = (torch.stack(alphas, 1) * self.confidence[col]).max(dim=1).values
        x0 = F.normalize(self.id_embedding)
        x1 = ops.spmm_csr(rowptr, col, weight, x0, transpose=transpose, validate=False)
        x2 = ops.spmm_csr(rowptr, col, weight, split.gather(sp, x1, n_nodes),
                          transpose=transpose, validate=False)
        rep = torch.cat([x0[lo:hi] + x1 + x2] + reps, dim=1)
        return split.gather(sp, rep, n_nodes), raw

    def calculate_loss(self, users, items, negatives=None):
        rep, raw = self.forward()
        if self.legacy:
            with torch.no_grad():
                self.legacy_rep.copy_(rep)
                self.legacy_rep_set.fill_(True)
        negatives = negatives.reshape(users.shape[0], -1)
        # one gather of the batch's rows of rep: its backward is one zero-filled (n_nodes, width)
        # gradient and one index_add, not one per gathered group (3 of each, ~7% of a CPU step)
        n, k = users.shape[0], negatives.shape[1]
        picked = rows(rep, torch.cat([users, self.n_users + items,
                                      self.n_users + negatives.reshape(-1)]))
        u, p, q = picked.split([n, n, n * k])
        pos = (u * p).sum(-1)
        neg = (u.unsqueeze(1) * q.view(n, k, -1)).sum(-1)
        bpr = -F.logsigmoid(pos.unsqueeze(1) - neg).mean()

        item_ids = torch.cat([items, negatives.reshape(-1)])
        reg = rows(self.id_embedding, users).pow(2).mean() \
            + rows(self.id_embedding, self.n_users + item_ids).pow(2).mean()
        for pref in self.preferences:
            reg = reg + rows(pref, users).pow(2).mean()
        total = bpr + self.reg_weight * reg
        uniq = torch.unique(item_ids)  # the students of the batch's items are computed already
        return self.loss_output(total, {"bpr": bpr, "reg": reg}, self.features.losses(
            item_ids, students=[rows(s, uniq) for s in raw]))

    def ranking_embeddings(self):
        if self.legacy and bool(self.legacy_rep_set):
            rep = self.legacy_rep
        else:
            rep = self.forward()[0]
        return rep[:self.n_users], rep[self.n_users:]

    def student_features(self):
        """The item features the graph consumes, ``normalize(leaky_relu(S_m(F_m)))``."""
        return {m: F.normalize(F.leaky_relu(s))
                for m, s in self.features.student_features().items()}
