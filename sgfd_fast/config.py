"""Layered YAML configuration, as in MMRec/RecBole.

Layers, later ones win: ``configs/overall.yaml`` → ``configs/dataset/<dataset>.yaml`` (built-in
datasets; ``default.yaml`` for a user directory) → ``configs/model/<MODEL>.yaml`` → user files
(``--config FILE``, in order) → ``key=value`` overrides. The default files ship inside the package
and are found relative to it, never to the current directory. Every key a user may set is defined,
and documented inline, in one of the default files: a key that none of them defines is an error
that names the key, where it came from and the closest known keys.

Values are checked once, here, for every grid point: against the type of their default (int,
float, bool, str, list; an int is accepted where a float is expected), against the allowed values
of :mod:`sgfd_fast.choices` (``protocol``, ``sgfd_loss``, ``device``, ``student_*``, ``valid_metric`` =
``metric@k`` with k in ``topk``) and against the ranges of :data:`RANGES`. The models, the
evaluation and the trainer read the resolved values without checking them again.
Files and command-line values are parsed by :data:`Loader`, PyYAML's safe loader made strict where
YAML 1.1 reads what a user did not mean (``n_layers=[1,2]``, ``sgfd=false``; never evaluated): a
key given twice in one mapping is an error (PyYAML keeps the last silently), and so is a number
written other than in decimal (``010``, which YAML 1.1 reads as octal 8; ``0x3``; ``1_0``, read as
10; ``1:30``, read as 90).

``hyper_parameters: [n_layers, reg_weight]`` makes the listed keys' list values a grid: every
combination (cartesian product, in the order listed) is one point, trained from the same seed;
the trainer selects the point on the validation metric. Keys that hold for the whole run (the data
keys, the metric and protocol points are compared on, the device and process keys) cannot be grid
keys, a grid value may appear once, and the grid is counted from its lists' lengths and checked
key by key, never expanded: :meth:`Config.points` is a lazy sequence.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import NamedTuple

import yaml

from .choices import (DEVICES, DIST_BACKENDS, METRICS, PRECISIONS, PROTOCOLS, SGFD_LOSSES,
                      STUDENT_ACTIVATIONS, STUDENT_INITS, STUDENT_NORMS)
from .errors import ConfigError

__all__ = ["Config", "GridPoints", "load_config", "parse_override", "parse_overrides",
           "read_yaml", "Loader", "CONFIG_DIR", "dataset_config_file", "model_config_file",
           "key_docs", "check_point",
           "check_recorded", "with_added_keys", "DATA_KEYS", "RUN_KEYS", "ADDED_KEYS", "CHOICES",
           "RANGES", "Range"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Keys whose value is one of a fixed set.
CHOICES = {"protocol": PROTOCOLS, "sgfd_loss": SGFD_LOSSES, "device": DEVICES,
           "dist_backend": DIST_BACKENDS, "precision": PRECISIONS,
           "student_activation": STUDENT_ACTIVATIONS, "student_norm": STUDENT_NORMS,
           "student_init": STUDENT_INITS}


class Range(NamedTuple):
    """``[low, high]``; an open end excludes its bound; ``high=None``: unbounded above."""

    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def requirement(self) -> str:
        if self.high is None:
            if self.low == 0:
                return "must be positive" if self.open_low else "must not be negative"
            return f"must be at least {self.low}"
        high = "2**63" if self.high == 2**63 else self.high
        return (f"must lie in {'(' if self.open_low else '['}{self.low}, {high}"
                f"{')' if self.open_high else ']'}")


#: The range of every numeric key a model or the trainer relies on. A key absent from a run
#: (another model's key) is not checked.
RANGES = {
    **dict.fromkeys(("epochs", "train_batch_size", "eval_batch_size", "eval_step",
                     "stopping_step", "embedding_size"), Range(1)),
    **dict.fromkeys(("n_layers", "num_routing", "n_mm_layers", "n_ui_layers"),
                    Range(0)),  # 0: no propagation / routing
    "knn_k": Range(1),
    "mm_image_weight": Range(0, 1),
    "cl_loss": Range(0),                                       # MGCN's InfoNCE weight (MMRec's key)
    "lambda_coeff": Range(0, 1),                               # LATTICE's frozen-graph share
    "hidden_layer_dim": Range(2),                              # MAML's next layers have H/2
    **dict.fromkeys(("weight_decay", "ce_weight", "kd_weight", "reg_weight", "cl_weight",
                     "margin", "feature_l2_reg", "cov_loss_weight"), Range(0)),
    "learning_rate": Range(0, open_low=True),
    "t_decay": Range(1e-6),      # divides the logits
    "clip_norm": Range(1e-12),   # divides the row norms
    "dist_timeout": Range(1),    # seconds a collective waits for a peer
    "dropout": Range(0, 0.99),
    "valid_ratio": Range(0, 1, open_high=True),
    **dict.fromkeys(("seed", "split_seed"), Range(0, 2**63, open_high=True)),  # torch's seed range
}

#: Keys that shape the loaded dataset; they are read once per run, so they cannot be grid keys.
DATA_KEYS = ("valid_ratio", "split_seed", "modalities")
#: Further keys that cannot be grid keys, with the reason: grid points are compared with each
#: other on one metric of one validation split, and a run has one device and one process group.
RUN_KEYS = {
    "valid_metric": "the metric grid points are selected and compared on: points selected on "
                    "different metrics cannot be compared; give one valid_metric (one run per "
                    "metric to see each)",
    "protocol": "what the points are validated on (legacy: the test split): points validated on "
                "different splits cannot be compared; give one protocol (one run per protocol)",
    **dict.fromkeys(("device", "dist_backend", "dist_timeout", "grid_parallel", "precision"),
                    "a setting of the whole run; give one value"),
}
#: Keys added after runs were first recorded, with the value every run recorded without them had:
#: an older ``run.json`` or checkpoint reads as if it held it (:func:`with_added_keys`).
ADDED_KEYS = {"precision": "fp32"}
#: List keys whose elements must be distinct.
_DISTINCT = {"topk": "cut-off", "modalities": "modality", "hyper_parameters": "key"}

# Keys whose default is null: the types a value may take besides null.
_NULLABLE = {"modalities": list}
_TYPE_NAMES = {bool: "a bool (true/false)", int: "an int", float: "a float", str: "a string",
               list: "a list"}
_METRIC_RE = re.compile(r"^([a-z]+)@(\d+)$")


def dataset_config_file(dataset: str | None) -> Path:
    """The dataset layer: ``configs/dataset/<name>.yaml`` for a built-in dataset, else
    ``configs/dataset/default.yaml`` (datasets loaded from a directory)."""
    if dataset:
        f = CONFIG_DIR / "dataset" / f"{dataset}.yaml"
        if f.exists():
            return f
    return CONFIG_DIR / "dataset" / "default.yaml"


def model_config_file(model: str) -> Path | None:
    """``configs/model/<model>.yaml`` if the package ships one (a model may have no own keys)."""
    f = CONFIG_DIR / "model" / f"{model}.yaml"
    return f if f.exists() else None


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: ``line L, column C: <problem>`` (1-based), without
    PyYAML's multi-line excerpt of the text."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    return (f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
            + (f" ({context})" if context else ""))


_DECIMAL_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_DECIMAL_FLOAT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _number_problem(text: str, meaning) -> str:
    """Why a YAML 1.1 number other than plain decimal is refused (``meaning``: PyYAML's value)."""
    t = text.lstrip("+-")
    if ":" in t:
        how = f"as base 60 ({text} = {meaning})"
    elif "_" in t:
        how = f"with its underscores dropped ({text} = {meaning})"
    elif t[:2].lower() in ("0x", "0b"):
        how = f"as {'hexadecimal' if t[1] in 'xX' else 'binary'} ({text} = {meaning})"
    else:
        how = f"with a leading 0 as octal ({text} = {meaning})"
    return (f"{text} reads as a number only in YAML 1.1, {how}, which is seldom what was meant; "
            f"numbers are taken in plain decimal only: write the value you mean in decimal (or "
            f"quote it to give a string)")


class StrictYAMLError(yaml.constructor.ConstructorError):
    """What :class:`Loader` refuses (a key given twice, a YAML 1.1 number form)."""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader, strict where YAML 1.1 differs from what a reader sees: a key given
    twice in one mapping and a number written other than in plain decimal are errors (a
    ``yaml.MarkedYAMLError`` pointing at the text) instead of a silent choice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first is not key_node.start_mark:
                    raise StrictYAMLError(
                        None, None, f"{key!r} is given twice (first on line {first.line + 1}); "
                        f"give each key once (YAML readers would keep only the last)",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def _strict_number(self, node, value_of):
        value = value_of(self, node)
        if isinstance(value, float) and not math.isfinite(value):
            return value  # .inf, .nan: the value checks refuse them
        pattern = _DECIMAL_INT if isinstance(value, int) else _DECIMAL_FLOAT
        text = node.value.strip()
        if not pattern.fullmatch(text):
            raise StrictYAMLError(None, None, _number_problem(text, value), node.start_mark)
        return value


Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: loader._strict_number(
    node, yaml.SafeLoader.construct_yaml_int))
Loader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: loader._strict_number(
    node, yaml.SafeLoader.construct_yaml_float))


