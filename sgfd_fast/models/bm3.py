"""BM3 (Zhou et al., WWW 2023) as the released SGFD-BM3 runs it (docs/RELEASED_CODE.md §4).

* ID embeddings E_u, E_i (xavier_uniform); LightGCN-style propagation over the normalised
  training graph with the mean of layers 0..L, plus the raw item-ID embedding as a residual:
  ``u_g, i_g = split(mean_l Â^l [E_u; E_i])``, ``u_o, i_o = u_g, i_g + E_i``.
* A shared predictor P = Linear(D, D) (xavier_normal weight).
* Per batch of positive pairs (no negatives): dropout views of u_o, i_o and of each modality's
  item features are the (detached) targets; the loss is
  ``(1 - cos(P(u_o), i_tgt)) + (1 - cos(P(i_o), u_tgt))
  + reg_weight * (||u_o||_F + ||i_o||_F) / n_items
  + cl_weight * sum_m [(1 - cos(P(s_m), i_tgt)) + (1 - cos(P(s_m), s_m_tgt))]
  + SGFD losses on the batch's positive items`` (cosines averaged over the batch rows).
* Ranking: ``score(u, i) = P(u_g)[u] . P(i_g + E_i)[i]``.

``sgfd: true``: s_m is the SGFD student (leaky-ReLU + L2 normalisation, docs/RELEASED_CODE.md §3.2). ``sgfd: false``:
s_m comes from original BM3's extractor, one Linear(d_m, D) per modality (xavier_normal, no
activation; the ``student_*`` keys change that head, :mod:`.heads`), on the same frozen
features (original BM3 fine-tuned the raw features; we keep them constant in both variants so the
comparison isolates SGFD).

Differences from the released code that do not change the distribution of any quantity: features,
predictor outputs and dropout masks are computed only for the distinct users/items of the batch
(the released code computes them for all rows and then gathers; one mask per distinct row keeps
duplicates identical, as there), and a cosine between two views of the same items is taken once
per distinct item, weighted by its count in the batch (the same mean over the batch's rows); the masks come from a counter-based hash of (step key, row id,
column) (``ops.row_dropout``) instead of the global torch RNG, so that a batch split across
processes draws the masks one process draws (same Bernoulli(1 - dropout) distribution); the
released sum over the two modalities becomes a sum over any
number (>= 1) of modalities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import normalized_bipartite
from ..ops import row_dropout
from .base import Recommender, rows
from .features import item_features
from .heads import Linear
from .split import held as split_held

__all__ = ["BM3"]


def _neg_cos(a: torch.Tensor, b: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - the mean cosine of the rows of a and b; ``weight`` (n,): each row counted that many
    times (a batch's repeated items, without gathering the repeats)."""
    cos = F.cosine_similarity(a, b, dim=-1)
    return 1.0 - (cos.mean() if weight is None else (cos * weight).sum() / weight.sum())


