"""LATTICE (Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM 2021)
as MMRec implements it (``cf_model: lightgcn``), with optional SGFD, built sparse.

* Frozen item–item graph per modality m, built once from the raw features f_m: the k nearest
  items by cosine (``knn_k``, the item itself included; :func:`~sgfd_fast.ops.knn_graph`) with
  their cosines as values, ``F_m = D^-1/2 A_m D^-1/2`` with D the row sums on both sides
  (MMRec's ``compute_normalized_laplacian``; :func:`~sgfd_fast.ops.degree_normalize`).
* Learned item–item graph, from the projected features ``s_m`` (MMRec's ``image_trs``/
  ``text_trs``, a Linear(d_m, D); with ``sgfd: true`` the SGFD student): per modality the kNN
  pattern of s_m's cosines (indices only: ``ops.knn_graph``, no n×n matrix) with the cosines on
  that pattern as differentiable values (``ops.sddmm_csr`` of the L2-normalised rows),
  ``L = norm(Σ_m w_m A_m(s))`` (the mix on the union of the patterns, then the row-sum
  normalisation, differentiable in the values), ``w = softmax(modal_weight)`` (a parameter,
  uniform at start: MMRec's [0.5, 0.5]), and the item graph ``S = (1 - λ) L + λ Σ_m w_m F_m``
  (``lambda_coeff`` = λ; the union of the learned and frozen patterns, values added).
* When S is built (MMRec's ``build_item_graph`` flag): at the first step of every epoch
  (``pre_epoch_processing`` sets it, the first ``calculate_loss`` clears it) with gradient into
  s_m and ``modal_weight``; the other steps of the epoch reuse that S detached, so they train the
  projections and ``modal_weight`` not at all. What that S was built from (each s_m and
  ``modal_weight`` at the epoch's first step, and the epoch) is kept in buffers
  (``graph_student{j}``, n_items × D each; ``graph_modal_weight``; ``graph_epoch``), so a
  checkpoint written inside an epoch holds it and a run resumed there rebuilds the same S
  (bitwise: the same inputs through the same ops), not one from the parameters reached since.
  Ranking rebuilds S from the current parameters and keeps it (MMRec's ``full_sort_predict``
  does, for every user batch; here once per evaluation). In one process computing several
  shards of a step (the tests), every shard of the epoch's first step (same step key) rebuilds
  S with its gradient.
* Embeddings: ID embeddings E_u, E_i (xavier_uniform); ``h = S^{n_mm_layers} E_i``; user–item
  part LightGCN-style on LATTICE's own adjacency ``P = D^-1 (A + I)`` (self loops, row
  normalised, D = degree + 1): ``u, i = split(mean_{l=0..n_ui_layers} P^l [E_u; E_i])``; items
  ``i + h / ‖h‖`` (row-wise L2, ``F.normalize``); score ``u · (i + h/‖h‖)``.
* Loss per batch of B positive pairs, one sampled negative each (LATTICE's own ``bpr_loss``)::

      L = -mean log sigmoid(u·i_p - u·i_n)
          + reg_weight · ½ (‖u‖² + ‖i_p‖² + ‖i_n‖²) / train_batch_size   (the propagated rows)
          + SGFD losses on the positive and negative items                  (sgfd: true)

Modalities: MMRec has an image and a text one; any number works here (one modality: S uses its
graphs alone and there is no ``modal_weight``). A modality with fewer than ``knn_k`` items keeps
every item as a neighbour (MMRec's ``torch.topk`` would fail). A row whose kNN cosines sum to
<= 0 counts as degree 0 in the normalisation (no edge in or out of it keeps a value; MMRec:
NaN); with the item's own cosine of 1 among its neighbours this needs tiny or degenerate data.

Deliberate differences from MMRec: every n×n matrix is replaced by a CSR on the kNN patterns
(the same numbers: ``tests/models/test_lattice.py`` checks S and one step's loss and gradients
against a dense float64 transcription); the features stay frozen (MMRec fine-tunes them through
``nn.Embedding.from_pretrained(freeze=False)``; as for every backbone here), so the frozen graph
is built from the features as loaded; MMRec's ``feat_embed_dim`` is ``embedding_size`` here (both
64 in MMRec); only ``cf_model: lightgcn`` (MMRec's default; its ``ngcf``/``mf`` variants and
``mess_dropout`` are not ported); the number of user–item layers is ``n_ui_layers`` (MMRec:
``len(weight_size)``, 2) and the item–item ones ``n_mm_layers`` (MMRec: ``n_layers``, 1);
MMRec's learning-rate decay ``learning_rate_scheduler: [0.96, 50]`` is not applied (the trainer
keeps the rate constant); ties in the kNN go to the lower item id and a zero feature row has
cosine 0 (``ops.knn_graph``); training epochs are selected on the validation split
(``protocol: standard``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..graph import CSR
from .base import Recommender, rows
from .features import item_features

__all__ = ["LATTICE", "knn_cosine_graph", "normalized_laplacian", "sparse_sum"]


def knn_cosine_graph(x: torch.Tensor, k: int, col: torch.Tensor | None = None) -> CSR:
    """Row i: the k items nearest to item i by cosine of ``x`` (n, d), values the cosines
    (differentiable in x through ``ops.sddmm_csr``; the pattern is not). MMRec's ``build_sim``
    then ``build_knn_neighbourhood``, without the n×n similarity matrix. ``col``: the (n, k)
    neighbours of ``ops.knn_graph`` when already known."""
    n = x.shape[0]
    unit = F.normalize(x, dim=1)
    if col is None:
        col, _ = ops.knn_graph(unit.detach(), k)
    keep = col >= 0  # fewer than k items: every item is a neighbour
    counts = keep.sum(1)
    row = torch.arange(n, device=x.device).repeat_interleave(counts)
    pattern = CSR.from_coo(row.cpu(), col[keep].cpu(), None, n, n).to(x.device)
    val = ops.sddmm_csr(pattern.rowptr, pattern.col, unit, unit, validate=False)
    return CSR(pattern.rowptr, pattern.col, val, n, validate=False)


def normalized_laplacian(g: CSR) -> CSR:
    """MMRec's ``compute_normalized_laplacian`` on g's pattern: ``D^-1/2 A D^-1/2``, D the row
    sums on both sides (``ops.degree_normalize``, differentiable in the values). A row whose
    degree is not positive (its kNN cosines sum to <= 0; never with the item's own cosine of 1
    among them unless the data is tiny or degenerate) counts as degree 0: no edge in or out of it
    keeps a value (MMRec: NaN from ``torch.pow``)."""
    row = torch.arange(g.n_rows, device=g.device).repeat_interleave(g.rowptr.diff())
    deg = g.val.detach().new_zeros(g.n_rows).index_add(0, row, g.val.detach())
    val = torch.where(deg[row] > 0, g.val, torch.zeros_like(g.val))
    val = ops.degree_normalize(g.rowptr, g.col, val, "sym", 0.0, validate=False)
    return CSR(g.rowptr, g.col, val, g.n_cols, validate=False)


def sparse_sum(terms: list[tuple[torch.Tensor | float, CSR]]) -> CSR:
    """``Σ c · G`` over ``(c, G)`` pairs of square CSRs of one size, on the union of their
    patterns (an entry several share carries the sum); differentiable in the coefficients and the
    values."""
    n = terms[0][1].n_rows
    keys, vals = [], []
    for c, g in terms:
        row = torch.arange(n, device=g.device).repeat_interleave(g.rowptr.diff())
        keys.append(row * n + g.col)
        vals.append(c * g.val)
    keys, inverse = torch.unique(torch.cat(keys), return_inverse=True)  # sorted: CSR order
    val = torch.cat(vals)
    val = val.new_zeros(keys.numel()).index_add(0, inverse, val)
    return CSR.from_coo((keys // n).cpu(), (keys % n).cpu(), val, n, n).to(val.device)


class LATTICE(Recommender):
    """LATTICE with optional SGFD (config key ``sgfd``); see the module docstring.

    Config keys: ``embedding_size`` (D), ``knn_k``, ``lambda_coeff``, ``n_mm_layers``,
    ``n_ui_layers``, ``reg_weight``, ``train_batch_size`` (the regulariser's divisor), ``sgfd``
    and, when ``sgfd`` is true, the SGFD keys of
    :meth:`SGFD.from_config <sgfd_fast.models.sgfd.SGFD.from_config>`.
    """

    n_negatives = 1

    def __init__(self, dataset, config: dict):
        super().__init__(dataset, config)
        dim = config["embedding_size"]
        self.knn_k = config["knn_k"]
        self.lambda_coeff = config["lambda_coeff"]
        self.n_mm_layers = config["n_mm_layers"]
        self.n_ui_layers = config["n_ui_layers"]
        self.reg_weight = config["reg_weight"]
        self.batch_size = config["train_batch_size"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        f = self.attach_features(item_features(
            dataset, config, model="LATTICE", leaky=True,
            extractor=dict(activation="identity", norm="none", init="pytorch")))
        n_modalities = len(f.modalities)
        if n_modalities > 1:
            self.modal_weight = nn.Parameter(torch.full((n_modalities,), 1.0 / n_modalities))
        # constants of the dataset (rebuilt, not checkpointed; ``.to()`` moves them): each
        # modality's normalised frozen graph, computed in float64 and stored in float32
        for j in range(n_modalities):
            x = f.feature(j)
            col = ops.knn_graph(x, self.knn_k)[0]  # ranked in float32 (knn_graph's contract)
            unit = x.double()  # one float64 copy, normalised in place (memory: 4096-d images)
            unit /= unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
            g = normalized_laplacian(knn_cosine_graph(unit, self.knn_k, col=col))
            del unit
            setattr(self, f"frozen_graph{j}", g.to(dtype=torch.float32))
        self.graph = self._self_loop_graph(dataset.train)
        self.item_graph, self._graph_step = None, None  # S, detached after an epoch's first step
        # S's inputs at the epoch's first step (checkpointed: a run resumed inside the epoch
        # rebuilds that S) and the epoch they belong to (-1: none yet)
        for j in range(n_modalities):
            self.register_buffer(f"graph_student{j}", torch.zeros(self.n_items, f.width(j)))
        if n_modalities > 1:
            self.register_buffer("graph_modal_weight", torch.zeros(n_modalities))
        self.register_buffer("graph_epoch", torch.tensor(-1))
        self._epoch = 0

    def complete_state(self, state: dict) -> dict:
        """A checkpoint from before S's inputs were checkpointed lacks ``graph_*``: fresh ones
        (epoch -1) make a resumed run rebuild S from the resumed parameters, as that version
        did."""
        ours = self.state_dict()
        return {**{k: v for k, v in ours.items() if k.startswith("graph_")}, **state}

    def _self_loop_graph(self, pairs) -> CSR:
        """LATTICE's user–item adjacency ``D^-1 (A + I)``, nodes [users; items], D = degree + 1."""
        pairs = torch.as_tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        n = self.n_users + self.n_items
        u, i = pairs[:, 0], pairs[:, 1] + self.n_users
        nodes = torch.arange(n)
        row, col = torch.cat([u, i, nodes]), torch.cat([i, u, nodes])
        deg = torch.bincount(row, minlength=n).double()
        return CSR.from_coo(row, col, (1.0 / deg)[row].float(), n, n)

    def modality_weights(self, modal_weight: torch.Tensor | None = None) -> list:
        """``softmax(modal_weight)`` per modality (``[1.0]`` with one modality); ``modal_weight``:
        (M,) logits instead of the parameter."""
        if not hasattr(self, "modal_weight"):
            return [1.0]
        logits = self.modal_weight if modal_weight is None else modal_weight
        return list(torch.softmax(logits, dim=0).unbind())

    def build_item_graph(self, students: list[torch.Tensor] | None = None,
                         modal_weight: torch.Tensor | None = None) -> CSR:
        """S = (1 - λ) norm(Σ_m w_m A_m(s_m)) + λ Σ_m w_m F_m (module docstring), differentiable
        in the projections and ``modal_weight`` where grad is enabled. ``students`` ((n_items,
        D) per modality) and ``modal_weight`` ((M,)): the s_m and logits to build from instead
        of the current parameters' (an epoch's kept inputs)."""
        w = self.modality_weights(modal_weight)
        if students is None:
            students = [self.features.student(j) for j in range(len(w))]
        learned = sparse_sum([(w[j], knn_cosine_graph(students[j], self.knn_k))
                              for j in range(len(w))])
        learned = normalized_laplacian(learned)
        return sparse_sum([(1.0 - self.lambda_coeff, learned)]
                          + [(self.lambda_coeff * w[j], getattr(self, f"frozen_graph{j}"))
                             for j in range(len(w))])

    def begin_epoch(self, epoch: int, key: int) -> None:
        """MMRec's ``pre_epoch_processing``: S is rebuilt (with gradient) at the epoch's first
        step."""
        self.item_graph, self._epoch = None, epoch

    def forward(self, item_graph: CSR) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users (n_users, D), items (n_items, D))``: the user–item propagation plus the
        L2-normalised item–item one over ``item_graph``."""
        h = self.item_embedding
        for _ in range(self.n_mm_layers):
            h = ops.spmm_csr(item_graph.rowptr, item_graph.col, item_graph.val, h,
                             validate=False)
        g = self.graph
        x = torch.cat([self.user_embedding, self.item_embedding])
        layers = [x]
        for _ in range(self.n_ui_layers):
            x = ops.spmm_csr(g.rowptr, g.col, g.val, x, transpose=g.transpose(), validate=False)
            layers.append(x)
        users, items = torch.stack(layers).mean(0).split([self.n_users, self.n_items])
        return users, items + F.normalize(h, dim=1)

    def calculate_loss(self, users, items, negatives=None):
        # the epoch's first step (each of its shards when one process computes several): S with
        # its gradient, its inputs kept; the later steps reuse it detached
        first = self.item_graph is None and int(self.graph_epoch) != self._epoch
        if first or self.step_key == self._graph_step:
            students = [self.features.student(j) for j in range(len(self.modalities))]
            graph = self.build_item_graph(students)
            self._keep_inputs(students)
            self._keep(graph, self.step_key)
        elif self.item_graph is None:  # resumed inside the epoch: its first step's S again
            with torch.no_grad():
                graph = self.build_item_graph(
                    [getattr(self, f"graph_student{j}") for j in range(len(self.modalities))],
                    getattr(self, "graph_modal_weight", None))
            self._keep(graph, None)
        else:
            graph = self.item_graph
        u_all, i_all = self.forward(graph)
        neg = negatives.reshape(-1)
        u, p, q = rows(u_all, users), rows(i_all, items), rows(i_all, neg)
        bpr = -F.logsigmoid((u * p).sum(-1) - (u * q).sum(-1)).mean()
        # a sum over the batch's rows over a constant (MMRec's batch_size): scaled back per shard
        reg = self.reg_weight * 0.5 * (u.square().sum() + p.square().sum() + q.square().sum()) \
            / self.batch_size / self.shard_fraction
        return self.loss_output(bpr + reg, {"bpr": bpr, "reg": reg},
                                self.features.losses(torch.cat([items, neg])))

    def _keep_inputs(self, students: list[torch.Tensor]) -> None:
        """Keep the epoch's S inputs in the checkpointed buffers."""
        with torch.no_grad():
            for j, s in enumerate(students):
                getattr(self, f"graph_student{j}").copy_(s)
            if hasattr(self, "modal_weight"):
                self.graph_modal_weight.copy_(self.modal_weight)
            self.graph_epoch.fill_(self._epoch)

    def _keep(self, graph: CSR, step) -> None:
        """Keep S detached for the next steps; ``step``: the step key that built it (None: a
        ranking)."""
        self.item_graph = CSR(graph.rowptr, graph.col, graph.val.detach(), self.n_items,
                              validate=False)
        self._graph_step = step

    def ranking_embeddings(self):
        # MMRec's full_sort_predict rebuilds S and keeps it (a later step of the same epoch
        # would reuse it; the trainer evaluates between epochs, and each epoch rebuilds)
        graph = self.build_item_graph()
        self._keep(graph, None)
        return self.forward(graph)