def read_yaml(path: Path, what: str = "config file") -> object:
    """A YAML file parsed with :class:`Loader`; every failure is one ConfigError naming ``what``,
    the file and, for a YAML error, the line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({e.reason} at byte "
                          f"{e.start}); give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=Loader)
    except StrictYAMLError as e:
        raise ConfigError(f"{what} {path}, {yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(e)}") from None


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a YAML mapping of key: value, got a "
                          f"{type(data).__name__}")
    for k in data:
        if not isinstance(k, str):
            raise ConfigError(f"{path}: config keys must be strings, got {k!r}")
    return data


def parse_override(item: str) -> tuple[str, object]:
    """``"key=value"`` → ``(key, value parsed as YAML by`` :class:`Loader` ``)``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command-line override {item!r} must look like key=value "
                          f"(for example learning_rate=0.01 or n_layers=[1,2])")
    try:
        return key, yaml.load(raw, Loader=Loader) if raw.strip() else None
    except StrictYAMLError as e:
        raise ConfigError(f"command-line override {item!r}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"command-line override {item!r}: the value is not valid YAML "
                          f"({e.problem if hasattr(e, 'problem') else e})") from None


def parse_overrides(items, options: dict | None = None) -> list[tuple[str, object]]:
    """The ``"key=value"`` overrides of one command line → ``[(key, value)]`` in order.

    ``options``: ``{key: "--device cpu"}``, the command-line options that set a key themselves.
    A key given twice, or given both as an override and by its option, is a ConfigError (a
    command line means one value per key; which one would win is not what a reader sees).
    """
    out, given = [], dict(options or {})  # a flag's key counts as given
    for item in items:
        k, v = parse_override(item)
        if k in given:
            raise ConfigError(f"{k} is given twice on the command line ({given[k]} and {item}); "
                              f"give it once")
        given[k] = item
        out.append((k, v))
    return out


