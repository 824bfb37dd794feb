"""A study spec: its YAML format (:data:`SPEC_FORMAT`, what ``--help`` prints), the shipped specs
(``sgfd_fast/studies/``, package data) and the check of a whole spec before anything trains: an
unknown key names the arm and the closest known keys."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RANGES, Config, load_config, read_yaml
from ..data.formats import resolve_labels
from ..data.registry import DATASETS, DEFAULT_FORMAT, FORMATS
from ..errors import ConfigError

__all__ = ["Spec", "load_spec", "find_spec", "shipped_specs", "SPEC_FORMAT", "STUDIES_DIR"]

#: The shipped specs (package data).
STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
_SPEC_KEYS = ("name", "description", "model", "dataset", "data_path", "format", "labels", "seeds",
              "baseline", "metrics", "config", "arms", "contrasts")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


#: The spec format, as ``--help`` prints it.
SPEC_FORMAT = """\
spec format (YAML; model, dataset or data_path, seeds, baseline and arms are required):
  name: office-bm3                  # default: the file name; names the default --out
  description: one line for --list
  model: BM3                        # a key of sgfd_fast.models.MODELS
  dataset: office                   # a built-in dataset, or instead data_path
                                    #   (built-in: %s)
  # data_path: data/baby            #   a dataset directory (relative to the spec file)
  # format: mmrec                   #   its format (%s, default %s)
  # labels: baby_labels.tsv         #   its label file (relative to the spec file, else data_path)
  seeds: [1, 2, 3, 4, 5]            # every arm is trained once per seed (key seed)
  baseline: plain                   # the arm the others are compared with, seed by seed
  metrics: [recall@20, ndcg@20]     # reported on valid and test (default these two)
  config: {epochs: 300}             # overrides shared by every arm
  arms:                             # name: overrides (config keys; a grid via hyper_parameters)
    plain: {sgfd: false}
    sgfd: {}
    sgfd_control: {ce_weight: 0, kd_weight: 0}
  contrasts:                        # optional: more paired comparisons, name: [arm, reference]
    distillation: [sgfd, sgfd_control]
""" % (", ".join(DATASETS), " or ".join(FORMATS), DEFAULT_FORMAT)


@dataclass
class Spec:
    """A checked study spec. ``configs[arm]`` is the arm's resolved config without its seed."""

    name: str
    path: Path
    model: str
    dataset: str | None          # the built-in dataset's name (its config layer), else None
    data: dict | None            # how training loads it (None: a Dataset passed in memory)
    seeds: list[int]
    baseline: str
    metrics: list[str]
    shared: dict
    arms: dict[str, dict]
    description: str = ""
    contrasts: dict[str, tuple[str, str]] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    #: config overrides from the command line, applied to every arm after its own keys
    command_line: dict = field(default_factory=dict)
    #: the spec's own seeds when the command line replaced them (None: not replaced)
    spec_seeds: list[int] | None = None

    def overrides(self, arm: str, seed: int, device: str | None = None) -> list:
        """``(key, value, where)`` of the arm's config layers, each naming its source."""
        where = f"study spec {self.path}"
        extra = [("device", device, "--device")] if device else []
        return [*((k, v, f"{where}, config") for k, v in self.shared.items()),
                *((k, v, f"{where}, arm {arm!r}") for k, v in self.arms[arm].items()),
                *((k, v, "the command line") for k, v in self.command_line.items()),
                ("seed", seed, "the study's seeds"), *extra]


