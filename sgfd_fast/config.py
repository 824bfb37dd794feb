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
Command-line values are parsed with ``yaml.safe_load`` (``n_layers=[1,2]``, ``sgfd=false``),
never evaluated.

``hyper_parameters: [n_layers, reg_weight]`` makes the listed keys' list values a grid: every
combination (cartesian product, in the order listed) is one point, trained from the same seed;
the trainer selects the point on the validation metric.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import NamedTuple

import yaml

from .choices import (DEVICES, DIST_BACKENDS, METRICS, PROTOCOLS, SGFD_LOSSES,
                      STUDENT_ACTIVATIONS, STUDENT_INITS, STUDENT_NORMS)
from .errors import ConfigError

__all__ = ["Config", "load_config", "parse_override", "CONFIG_DIR", "dataset_config_file",
           "model_config_file", "key_docs", "check_point", "DATA_KEYS", "CHOICES", "RANGES",
           "Range"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Keys whose value is one of a fixed set.
CHOICES = {"protocol": PROTOCOLS, "sgfd_loss": SGFD_LOSSES, "device": DEVICES,
           "dist_backend": DIST_BACKENDS,
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
    "lambda_coeff": Range(0, 1),
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


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte "
                          f"{e.start}); give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(e)}") from None
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
    """``"key=value"`` → ``(key, yaml.safe_load(value))``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command-line override {item!r} must look like key=value "
                          f"(for example learning_rate=0.01 or n_layers=[1,2])")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"command-line override {item!r}: the value is not valid YAML "
                          f"({e.problem if hasattr(e, 'problem') else e})") from None


def key_docs(path: Path) -> dict[str, str]:
    """``{key: inline comment}`` of a default file (used by ``--help``)."""
    docs = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z_]\w*)\s*:.*?#\s*(.*)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


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

    def points(self) -> list[dict]:
        """Every grid point as a full flat dict (one point when there is no grid)."""
        lists = [self.values[k] for k in self.grid_keys]
        out = []
        for combo in itertools.product(*lists):
            point = dict(self.values)
            point.update(zip(self.grid_keys, combo))
            out.append(point)
        return out

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
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                ok = False
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            ok = False
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
    vm = values.get("valid_metric")
    if vm is not None:
        m = _METRIC_RE.match(str(vm).lower())
        if not m or m.group(1) not in METRICS:
            bad("valid_metric", f"must look like metric@k with metric one of "
                                f"{', '.join(METRICS)} (e.g. recall@20)")
        if topk is not None and int(m.group(2)) not in topk:
            bad("valid_metric", f"uses k={m.group(2)}, which is not in topk={topk}")


def load_config(model: str, dataset: str | None = None, files=(), overrides=(), *,
                model_file: Path | None = None) -> Config:
    """Resolve the configuration of ``model`` on ``dataset`` (a built-in name, or None for a
    dataset directory).

    Args:
        files: user YAML files, applied in order after the package defaults.
        overrides: ``"key=value"`` strings (or ``(key, value)`` pairs), applied last.
        model_file: the model layer to use instead of ``configs/model/<model>.yaml``.
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
        k, v = parse_override(item) if isinstance(item, str) else item
        apply(k, v, "the command line")

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
        else:
            if isinstance(v, list) and typ is not list and typ is not object and \
                    not (typ is _NULLABLE.get(k)):
                if len(v) != 1:
                    raise ConfigError(f"{k}={v!r} (from {where(k)}) lists several values, but "
                                      f"{k} is not in hyper_parameters; give one value, or add "
                                      f"{k} to hyper_parameters to search over them")
                v = v[0]
            values[k] = _coerce(k, v, typ, where(k))

    cfg = Config(values, hp, sources, [str(f) for f in default_files] + [str(f) for f in files])
    for point in cfg.points():
        check_point(point, where)
    return cfg


def _short(path: Path) -> str:
    try:
        return str(Path(path).relative_to(CONFIG_DIR.parent.parent))
    except ValueError:
        return str(path)