def key_docs(path: Path) -> dict[str, str]:
    """``{key: inline comment}`` of a default file (used by ``--help``)."""
    docs = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z_]\w*)\s*:.*?#\s*(.*)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


class GridPoints:
    """The points of a grid as a lazy sequence: ``len()`` is the product of the grid lists'
    lengths, point ``i`` is built when asked for (cartesian product in the order of
    ``grid_keys``, the last key varying fastest), so no grid is ever expanded in memory."""

    def __init__(self, values: dict, grid_keys: list):
        self._values = values
        self._keys = list(grid_keys)
        self._lists = [values[k] for k in self._keys]
        self._n = math.prod(len(v) for v in self._lists)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        if not -self._n <= i < self._n:
            raise IndexError(f"grid point {i} of {self._n}")
        i %= self._n
        point = dict(self._values)
        for k, values in zip(reversed(self._keys), reversed(self._lists)):
            i, j = divmod(i, len(values))
            point[k] = values[j]
        return point

    def __iter__(self):
        return (self[i] for i in range(self._n))


class Config:
    """A resolved configuration.

    Attributes:
        values: the flat dict (grid keys hold the list of their values).
        grid_keys: the ``hyper_parameters`` keys, in order.
        sources: ``{key: where its value was set}`` (a file path or ``"command line"``).
        files: the YAML files read, in order.
    """

    def __init__(self, values: dict, grid_keys: list, sources: dict, files: list):
        self.values = values
        self.grid_keys = list(grid_keys)
        self.sources = sources
        self.files = files

    def points(self) -> GridPoints:
        """Every grid point as a full flat dict (one point when there is no grid), as a lazy
        sequence (:class:`GridPoints`)."""
        return GridPoints(self.values, self.grid_keys)

    def describe_grid(self) -> str:
        """``"12 points (n_layers: 3 values × reg_weight: 4 values)"``, or ``"1 point"``."""
        n = len(self.points())
        sizes = " × ".join(f"{k}: {len(self.values[k])} value{'s' if len(self.values[k]) > 1 else ''}"
                           for k in self.grid_keys)
        return f"{n:,} point{'s' if n != 1 else ''}" + (f" ({sizes})" if sizes else "")

    def __getitem__(self, key):
        return self.values[key]


