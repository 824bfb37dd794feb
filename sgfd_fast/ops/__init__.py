"""Public functional API: every op is a ``torch.library.custom_op`` (namespace ``sgfd_fast``)
with a pure-PyTorch reference, a fake, an autograd formula and per-device compiled backends
(see ``sgfd_fast._backend`` and ``python -m sgfd_fast.info``)."""

from ._common import csr_transpose
from .edge_softmax_aggregate import edge_softmax_aggregate, edge_softmax_aggregate_reference
from .propagate import propagate, propagate_reference
from .sddmm_csr import sddmm_csr, sddmm_csr_reference
from .spmm_csr import spmm_csr, spmm_csr_reference
from .masked_topk import masked_topk, masked_topk_reference
from .attentive_distance_topk import attentive_distance_topk, attentive_distance_topk_reference
from .sgfd_loss import sgfd_loss, sgfd_loss_reference
from .feature_head import collapse_linear_stack, feature_head, feature_head_reference
from .row_dropout import row_dropout, row_dropout_reference
from .knn_graph import knn_graph, knn_graph_reference
from .degree_normalize import degree_normalize, degree_normalize_reference
from .sample_edges import sample_edges, sample_edges_reference

__all__ = [
    "attentive_distance_topk", "attentive_distance_topk_reference",
    "collapse_linear_stack", "csr_transpose",
    "degree_normalize", "degree_normalize_reference",
    "edge_softmax_aggregate", "edge_softmax_aggregate_reference",
    "feature_head", "feature_head_reference",
    "knn_graph", "knn_graph_reference",
    "masked_topk", "masked_topk_reference",
    "propagate", "propagate_reference",
    "row_dropout", "row_dropout_reference",
    "sample_edges", "sample_edges_reference",
    "sddmm_csr", "sddmm_csr_reference",
    "sgfd_loss", "sgfd_loss_reference",
    "spmm_csr", "spmm_csr_reference",
]
