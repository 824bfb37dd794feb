"""The item features a backbone consumes: one seam, two kinds (docs/DESIGN.md §3.8).

A backbone never builds item features itself; it calls :func:`item_features` once and then, per
modality j (``features.modalities`` order):

* ``features.rows(j, items)``: the frozen raw feature rows (n, d_j) of ``items`` (all when None),
  gathered once per batch and shared;
* ``features.student(j, items, x=rows)``: what the backbone consumes, (n, ``features.width(j)``);
* ``features.losses(item_ids, students=..., features=...)``: the extra losses, a dict that the
  backbone hands to :meth:`Recommender.loss_output <sgfd_fast.models.base.Recommender.loss_output>`
  unread: ``{}`` for the plain kind, SGFD's parts for the SGFD kind.

The kinds (config key ``sgfd``):

* :class:`Projection` (``sgfd: false``): the plain backbone's own extractor, one head
  (:mod:`.heads`) per modality on the raw features, or the raw features themselves when the
  backbone has no extractor (``extractor=None``: MAML);
* :class:`~sgfd_fast.models.sgfd.SGFD` (``sgfd: true``): teacher, fusion head and student; the
  student's output is what the backbone consumes.

Each kind is registered on the backbone under its own ``state_name`` (``extractors`` or ``sgfd``),
so checkpoint keys read ``extractors.0.weight`` / ``sgfd.students.0.weight`` as before the seam;
the backbone reaches either as ``self.features``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .heads import Head, Linear, apply_head, init_head, resolve_head

__all__ = ["ItemFeatures", "Projection", "item_features", "require_features", "EXTRA_TOTAL"]

#: The key of :meth:`ItemFeatures.losses`'s weighted total, the one part added to the training
#: loss (the others are logged); it keeps its graph (``training.diagnostics.gradient_share``).
EXTRA_TOTAL = "sgfd"

_HEAD_KEYS = ("student_activation", "student_norm", "student_init")


class ItemFeatures(nn.Module):
    """Per-modality item features for a backbone (see module doc).

    Args:
        features: ``{modality: (n_items, d_m) float tensor}``; kept as constants (non-persistent
            buffers ``feature0, feature1, ...``: not checkpointed, moved by ``.to()``).
    """

    #: attribute name on the backbone, hence the prefix of this seam's checkpoint keys
    state_name: str = "features"
    #: True when :meth:`losses` is SGFD's (``training.diagnostics`` reads the teacher then)
    distills: bool = False
    #: the raw features are held in bfloat16 and the products on them run in bf16
    #: (:meth:`hold_bf16`, ``precision: bf16``)
    bf16: bool = False

    def __init__(self, features: dict):
        super().__init__()
        self.modalities = list(features)
        for j, m in enumerate(self.modalities):
            self.register_buffer(f"feature{j}", torch.as_tensor(features[m], dtype=torch.float32),
                                 persistent=False)

    def feature(self, j: int) -> torch.Tensor:
        """Modality j's raw features, (n_items, d_j), float32 (bfloat16 after :meth:`hold_bf16`)."""
        return getattr(self, f"feature{j}")

    def hold_bf16(self) -> None:
        """Hold the raw features in bfloat16 from now on (half the memory and the gather
        traffic; the constants the backbone derived from them, such as kNN graphs, were built
        from the float32 values before)."""
        for j in range(len(self.modalities)):
            setattr(self, f"feature{j}", self.feature(j).to(torch.bfloat16))
        self.bf16 = True

    def held(self) -> dict[str, torch.Tensor]:
        """``{modality: raw feature matrix}`` as this seam holds them (bfloat16 after
        :meth:`hold_bf16`): what ``Dataset.hand_over_features`` takes."""
        return {m: self.feature(j) for j, m in enumerate(self.modalities)}

    def rows(self, j: int, items: torch.Tensor | None = None) -> torch.Tensor:
        """Raw feature rows of modality j for ``items`` (all items when None), (n, d_j), in the
        features' dtype."""
        x = self.feature(j)
        return x if items is None else x.index_select(0, items)

    def width(self, j: int) -> int:
        """Width of :meth:`student` for modality j."""
        raise NotImplementedError

    def student(self, j: int, items: torch.Tensor | None = None, *,
                x: torch.Tensor | None = None) -> torch.Tensor:
        """The features of modality j the backbone consumes for ``items`` (all when None),
        (n, width(j)); ``x``: the rows already gathered by :meth:`rows`."""
        raise NotImplementedError

    def losses(self, item_ids: torch.Tensor, students: list | None = None,
               features: list | None = None) -> dict[str, torch.Tensor]:
        """Extra losses on a batch of item ids (duplicates count): ``{}``, or a dict whose
        :data:`EXTRA_TOTAL` entry is the weighted total to add to the loss. ``students`` /
        ``features``: per-modality :meth:`student` / :meth:`rows` of ``torch.unique(item_ids)``
        when the backbone has them already."""
        return {}

    @torch.no_grad()
    def student_features(self) -> dict[str, torch.Tensor]:
        """``{modality: (n_items, width) features}`` of every item, without gradient."""
        return {m: self.student(j) for j, m in enumerate(self.modalities)}