def _declared_types(defaults: list[tuple[Path, dict]]) -> tuple[dict, dict]:
    """Type and defining file of every known key, from the first default file defining it. A
    list default of a key that some default file names in ``hyper_parameters`` is a grid of
    scalars: its type is the element type."""
    gridded = set()
    for _, d in defaults:
        hp = d.get("hyper_parameters")
        if isinstance(hp, list):
            gridded.update(x for x in hp if isinstance(x, str))
    types, origin = {}, {}
    for path, d in defaults:
        for k, v in d.items():
            if k in types:
                continue
            origin[k] = path
            if v is None:
                types[k] = _NULLABLE.get(k, object)
            elif isinstance(v, list) and k in gridded and v and \
                    not any(isinstance(x, (list, dict)) for x in v):
                types[k] = float if any(isinstance(x, float) for x in v) else type(v[0])
            elif isinstance(v, dict):
                raise ConfigError(f"{path}: key {k!r} holds a mapping; config values are "
                                  f"scalars or lists")
            else:
                types[k] = type(v)
    return types, origin


def _coerce(key: str, value, typ, where: str):
    """``value`` checked against (and, for int → float and '1e-3' → float, converted to) typ."""
    if typ is object:
        return value
    if value is None:
        if key in _NULLABLE:
            return None
        raise ConfigError(f"{key} (from {where}) is empty; it needs {_TYPE_NAMES[typ]}")
    ok = True
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        if isinstance(value, str) and _DECIMAL_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            ok = False
        if ok and not math.isfinite(value):
            raise ConfigError(f"{key}={value} (from {where}) must be a finite number")
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is list:
        ok = isinstance(value, list)
    if not ok:
        raise ConfigError(f"{key} (from {where}) must be {_TYPE_NAMES.get(typ, typ.__name__)}, "
                          f"got {value!r} ({type(value).__name__})")
    return value


def check_point(values: dict, where=lambda k: "config") -> None:
    """Value checks of one resolved point (raises ConfigError)."""
    def bad(key, why):
        raise ConfigError(f"{key}={values[key]!r} (from {where(key)}) {why}")

    def choice(key, allowed):
        if key in values and values[key] not in allowed:
            bad(key, f"is not one of {', '.join(allowed)}")

    for key, allowed in CHOICES.items():
        choice(key, allowed)
    for key, allowed in RANGES.items():
        if key in values and values[key] not in allowed:
            bad(key, allowed.requirement())
    topk = values.get("topk")
    if topk is not None:
        if not topk or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0
                               for k in topk):
            bad("topk", "must be a non-empty list of positive integers, e.g. [10, 20, 50]")
    for key, what in _DISTINCT.items():
        repeated = _repeated(values.get(key) or [])
        if repeated is not None:
            bad(key, f"lists the {what} {repeated!r} twice; list each {what} once")
    vm = values.get("valid_metric")
    if vm is not None:
        m = _METRIC_RE.match(str(vm).lower())
        if not m or m.group(1) not in METRICS:
            bad("valid_metric", f"must look like metric@k with metric one of "
                                f"{', '.join(METRICS)} (e.g. recall@20)")
        if topk is not None and int(m.group(2)) not in topk:
            bad("valid_metric", f"uses k={m.group(2)}, which is not in topk={topk} (from "
                                f"{where('topk')})")


def _repeated(items: list):
    """The first element of ``items`` that occurs twice (None when all are distinct)."""
    seen = []
    for x in items:
        if x in seen:
            return x
        seen.append(x)
    return None


