"""LightGCN (He et al., SIGIR 2020) as MMRec implements it: the graph-only control.

* ID embeddings E_u, E_i (xavier_uniform), propagated over the normalised training graph
  ``Â = D^-1/2 A D^-1/2`` (users then items) with the mean of layers 0..L:
  ``u, i = split(mean_l Â^l [E_u; E_i])``; score ``s(u, i) = u . i``.
* Loss per batch of B positive pairs, one sampled negative each (MMRec's ``BPRLoss`` and
  ``EmbLoss``, :func:`~sgfd_fast.models.base.bpr_loss`, :func:`~sgfd_fast.models.base.emb_loss`)::

      L = -mean log(1e-10 + sigmoid(s(u, p) - s(u, n)))
          + reg_weight * (||E_u[u]||_F + ||E_i[p]||_F + ||E_i[n]||_F) / B

  (the norms are of the layer-0 rows, not squared).

LightGCN consumes no item features: ``sgfd: true`` is a ConfigError (``configs/model/LightGCN.yaml``
sets ``sgfd: false``). Deliberate differences from MMRec: an isolated node's row of ``Â`` is empty
(MMRec adds 1e-7 to every degree; the weights of other edges differ from ours by that relative
amount); the regulariser's norms are of the whole global batch under torchrun
(``Recommender.global_batch``), so several processes train as one; training epochs are selected
on the validation split (``protocol: standard``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..graph import normalized_bipartite
from .base import Recommender, bpr_loss, emb_loss, rows

__all__ = ["LightGCN"]


class LightGCN(Recommender):
    """LightGCN; see the module docstring. Config keys: ``embedding_size``, ``n_layers``,
    ``reg_weight``; ``sgfd`` must be false.

    Raises:
        ConfigError: ``sgfd: true`` (nothing to distil into: no item features).
    """

    n_negatives = 1

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        if config["sgfd"]:
            from . import MODELS  # the registry, read when needed: it imports this module

            others = ", ".join(m for m in MODELS if m != "LightGCN")
            raise ConfigError("sgfd=true, but LightGCN consumes no item features, so SGFD has no "
                              "student to feed: use sgfd=false (LightGCN's default), or a backbone "
                              f"with item features ({others})")
        dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        # a constant of the dataset: rebuilt, not checkpointed; ``.to()`` moves it
        self.graph = normalized_bipartite(self.n_users, self.n_items, dataset.train)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users (n_users, D), items (n_items, D))``: the propagated embeddings."""
        ego = torch.cat([self.user_embedding, self.item_embedding])
        return self.propagate(self.graph, ego, self.n_layers).split([self.n_users, self.n_items])

    def calculate_loss(self, users, items, negatives=None):
        u_all, i_all = self.forward()
        neg = negatives.reshape(-1)
        u = rows(u_all, users)
        bpr = bpr_loss((u * rows(i_all, items)).sum(-1), (u * rows(i_all, neg)).sum(-1))
        gu, gi, gn = self.whole_batch(users, items, neg)
        reg = emb_loss(rows(self.user_embedding, gu), rows(self.item_embedding, gi),
                       rows(self.item_embedding, gn.reshape(-1)))
        return self.loss_output(bpr + self.reg_weight * reg, {"bpr": bpr, "reg": reg}, {})

    def ranking_embeddings(self):
        return self.forward()