class Projection(ItemFeatures):
    """The plain kind: ``head`` (a Linear(d_m, dim) per modality, :mod:`.heads`) on the raw
    features, or the raw features themselves when ``head`` is None. ``self[j]`` is modality j's
    Linear; its initialisation is ``head.init`` (all layers are built first, then initialised:
    the released draw order)."""

    state_name = "extractors"

    def __init__(self, features: dict, dim: int | None = None, head: Head | None = None):
        super().__init__(features)
        self.head = head
        if head is not None:
            for j in range(len(self.modalities)):
                self.add_module(str(j), Linear(self.feature(j).shape[1], dim))
            for layer in self:
                init_head(layer, head.init)

    def __getitem__(self, j: int) -> Linear:
        return self._modules[str(j)]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def width(self, j):
        return self[j].out_features if self.head is not None else self.feature(j).shape[1]

    def student(self, j, items=None, *, x=None):
        x = self.rows(j, items) if x is None else x
        return x if self.head is None else apply_head(x, self[j], self.head)


def require_features(dataset, model: str) -> None:
    """Raise DataError unless ``dataset`` has an item feature modality (``model`` needs one)."""
    if not dataset.features:
        raise DataError(f"{model} needs at least one item feature modality; dataset "
                        f"{dataset.name!r} has none")


def item_features(dataset, config: dict, *, model: str, leaky: bool,
                  extractor: dict | None) -> ItemFeatures:
    """The seam of a backbone named ``model`` on ``dataset`` (``config["sgfd"]`` picks the kind).

    Args:
        leaky: the SGFD kind's leaky-ReLU on teacher and student (BM3/MAML yes, GRCN no).
        extractor: the plain kind's released head as ``resolve_head`` keywords (``activation``,
            ``norm``, ``init``), which the ``student_*`` keys may change; None: the backbone takes
            the raw features (then those keys are a ConfigError with sgfd=false).

    Raises:
        DataError: the dataset has no item feature modality.
        ConfigError: ``student_*`` set for a backbone without an extractor, with sgfd=false.
    """
    require_features(dataset, model)
    if any(torch.is_tensor(a) for a in dataset.features.values()):
        raise DataError(f"dataset {dataset.name!r} handed its float32 features over to a model "
                        f"trained in bf16 (Dataset.hand_over_features), and {model} is built "
                        f"from the float32 values: load the dataset again to build it")
    features = {m: torch.from_numpy(a) for m, a in dataset.features.items()}
    if config["sgfd"]:
        from .sgfd import SGFD  # below this module: SGFD is an ItemFeatures

        return SGFD.from_config(features, torch.from_numpy(dataset.labels), dataset.n_labels,
                                config, leaky=leaky)
    if extractor is None:
        changed = [k for k in _HEAD_KEYS if config.get(k, "auto") != "auto"]
        if changed:
            raise ConfigError(f"{', '.join(changed)} set with sgfd=false, but plain {model} feeds "
                              f"the raw features to its own layers and has no feature head; for "
                              f"{model} with the student's head and no distillation use sgfd=true "
                              f"ce_weight=0 kd_weight=0")
        return Projection(features)
    return Projection(features, config["embedding_size"], resolve_head(config, **extractor))