def load_config(model: str, dataset: str | None = None, files=(), overrides=(), *,
                model_file: Path | None = None, overrides_from: str = "the command line"
                ) -> Config:
    """Resolve the configuration of ``model`` on ``dataset`` (a built-in name, or None for a
    dataset directory).

    Args:
        files: user YAML files, applied in order after the package defaults.
        overrides: ``"key=value"`` strings, ``(key, value)`` pairs or ``(key, value, where)``
            triples (``where``: the source error messages name), applied last.
        model_file: the model layer to use instead of ``configs/model/<model>.yaml``.
        overrides_from: where the overrides come from, for error messages.
    """
    default_files = [CONFIG_DIR / "overall.yaml", dataset_config_file(dataset)]
    mf = model_file if model_file is not None else model_config_file(model)
    if mf is not None:
        default_files.append(Path(mf))
    defaults = [(f, _read_yaml(f)) for f in default_files]
    types, origin = _declared_types(defaults)

    values, sources = {}, {}
    for f, d in defaults:
        for k, v in d.items():
            values[k], sources[k] = v, str(f)

    def apply(k, v, where):
        if k not in types:
            close = difflib.get_close_matches(k, list(types), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {k!r} in {where}{hint} (known keys are those "
                              f"defined in {', '.join(_short(f) for f in default_files)}; see "
                              f"python -m sgfd_fast.train --help)")
        values[k], sources[k] = v, where

    for f in files:
        for k, v in _read_yaml(Path(f)).items():
            apply(k, v, str(f))
    for item in overrides:
        if isinstance(item, str):
            item = parse_override(item)
        k, v, *src = item
        apply(k, v, src[0] if src else overrides_from)

    def where(k):
        return sources.get(k, "config")

    hp = values.get("hyper_parameters") or []
    if not isinstance(hp, list) or not all(isinstance(x, str) for x in hp):
        raise ConfigError(f"hyper_parameters (from {where('hyper_parameters')}) must be a list "
                          f"of key names, got {hp!r}")
    for k in hp:
        if k not in types or k == "hyper_parameters":
            close = difflib.get_close_matches(k, list(types), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"hyper_parameters (from {where('hyper_parameters')}) names "
                              f"{k!r}, which is not a config key{hint}")
        if k in DATA_KEYS:
            raise ConfigError(f"hyper_parameters (from {where('hyper_parameters')}) names {k!r}, "
                              f"which selects the data; run one configuration per value instead")
        if k in RUN_KEYS:
            raise ConfigError(f"hyper_parameters (from {where('hyper_parameters')}) names {k!r}, "
                              f"which cannot vary over a grid: it is {RUN_KEYS[k]}")
    if len(set(hp)) != len(hp):
        raise ConfigError(f"hyper_parameters (from {where('hyper_parameters')}) repeats a key: "
                          f"{hp}")
    values["hyper_parameters"] = hp

    for k, v in list(values.items()):
        if k == "hyper_parameters":
            continue
        typ = types[k]
        if k in hp:
            is_grid = isinstance(v, list) and (typ is not list or
                                               (v and all(isinstance(x, list) for x in v)))
            grid = v if is_grid else [v]
            if not grid:
                raise ConfigError(f"{k} (from {where(k)}) is a grid key with no values")
            values[k] = [_coerce(k, x, typ, where(k)) for x in grid]
            repeated = _repeated(values[k])
            if repeated is not None:
                raise ConfigError(f"{k}={v!r} (from {where(k)}) lists {repeated!r} twice; each "
                                  f"value of a grid key is one grid point: list it once")
        else:
            if isinstance(v, list) and typ is not list and typ is not object and \
                    not (typ is _NULLABLE.get(k)):
                if len(v) != 1:
                    raise ConfigError(f"{k}={v!r} (from {where(k)}) lists several values, but "
                                      f"{k} is not in hyper_parameters={hp} (from "
                                      f"{where('hyper_parameters')}); give one value, or add "
                                      f"{k} to hyper_parameters to search over them")
                v = v[0]
            values[k] = _coerce(k, v, typ, where(k))

    cfg = Config(values, hp, sources, [str(f) for f in default_files] + [str(f) for f in files])
    # every grid value in a point of the others' first values: the checks couple no two grid
    # keys (valid_metric, which is checked against topk, cannot be one), so this covers every
    # point without expanding the grid
    first = cfg.points()[0]
    check_point(first, where)
    for k in hp:
        for x in values[k][1:]:
            check_point({**first, k: x}, where)
    return cfg


def with_added_keys(values: dict) -> dict:
    """``values`` (a recorded config) with each :data:`ADDED_KEYS` key it lacks at the value it
    was trained with."""
    return {**ADDED_KEYS, **values}


def check_recorded(model: str, dataset: str | None, values: dict, grid_keys: list,
                   where: str) -> Config:
    """A configuration recorded by a run (``run.json``), resolved again and checked like a new
    one: every key known and present (but :data:`ADDED_KEYS`, read at the value older runs had),
    every value of its type and range, ``grid_keys`` its ``hyper_parameters``. Raises ConfigError
    naming ``where``."""
    values = with_added_keys(values)
    cfg = load_config(model, dataset, overrides=list(values.items()), overrides_from=where)
    missing = sorted(set(cfg.values) - set(values))
    if missing:
        raise ConfigError(f"{where} lacks the config key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}")
    if list(grid_keys) != cfg.grid_keys:
        raise ConfigError(f"{where} has grid_keys={grid_keys!r} but hyper_parameters="
                          f"{cfg.grid_keys!r}")
    return cfg


def _short(path: Path) -> str:
    try:
        return str(Path(path).relative_to(CONFIG_DIR.parent.parent))
    except ValueError:
        return str(path)
