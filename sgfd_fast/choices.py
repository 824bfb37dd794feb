"""Allowed values of the config keys that take one of a fixed set, declared once.

:mod:`sgfd_fast.config` checks every run's values against them at load time; the few lower
modules that check their own arguments (``ops.sgfd_loss``'s ``flavour``) import from here, so
neither side imports upwards. A value travels unchanged from the config to the kernel.
"""

__all__ = ["PROTOCOLS", "SGFD_LOSSES", "DEVICES", "DIST_BACKENDS", "METRICS",
           "STUDENT_ACTIVATIONS", "STUDENT_NORMS", "STUDENT_INITS", "PRECISIONS"]

#: ``protocol``: ``standard`` selects on the validation split; ``legacy`` as the released code.
PROTOCOLS = ("standard", "legacy")
#: ``sgfd_loss`` (and the ``flavour`` of ``ops.sgfd_loss``): the released or the textbook formulas.
SGFD_LOSSES = ("official", "standard")
#: ``device``.
DEVICES = ("auto", "cpu", "cuda")
#: ``dist_backend``: the torch.distributed backend under torchrun (auto: NCCL on CUDA, else gloo).
DIST_BACKENDS = ("auto", "nccl", "gloo")
#: The ranking metrics ``evaluation`` reports; ``valid_metric`` is one of them at a ``topk`` cut.
METRICS = ("recall", "ndcg", "precision", "map", "hit")
#: ``student_activation``, ``student_norm``, ``student_init``: the item-feature head that feeds the
#: backbone (the SGFD student, or the plain backbone's own extractor); ``auto`` keeps what that
#: head does as released (``sgfd_fast.models.heads.resolve_head``).
STUDENT_ACTIVATIONS = ("auto", "leaky_relu", "identity")
STUDENT_NORMS = ("auto", "l2", "none")
#: ``pytorch``: ``nn.Linear``'s own initialisation (kaiming-uniform, a = sqrt(5)).
STUDENT_INITS = ("auto", "pytorch", "xavier_normal", "xavier_uniform")
#: ``precision``: ``fp32`` everywhere, or ``bf16``: the dense products of the backbones and of SGFD
#: take bfloat16 inputs (fp32 accumulation) and the raw item features are held in bfloat16
#: (``sgfd_fast.models.base.Recommender.use_precision``).
PRECISIONS = ("fp32", "bf16")
