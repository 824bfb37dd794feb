"""VBPR (He & McAuley, AAAI 2016) as MMRec implements it, with optional SGFD.

* User u: ``[γ_u; θ_u]`` (an ID part and a visual part, each D wide: one (n_users, 2D)
  embedding, xavier_uniform). Item i: ``[γ_i; φ_i]`` with an ID embedding γ_i (n_items, D,
  xavier_uniform) and the projected features ``φ_i = Σ_m s_m(f_m,i)``, where s_m is, per
  modality, original VBPR's feature projection ``Linear(d_m, D)`` (``sgfd: false``; xavier_normal
  weight, the ``student_*`` keys change that head) or the SGFD student (``sgfd: true``,
  leaky-ReLU + L2 as in BM3). Score ``s(u, i) = [γ_u; θ_u] . [γ_i; φ_i]``.
* Loss per batch of B positive pairs, one sampled negative each (MMRec's ``BPRLoss`` and
  ``EmbLoss``, :func:`~sgfd_fast.models.base.bpr_loss`, :func:`~sgfd_fast.models.base.emb_loss`)::

      L = -mean log(1e-10 + sigmoid(s(u, p) - s(u, n)))
          + reg_weight * (||U[u]||_F + ||I[p]||_F + ||I[n]||_F) / B
          + SGFD losses on the positive and negative items              (sgfd: true)

  where ``I = [γ; φ]`` (the regulariser includes the projected features, as in MMRec; the norms
  are not squared).

Deliberate differences from MMRec: the features stay frozen in both variants (as for every
backbone here); MMRec projects the concatenation ``[f_text; f_image]`` with one Linear, ours sums
one Linear per modality (the same function of the same features: the blocks of one weight, with a
bias per modality), initialised per block (xavier_normal of each (D, d_m) block, where MMRec draws
one over the concatenated width) and with ``nn.Linear``'s bias initialisation (MMRec: zero), the
rule of every plain head here (``student_init``); the features are projected only for the batch's
distinct items in a training step (MMRec projects every item every step; the same values); the
regulariser's norms are of the whole global batch under torchrun (``Recommender.global_batch``),
so several processes train as one; training epochs are selected on the validation split
(``protocol: standard``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Recommender, bpr_loss, emb_loss, rows
from .features import item_features

__all__ = ["VBPR"]


class VBPR(Recommender):
    """VBPR with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size`` (D), ``reg_weight``, ``sgfd`` and, when ``sgfd`` is true,
    the SGFD keys of :meth:`SGFD.from_config <sgfd_fast.models.sgfd.SGFD.from_config>`.
    """

    n_negatives = 1

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        dim = config["embedding_size"]
        self.reg_weight = config["reg_weight"]
        self.user_embedding = nn.Parameter(
            nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.attach_features(item_features(
            dataset, config, model="VBPR", leaky=True,
            extractor=dict(activation="identity", norm="none", init="xavier_normal")))

    def item_rows(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[γ_i; φ_i]`` of ``items`` (all items when None), (n, 2D)."""
        f = self.features
        gamma = self.item_embedding if items is None else rows(self.item_embedding, items)
        phi = sum(f.student(j, items) for j in range(len(f.modalities)))
        return torch.cat([gamma, phi], dim=1)

    def calculate_loss(self, users, items, negatives=None):
        neg = negatives.reshape(-1)
        gu, gi, gn = self.whole_batch(users, items, neg)
        gn = gn.reshape(-1)
        n, g = users.numel(), gi.numel()
        # one projection per distinct item of the (global) batch, shared by BPR and regulariser
        uniq, inv = torch.unique(torch.cat([items, neg, gi, gn]), return_inverse=True)
        item = rows(self.item_rows(uniq), inv)
        p, q, gp, gq = item.split([n, n, g, g])
        u = rows(self.user_embedding, users)
        bpr = bpr_loss((u * p).sum(-1), (u * q).sum(-1))
        reg = emb_loss(rows(self.user_embedding, gu), gp, gq)
        return self.loss_output(bpr + self.reg_weight * reg, {"bpr": bpr, "reg": reg},
                                self.features.losses(torch.cat([items, neg])))

    def ranking_embeddings(self):
        return self.user_embedding, self.item_rows()