def shipped_specs() -> dict[str, Path]:
    """``{name: path}`` of the specs under ``sgfd_fast/studies/``."""
    return {p.stem: p for p in sorted(STUDIES_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def find_spec(name_or_path) -> Path:
    """A spec file: an existing path, else a shipped spec's name (``office-bm3``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_specs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(shipped), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"no study spec {str(name_or_path)!r}: not a file, and not one of the "
                      f"shipped specs ({', '.join(shipped)}){hint} "
                      f"(python -m sgfd_fast.study --list)")


def change_in_spec(key: str) -> str:
    """How to study another ``key`` (model, dataset, ...): a spec's key says what its study is of,
    so the command line cannot change it (the runs of one study directory are of one spec)."""
    return (f"copy the spec, change {key} there and run the copy "
            f"(python -m sgfd_fast.study my-spec.yaml)")


def _unknown(what: str, key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{what} sets {key!r}, which is not a config key{hint}")


def _check_seeds(seeds, where: str) -> None:
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s in RANGES["seed"] for s in seeds) or \
            len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of distinct non-negative ints "
                          f"below 2**63 (torch's seed range), got {seeds!r}")


def load_spec(path, *, in_memory: bool = False, seeds: list[int] | None = None,
              overrides: dict | None = None) -> Spec:
    """Read and check a whole spec (raises ConfigError naming the file, the arm and the key).

    ``in_memory``: the dataset is passed to :func:`run_study` as a Dataset; the spec's dataset
    keys are then not required. ``seeds`` replaces the spec's seeds and ``overrides`` (``{key:
    value}``) applies to every arm, after the arm's own keys: a smaller study from the command
    line (``--seeds``, ``--epochs``, ``key=value``), checked like the spec.
    """
    from ..models import MODELS

    path = Path(path)
    raw = read_yaml(path, "study spec")  # a key given twice (two arms of one name) is an error
    if not isinstance(raw, dict):
        raise ConfigError(f"study spec {path} must be a YAML mapping (model, dataset, seeds, "
                          f"baseline, arms, ...)")
    where = f"study spec {path}"
    for k in raw:
        if k not in _SPEC_KEYS:
            close = difflib.get_close_matches(str(k), _SPEC_KEYS, n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{where}: unknown key {k!r}{hint} (a spec has "
                              f"{', '.join(_SPEC_KEYS)})")

    model = raw.get("model")
    if model not in MODELS:
        close = difflib.get_close_matches(str(model), list(MODELS), n=1)
        raise ConfigError(f"{where}: model {model!r} is not one of {', '.join(MODELS)}"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))

    dataset, data = raw.get("dataset"), None
    if raw.get("data_path") is not None:
        if dataset is not None:
            raise ConfigError(f"{where}: give dataset (a built-in name) or data_path, not both")
        base = path.resolve().parent
        fmt = raw.get("format", DEFAULT_FORMAT)
        if fmt not in FORMATS:
            raise ConfigError(f"{where}: format must be {' or '.join(FORMATS)}, got {fmt!r}")
        root = base / Path(raw["data_path"]).expanduser()
        data = {"path": str(root), "format": fmt,
                "labels": str(resolve_labels(root, raw["labels"], start=base))
                if raw.get("labels") else None}
        if not Path(data["path"]).is_dir():
            raise ConfigError(f"{where}: data_path {raw['data_path']!r} is not a directory "
                              f"({data['path']}; a relative data_path starts at the spec's "
                              f"directory)")
        if data["labels"] and not Path(data["labels"]).is_file():
            raise ConfigError(f"{where}: labels {raw['labels']!r} is not a file "
                              f"({data['labels']}; a relative path starts at the spec's "
                              f"directory, then at data_path)")
    elif dataset is not None:
        if dataset not in DATASETS:
            raise ConfigError(f"{where}: dataset {dataset!r} is not a built-in dataset "
                              f"({', '.join(DATASETS)}); for your own give data_path (and format, "
                              f"labels)")
        data = {"name": dataset}
    elif not in_memory:
        raise ConfigError(f"{where}: no dataset; give dataset (a built-in name) or data_path")

    spec_seeds = raw.get("seeds")
    _check_seeds(spec_seeds, where)
    if seeds is not None:
        _check_seeds(seeds, "--seeds")
    command_line = dict(overrides or {})

    arms = raw.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ConfigError(f"{where}: arms must be a mapping of arm name to config overrides")
    arms = {str(a): ({} if o is None else o) for a, o in arms.items()}
    for arm, o in arms.items():
        if not _NAME_RE.match(arm):
            raise ConfigError(f"{where}: arm name {arm!r} must be letters, digits, '_', '-', '.' "
                              f"(it names a directory)")
        if not isinstance(o, dict):
            raise ConfigError(f"{where}: arm {arm!r} must map config keys to values, got {o!r}")
    baseline = raw.get("baseline")
    if baseline is None:
        raise ConfigError(f"{where}: no baseline; name the arm the others are compared with "
                          f"(baseline: {next(iter(arms))}, one of {', '.join(arms)})")
    if baseline not in arms:
        raise ConfigError(f"{where}: baseline {baseline!r} is not an arm (arms: "
                          f"{', '.join(arms)})")
    contrasts = raw.get("contrasts") or {}
    if not isinstance(contrasts, dict):
        raise ConfigError(f"{where}: contrasts must map a name to [arm, reference]")
    for name, pair in contrasts.items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"{where}: contrast {name!r} must be [arm, reference], got {pair!r}")
        for arm in pair:
            if arm not in arms:
                raise ConfigError(f"{where}: contrast {name!r} names {arm!r}, which is not an arm "
                                  f"(arms: {', '.join(arms)})")
        if pair[0] == pair[1]:
            raise ConfigError(f"{where}: contrast {name!r} compares {pair[0]!r} with itself; "
                              f"name two different arms")
    shared = raw.get("config") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{where}: config must map config keys to values, got {shared!r}")
    metrics = raw.get("metrics", ["recall@20", "ndcg@20"])
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"{where}: metrics must be a list such as [recall@20, ndcg@20]")
    twice = next((m for i, m in enumerate(metrics) if m in metrics[:i]), None)
    if twice is not None:
        raise ConfigError(f"{where}: metrics lists {twice!r} twice; list each metric once")

    spec = Spec(name=str(raw.get("name") or path.stem), path=path, model=model, dataset=dataset,
                data=data, seeds=spec_seeds if seeds is None else list(seeds), baseline=baseline,
                metrics=[str(m) for m in metrics], shared=shared, arms=arms,
                description=str(raw.get("description") or ""),
                contrasts={str(n): (str(a), str(r)) for n, (a, r) in contrasts.items()},
                command_line=command_line, spec_seeds=None if seeds is None else spec_seeds)
    if not _NAME_RE.match(spec.name):
        raise ConfigError(f"{where}: name {spec.name!r} must be letters, digits, '_', '-', '.'")

    known = load_config(model, dataset).values
    for what, keys in (("config", shared), *((f"arm {a!r}", o) for a, o in arms.items())):
        for k in keys:
            if k == "seed":
                raise ConfigError(f"{where}: {what} sets seed; a study sets it from seeds")
            if k not in known:
                raise _unknown(f"{where}: {what}", k, known)
    for k in command_line:
        if k == "seed":
            raise ConfigError("the command line sets seed; give the study's seeds with --seeds")
        if k in _SPEC_KEYS and k not in known:  # model, dataset, ...: what the study is of
            raise ConfigError(f"the command line sets {k!r}, which is a key of the study spec "
                              f"({path}), not a config key; {change_in_spec(k)}")
        if k not in known:
            raise _unknown("the command line", k, known)
    load_config(model, dataset, overrides=list(command_line.items()))  # its own values first
    for arm in arms:
        try:
            cfg = load_config(model, dataset, overrides=spec.overrides(arm, spec.seeds[0]))
        except ConfigError as e:  # it names the source of each key it blames
            blamed = str(e).replace(f" (from {where}, arm {arm!r})", "")
            raise ConfigError(f"{where}: arm {arm!r}: "
                              + blamed.replace(f"{where}, config", "the spec's config")) from None
        for m in spec.metrics:
            for topk in cfg["topk"] if "topk" in cfg.grid_keys else [cfg["topk"]]:
                name, _, k = m.partition("@")
                if not k.isdigit() or int(k) not in topk:
                    raise ConfigError(f"{where}: metric {m!r} must look like recall@20 with k in "
                                      f"topk={topk} (arm {arm!r}; topk from "
                                      f"{cfg.sources['topk']})")
        spec.configs[arm] = cfg
    return spec
