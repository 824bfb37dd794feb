"""MAML (Liu et al., MM 2019) as the released SGFD-MAML runs it, ported from TensorFlow 1.x
(``MAML/MAML.py``; docs/RELEASED_CODE.md §6).

Parameters: user embeddings U (n_users, D) ~ N(0, 1/D); item embeddings V (n_items, D),
initialised to the item feature projection f; a feature projection MLP and an attention MLP.

* Item features ``f = clip_rows(L4(relu(L3(l2n(relu(L2(l2n(relu(L1(l2n(x))))))))))``, widths
  ``H, H/2, H/2, D`` (``hidden_layer_dim`` H), each row clipped to norm ``clip_norm``; ``x`` is the
  concatenation of the SGFD students (``sgfd: true``, leaky-ReLU students) or of the raw item
  features (``sgfd: false``, original MAML, which has no feature head: the ``student_*`` keys
  apply only with SGFD). The released ``dropout`` calls run with TF's default
  ``training=False``: no dropout here either.
* Attention for a (user, item) pair:
  ``a = D * softmax(relu(A2(l2n(tanh(A1(l2n([u; v_i; f_i])))))))``
  (A1: 3D -> 5D, A2: 5D -> D); distance ``d(u, i) = sum_k (a_k u_k - a_k v_ik)^2``; score = -d.
* Loss per batch of B positive pairs, each with 4 sampled negatives n_1..n_4 (sums, as released)::

      sum_b relu(d(u,p) - min_k d(u,n_k) + margin)
            * log(1 + n_items * mean_k[d(u,p) - d(u,n_k) + margin > 0])
      + feature_l2_reg * sum_i ||v_i - f_i||^2                  (all items)
      + cov_loss_weight * sum_{j != k} cov([V; U])_{jk}          (signed sum, as released)
      + SGFD losses on the positive and negative items          (sgfd: true)

* After every optimizer step the rows of U and V are clipped to norm ``clip_norm``:
  :meth:`post_step` does it (the trainer calls it after each step); :meth:`calculate_loss` and
  :meth:`score_users` also call it first (clipping is idempotent), so a caller that skips the hook
  still trains and ranks with clipped rows.

Protocols (config ``protocol``), what differs:

* ``standard``: every parameter is trained (SGFD teacher/student/classifiers/fusion, projection and
  attention MLPs, U, V).
* ``legacy``: the released optimiser only updates ``var_list=[U, V]``: the SGFD module, the
  projection and the attention MLPs keep their initial values (``requires_grad=False``), so the
  student is a fixed random projection and the SGFD losses change nothing (they are still logged).

Deviations from the released code, in both protocols: the SGFD module is the shared PyTorch one
(:mod:`sgfd_fast.models.sgfd`: teacher widths by the ``decay_ration = 4`` rule with L2-normalised
outputs and students, one classifier per modality with K = the dataset's label count, mean-reduced
CE/LD/FD) instead of the TF variant (decay 2, no L2 normalisation, one classifier shared by all
modalities with K hard-coded to 25, batch-summed CE and vector-valued LD/FD); the released
``kd_loss = (visual_kd + visual_kd) / 2`` (only the textual LD, docs/RELEASED_CODE.md §8 #19) is not reproduced: in the
standard protocol both modalities' LD count, and under ``legacy`` SGFD trains nothing, so the bug
could only change the logged value. The ``l2_regularizer(100)`` of the attention layers is not
applied (TF1 only collects it; the released loss never adds it). One epoch is one pass over the
training pairs (released: 100 batches of 256 per "epoch"). ``ranking_embeddings`` is None:
evaluation ranks with :meth:`ranking_topk` (``ops.attentive_distance_topk``: fused and tiled, top-k
inside, no users x items block; its default ``precision="auto"`` ranks through the exact bf16
filter on CPUs with AVX512-BF16, the fp32 result bit for bit, under either model precision); :meth:`score_users` gives the same scores as dense blocks (the
first attention layer split into user and item parts, so no (users x items x 3D) input exists).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .base import Recommender, rows
from .features import item_features
from .heads import Linear

__all__ = ["MAML"]

# elements of one (users x items x 5D) attention block in score_users (float32: 16 MiB; larger
# blocks measured slower on a 2-core CPU)
_SCORE_BLOCK = 1 << 22


def _clip_rows(x: torch.Tensor, clip: float) -> torch.Tensor:
    """TF ``clip_by_norm(x, clip, axes=[1])``: rows longer than ``clip`` are scaled down to it."""
    return x * (clip / x.norm(dim=-1, keepdim=True).clamp(min=clip))


def _dense(n_in: int, n_out: int) -> Linear:
    """``tf.layers.dense`` initialisation: glorot-uniform kernel, zero bias."""
    layer = Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MAML(Recommender):
    """MAML backbone with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size`` (D), ``hidden_layer_dim``, ``margin``, ``clip_norm``,
    ``feature_l2_reg``, ``feature_projection_scaling_factor``, ``use_rank_weight``,
    ``cov_loss_weight`` (0 disables the covariance loss), ``protocol``, ``sgfd`` and, when ``sgfd``
    is true, the SGFD keys of :meth:`SGFD.from_config`.
    """

    n_negatives = 4
    legacy_metrics = "hit_normalized"

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        dim = config["embedding_size"]
        hidden = config["hidden_layer_dim"]
        self.margin = config["margin"]
        self.clip_norm = config["clip_norm"]
        self.feature_l2_reg = config["feature_l2_reg"]
        self.scaling = config["feature_projection_scaling_factor"]
        self.use_rank_weight = config["use_rank_weight"]
        self.cov_loss_weight = config["cov_loss_weight"]
        self.legacy = config["protocol"] == "legacy"

        # x: the SGFD students, or the raw features (original MAML has no feature head)
        features = self.attach_features(item_features(dataset, config, model="MAML", leaky=True,
                                                      extractor=None))
        width = sum(features.width(j) for j in range(len(features.modalities)))
        self.projection = nn.ModuleList([_dense(width, hidden), _dense(hidden, hidden // 2),
                                         _dense(hidden // 2, hidden // 2),
                                         _dense(hidden // 2, dim)])
        self.attention = nn.ModuleList([_dense(3 * dim, 5 * dim), _dense(5 * dim, dim)])
        self.user_embedding = nn.Parameter(torch.randn(self.n_users, dim) / math.sqrt(dim))
        with torch.no_grad():  # released: V is assigned the feature projection after init
            self.item_embedding = nn.Parameter(self.item_projection()[0].clone())
        if self.legacy:  # released var_list=[U, V]: nothing else is ever updated
            for module in (features, self.projection, self.attention):
                module.requires_grad_(False)

    # -- features and metric ------------------------------------------------------------------

    def item_projection(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(f (n_items, D), [x per modality: the SGFD students or the raw features])``."""
        students = [self.features.student(j) for j in range(len(self.modalities))]
        h = torch.cat(students, dim=1)
        if h.dtype == torch.bfloat16:  # plain MAML's raw features (precision: bf16)
            h = h.float()  # the norms in float32
        for layer in self.projection[:-1]:
            h = F.relu(layer(F.normalize(h, dim=-1)))
        return _clip_rows(self.projection[-1](h) * self.scaling, self.clip_norm), students

    def _weights(self, hidden: torch.Tensor) -> torch.Tensor:
        """Attention weights from the first layer's pre-activation, (..., D)."""
        a = F.relu(self.attention[1](F.normalize(torch.tanh(hidden), dim=-1)))
        return a.shape[-1] * torch.softmax(a, dim=-1)

    def distance(self, u: torch.Tensor, v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Attentive distance of broadcastable (..., D) user, item and item-feature rows, (...)."""
        u, v, f = torch.broadcast_tensors(u, v, f)
        a = self._weights(self.attention[0](F.normalize(torch.cat([u, v, f], -1), dim=-1)))
        return (a * u - a * v).pow(2).sum(-1)

    @torch.no_grad()
    def post_step(self) -> None:
        """Clip every row of U and V to norm ``clip_norm`` (the released step's second half)."""
        for emb in (self.user_embedding, self.item_embedding):
            emb.copy_(_clip_rows(emb, self.clip_norm))

    # -- training -----------------------------------------------------------------------------

    def calculate_loss(self, users, items, negatives=None):
        self.post_step()
        f, students = self.item_projection()
        U, V = self.user_embedding, self.item_embedding
        negatives = negatives.reshape(users.shape[0], -1)
        u = rows(U, users)
        d_pos = self.distance(u, rows(V, items), rows(f, items))
        d_neg = self.distance(u.unsqueeze(1), rows(V, negatives), rows(f, negatives))
        hinge = F.relu(d_pos - d_neg.min(dim=1).values + self.margin)
        if self.use_rank_weight:
            with torch.no_grad():  # WARP weight: estimated rank of the positive, a constant
                impostors = (d_pos.unsqueeze(1) - d_neg + self.margin > 0).float().mean(1)
            hinge = hinge * torch.log1p(impostors * self.n_items)
        # a sum over the batch's rows: a shard's share is scaled back (base.shard_fraction)
        metric = hinge.sum() / self.shard_fraction
        feature = self.feature_l2_reg * (V - f).pow(2).sum()
        total = metric + feature
        parts = {"metric": metric, "feature": feature}
        if self.cov_loss_weight > 0:
            x = torch.cat([V, U])
            x = x - x.mean(0)
            cov = x.T @ x / x.shape[0]
            cov_loss = self.cov_loss_weight * (cov.sum() - cov.diagonal().sum())
            total = total + cov_loss
            parts["cov"] = cov_loss
        item_ids = torch.cat([items.unsqueeze(1), negatives], 1).reshape(-1)
        uniq = torch.unique(item_ids)  # the students of the batch's items are computed already
        return self.loss_output(total, parts, self.features.losses(
            item_ids, students=[rows(s, uniq) for s in students]))

    # -- ranking ------------------------------------------------------------------------------

    def ranking_topk(self, users, mask_rowptr, mask_col, k, mask_value):
        """Top-k by ``-d(u, i)`` through ``ops.attentive_distance_topk``: the same function as
        :meth:`score_users`, fused and tiled, with no (users x items) block."""
        self.post_step()
        f, _ = self.item_projection()
        a1, a2 = self.attention
        return ops.attentive_distance_topk(self.user_embedding[users], self.item_embedding, f,
                                           a1.weight, a1.bias, a2.weight, a2.bias, mask_rowptr,
                                           mask_col, k, mask_value, validate=False)

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), n_items) scores ``-d(u, i)``, in blocks of users.

        ``A1 l2n([u; v; f]) = (W_u u + W_v v + W_f f) / ||[u; v; f]|| + b``: the user and item
        parts are projected once, so a block costs one (users x items x 5D) tensor, not the
        (users x items x 3D) concatenation plus its product.
        """
        self.post_step()
        f, _ = self.item_projection()
        U, V = self.user_embedding[users], self.item_embedding
        a1 = self.attention[0]
        w_u, w_v, w_f = a1.weight.split(U.shape[1], dim=1)
        item_part = V @ w_v.T + f @ w_f.T                                   # (n_items, 5D)
        item_sq = V.pow(2).sum(1) + f.pow(2).sum(1)
        user_part, user_sq = U @ w_u.T, U.pow(2).sum(1)
        step = max(1, _SCORE_BLOCK // max(1, self.n_items * item_part.shape[1]))
        out = []
        for start in range(0, U.shape[0], step):
            sl = slice(start, start + step)
            norm = (user_sq[sl, None] + item_sq[None]).sqrt_().clamp_(min=1e-12)
            # in place: the (b, n_items, 5D) block is the only large temporary
            hidden = (user_part[sl, None] + item_part[None]).div_(norm.unsqueeze(-1))
            a = self._weights(hidden.add_(a1.bias))                         # (b, n_items, D)
            out.append(-(a.mul_(U[sl, None] - V[None])).square_().sum(-1))
        return torch.cat(out) if out else V.new_zeros(0, self.n_items)

    def student_features(self):
        """The SGFD students; ``{}`` without SGFD (plain MAML has no feature head)."""
        return self.features.student_features() if self.features.distills else {}