class _Encode(torch.autograd.Function):
    """What a training step needs of BM3's whole-graph encoder, ``(u_o[uniq_u], i_o[uniq_i],
    ||u_o||_F, ||i_o||_F)`` from ``(E_u, E_i)``, in three (N, D) buffers the model reuses across
    steps (plus the propagation's layer buffers for L >= 2: one, from L = 3 two).

    The composition it replaces (:meth:`BM3.forward`, then ``rows`` and ``norm``) allocates
    about 4 (N, D) + 3 (n_users, D) + 4 (n_items, D) temporaries per step (the concatenation,
    the propagation and its backward, the residual, the norms' and gathers' gradients, their
    sums): mapped (above glibc's 32 MiB mmap threshold) or taken from heap memory that glibc
    trims back, they are page-faulted in again on every step (100k x 40k: ~10^5 minor faults,
    nearly half the step's CPU time in the kernel; docs/BENCHMARKS.md, "cost per step as the
    data grow"). Here the forward writes into
    ``ego`` and ``out``; the backward assembles the gradient of ``[u_o; i_o]`` in ``ego``'s
    buffer and propagates it into the third, whose halves become ``E_u.grad``/``E_i.grad``
    (the trainer's ``zero_grad(set_to_none=True)`` releases them before the next step; while
    anything still holds them, e.g. gradients accumulated over two backward passes or results
    of ``torch.autograd.grad``, a fresh tensor is used instead). Each element is computed by
    the same operations in the same order as by the composition (torch's norm backward
    ``g * (x / ||x||)``, the gathers' ``index_add_`` onto it, the residual's gradient added
    last): bitwise the same losses, gradients and steps (``tests/models/test_models_bm3.py``);
    a norm of exactly 0 aside, whose rows get zeros (torch's autograd: zeros too for the
    regulariser's finite positive gradient, but -0 or NaN for a negative or non-finite one).

    The buffers are overwritten by the next call: a graph built before it cannot be
    backpropagated afterwards (autograd raises, through ``out``'s version counter).

    Under a split (``models.split``, torchrun) every rank runs the same forward on the whole
    graph, without communication: the loss reads all rows of ``[u_o; i_o]`` through the norms,
    so a rank that computed only its row block would have to gather the rest (on gloo the
    gather costs more CPU than the product, docs/BENCHMARKS.md). The backward needs the
    gradient of the total loss, the sum over ranks: for the norms that is the ranks' two scalar
    gradients summed times ``x / ||x||``, which every rank holds; for the batch's rows, the
    ranks exchange theirs (``RowSplit.all_rows``, the scalars with them: ~10^3 rows instead of
    an all-reduce of all N). Each rank then propagates only its row block of the summed gradient
    (``RowSplit.propagate_rows``, Â symmetric): the whole gradient of ``E_u``/``E_i`` on its
    rows and zeros elsewhere, as ``BM3.split_rows`` declares.
    """

    @staticmethod
    def forward(ctx, user_w, item_w, uniq_u, uniq_i, model):
        out = model._encode_into_buffers(user_w, item_w)
        n_users = user_w.shape[0]
        u_o, i_o = out[:n_users], out[n_users:]
        norm_u, norm_i = u_o.norm(), i_o.norm()
        ctx.save_for_backward(uniq_u, uniq_i, norm_u, norm_i, out)
        ctx.model, ctx.n_users, ctx.split = model, n_users, model.split
        return u_o.index_select(0, uniq_u), i_o.index_select(0, uniq_i), norm_u, norm_i

    @staticmethod
    def backward(ctx, g_urows, g_irows, g_norm_u, g_norm_i):
        uniq_u, uniq_i, norm_u, norm_i, out = ctx.saved_tensors
        n, split, model = ctx.n_users, ctx.split, ctx.model
        # the gradient of [u_o; i_o] in ego's buffer (the forward is done with it)
        g_out, _, g_ego, *scratch = model._encode_buffers_like(out)
        if split is None:
            for o, g, norm, g_norm, index, g_rows in (
                    (out[:n], g_out[:n], norm_u, g_norm_u, uniq_u, g_urows),
                    (out[n:], g_out[n:], norm_i, g_norm_i, uniq_i, g_irows)):
                # torch's norm backward, g_norm * (x / ||x||) and 0 where the norm is 0, in two
                # passes: there x / 1 * 0 (x is +-0, or so small that its squares underflow;
                # zeros that may carry x's sign, equal to the masked fill's +0)
                zero = norm == 0
                torch.div(o, torch.where(zero, 1, norm), out=g)
                g.mul_(torch.where(zero, 0, g_norm))
                g.index_add_(0, index, g_rows)     # the gather's backward (ids distinct)
        else:  # the total loss's gradient (class doc, "Under a split")
            # a shard reads at most its pairs' users and items: twice the largest shard
            capacity = 2 * -(-model.global_batch[0].numel() // split.world)
            # every rank's rows (an id repeats where two ranks' shards read them) and the sum
            # of the ranks' gradients of the two norms
            ids, g_rows, g_norms = split.all_rows(torch.cat([uniq_u, uniq_i + n]),
                                                  torch.cat([g_urows, g_irows]), capacity,
                                                  sums=torch.stack([g_norm_u, g_norm_i]))
            norms = torch.stack([norm_u, norm_i])
            scale = torch.where(norms == 0, 0, g_norms / norms)  # one pass over the rows
            torch.mul(out[:n], scale[0], out=g_out[:n])
            torch.mul(out[n:], scale[1], out=g_out[n:])
            g_out.index_add_(0, ids, g_rows)
        # Â symmetric. The result becomes E_u.grad/E_i.grad: into the third buffer unless the
        # gradients it last held are still alive (accumulated .grad, autograd.grad's results)
        held = split_held(g_ego)
        if split is None:
            reuse = {} if held else dict(out=g_ego, scratch=scratch)
            grad_ego = model.graph.propagate(g_out, model.n_layers, **reuse)
            grad_ego[n:].add_(g_out[n:])  # the residual's gradient
        else:  # this rank's rows of it (residual included), zeros elsewhere
            grad_ego = split.propagate_rows(model.graph, g_out, model.n_layers,
                                            torch.empty_like(g_out) if held else g_ego,
                                            residual=n)
        return grad_ego[:n], grad_ego[n:], None, None, None


class BM3(Recommender):
    """BM3 backbone with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size``, ``n_layers``, ``dropout``, ``reg_weight``, ``cl_weight``,
    ``sgfd`` and, when ``sgfd`` is true, the SGFD keys of :meth:`SGFD.from_config`.
    """

    n_negatives = 0

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.dropout = config["dropout"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_weight"]

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)

        # s_m: the SGFD student, or original BM3's extractor (a Linear, xavier_normal)
        self.attach_features(item_features(
            dataset, config, model="BM3", leaky=True,
            extractor=dict(activation="identity", norm="none", init="xavier_normal")))
        # the graph is a constant of the dataset: rebuilt, not checkpointed; ``.to()`` moves it
        self.graph = normalized_bipartite(self.n_users, self.n_items, dataset.train)
        self._encode_buffers = None  # _Encode's (N, D) buffers, reused across steps

    def _encode_buffers_like(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """_Encode's ``(ego, out, g_ego, *scratch)`` buffers, (n_users + n_items, D) in x's
        dtype and device (made again after ``.to()``/``.double()``); ``scratch``: the layers
        the propagation keeps for L >= 2 (``ops.propagate``)."""
        shape = (self.n_users + self.n_items, x.shape[1])
        b = self._encode_buffers
        if b is None or b[0].shape != shape or b[0].dtype != x.dtype or b[0].device != x.device:
            n = 3 + min(max(self.n_layers - 1, 0), 2)
            b = self._encode_buffers = tuple(x.new_empty(shape) for _ in range(n))
        return b

    def _encode_into_buffers(self, user_w: torch.Tensor, item_w: torch.Tensor) -> torch.Tensor:
        """``[u_o; i_o]`` of :meth:`forward` (the same operations in the same order) written into
        the second of :meth:`_encode_buffers_like`'s buffers, which is returned: valid until the
        next call (the next step or evaluation overwrites it)."""
        ego, out, _, *scratch = self._encode_buffers_like(user_w)
        n_users = user_w.shape[0]
        ego[:n_users].copy_(user_w)
        ego[n_users:].copy_(item_w)
        self.graph.propagate(ego, self.n_layers, out=out, scratch=scratch)
        # written through a raw pointer: a graph that saved the buffer then refuses to backward
        torch.autograd.graph.increment_version(out)
        out[n_users:].add_(item_w)  # the item-ID residual
        return out

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u_o (n_users, D), i_o (n_items, D))``: propagated embeddings, item-ID residual."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagate(self.graph, ego, self.n_layers, residual=self.n_users)
        u_g, i_o = out.split([self.n_users, self.n_items])
        return u_g, i_o

    def split_rows(self) -> list:
        # the embeddings reach the loss only through the propagation (residual included)
        n = self.n_users + self.n_items
        return [(self.user_embedding.weight, n, 0), (self.item_embedding.weight, n, self.n_users),
                *super().split_rows()]

    def calculate_loss(self, users, items, negatives=None):
        uniq_u, inv_u = torch.unique(users, return_inverse=True)
        uniq_i, inv_i = torch.unique(items, return_inverse=True)
        # the same values as forward(), rows() and norm(), in reused buffers (_Encode)
        u_rows, i_rows, norm_u, norm_i = _Encode.apply(
            self.user_embedding.weight, self.item_embedding.weight, uniq_u, uniq_i, self)
        key = self.step_key
        with torch.no_grad():  # targets: detached (row_dropout returns its input when p == 0)
            u_drop = row_dropout(u_rows, uniq_u, self.dropout, key).detach()
            i_drop = row_dropout(i_rows, uniq_i, self.dropout, key + 1).detach()
            u_tgt, i_tgt = rows(u_drop, inv_u), rows(i_drop, inv_i)
            # a per-item cosine is the same for each repeat of the item: weigh, do not gather
            i_count = torch.bincount(inv_i, minlength=uniq_i.numel()).to(i_rows.dtype)
        u_on = rows(self.predictor(u_rows), inv_u)
        i_on = rows(self.predictor(i_rows), inv_i)
        bm3 = _neg_cos(u_on, i_tgt) + _neg_cos(i_on, u_tgt)
        reg = (norm_u + norm_i) / self.n_items

        features, students, gathered, cl = self.features, [], [], 0.0
        for j in range(len(features.modalities)):
            x = features.rows(j, uniq_i)  # once, for the student here and SGFD's teacher
            s = features.student(j, x=x)
            students.append(s)
            gathered.append(x)
            q = self.predictor(s)
            with torch.no_grad():
                s_tgt = row_dropout(s, uniq_i, self.dropout, key + 2 + j).detach()
            cl = cl + _neg_cos(q, i_drop, i_count) + _neg_cos(q, s_tgt, i_count)

        total = bm3 + self.reg_weight * reg + self.cl_weight * cl
        return self.loss_output(total, {"bm3": bm3, "reg": reg, "cl": cl},
                                features.losses(items, students=students, features=gathered))

    def ranking_embeddings(self):
        if torch.is_grad_enabled():
            u_g, i_o = self.forward()
        else:  # evaluation: in the training step's reused buffers, no (N, D) allocations
            u_g, i_o = self._encode_into_buffers(self.user_embedding.weight,
                                                 self.item_embedding.weight).split(
                [self.n_users, self.n_items])
        return self.predictor(u_g), self.predictor(i_o)
