"""Layered configuration: layers, unknown keys, types, values, overrides, grids."""

import re
from pathlib import Path

import pytest
import yaml

from sgfd_fast.config import CONFIG_DIR, key_docs, load_config, parse_override
from sgfd_fast.errors import ConfigError

MODEL_YAML = """\
n_layers: [1, 2]      # (int) propagation layers
reg_weight: [0.1, 0.01]  # (float) embedding penalty
dropout: 0.5          # (float) dropout
hyper_parameters: [n_layers, reg_weight]  # (list of str) the grid
learning_rate: 0.005  # (float) the model's own learning rate
"""


@pytest.fixture
def model_yaml(tmp_path):
    f = tmp_path / "Fake.yaml"
    f.write_text(MODEL_YAML)
    return f


def write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_defaults_are_documented_inline():
    for f in [CONFIG_DIR / "overall.yaml", *sorted((CONFIG_DIR / "dataset").glob("*.yaml")),
              *sorted((CONFIG_DIR / "model").glob("*.yaml"))]:
        data = yaml.safe_load(f.read_text())
        docs = key_docs(f)
        assert set(data) == set(docs), f"undocumented keys in {f}: {set(data) - set(docs)}"
        assert all(docs.values())


def test_shared_keys_present():
    cfg = load_config("Fake", "office")
    for k in ("seed", "epochs", "train_batch_size", "eval_batch_size", "learning_rate",
              "weight_decay", "eval_step", "stopping_step", "valid_metric", "topk", "protocol",
              "device", "hyper_parameters", "sgfd", "sgfd_loss", "ce_weight", "kd_weight",
              "t_decay", "embedding_size", "collapse_teacher", "valid_ratio", "split_seed",
              "modalities"):
        assert k in cfg.values, k
    assert cfg["valid_metric"] == "recall@20" and cfg["protocol"] == "standard"


@pytest.mark.parametrize("dataset", ["office", "toysgames-synthetic", None])
def test_every_shipped_model_resolves(dataset):
    from sgfd_fast.models import MODELS

    for model in MODELS:
        cfg = load_config(model, dataset)
        assert len(cfg.points()) >= 1 and cfg["protocol"] == "standard"


def test_layer_order(tmp_path, model_yaml):
    # overall -> dataset (office sets t_decay 50) -> model -> files in order -> overrides
    base = load_config("Fake", None, model_file=model_yaml)
    assert base["t_decay"] == 10.0 and base["learning_rate"] == 0.005
    assert load_config("Fake", "office", model_file=model_yaml)["t_decay"] == 50.0
    f1 = write(tmp_path, "a.yaml", "learning_rate: 0.1\nepochs: 3\n")
    f2 = write(tmp_path, "b.yaml", "learning_rate: 0.2\n")
    cfg = load_config("Fake", "office", [f1, f2], ["epochs=7"], model_file=model_yaml)
    assert cfg["learning_rate"] == 0.2 and cfg["epochs"] == 7
    assert cfg.sources["learning_rate"] == str(f2) and cfg.sources["epochs"] == "the command line"


def test_config_dir_is_the_package_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "overall.yaml").write_text("seed: 1\n")
    assert load_config("Fake", "office")["seed"] == 999
    import sgfd_fast

    assert CONFIG_DIR == Path(sgfd_fast.__file__).resolve().parent / "configs"


def test_unknown_key_names_key_source_and_close_match(tmp_path):
    with pytest.raises(ConfigError, match=r"'lerning_rate' in the command line; did you mean "
                                          r"'learning_rate'"):
        load_config("Fake", "office", overrides=["lerning_rate=0.1"])
    f = write(tmp_path, "u.yaml", "topK: [5]\n")
    with pytest.raises(ConfigError, match=rf"'topK' in {f}.*'topk'"):
        load_config("Fake", "office", [f])
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz'"):
        load_config("Fake", "office", overrides=["zzz=1"])


def test_model_keys_known_only_with_model_file(model_yaml):
    with pytest.raises(ConfigError, match="unknown config key 'dropout'"):
        load_config("Fake", "office", overrides=["dropout=0.1"])
    assert load_config("Fake", "office", overrides=["dropout=0.1"],
                       model_file=model_yaml)["dropout"] == 0.1


@pytest.mark.parametrize("item, match", [
    ("epochs=1.5", "epochs .* must be an int, got 1.5"),
    ("epochs=true", "epochs .* must be an int"),
    ("sgfd=1", "sgfd .* must be a bool"),
    ("learning_rate=fast", "learning_rate .* must be a float"),
    ("topk=10", "topk .* must be a list"),
    ("protocol=paper", "protocol='paper' .* is not one of standard, legacy"),
    ("sgfd_loss=kl", "sgfd_loss='kl' .* is not one of official, standard"),
    ("device=tpu", "device='tpu' .* is not one of auto, cpu, cuda"),
    ("valid_metric=recall@5", "valid_metric='recall@5' .* k=5, which is not in topk"),
    ("valid_metric=auc@20", "valid_metric='auc@20' .* metric@k"),
    ("valid_metric=recall", "valid_metric='recall' .* metric@k"),
    ("epochs=0", "epochs=0 .* at least 1"),
    ("learning_rate=0", "learning_rate=0.0 .* must be positive"),
    ("kd_weight=-1", "kd_weight=-1.0 .* must not be negative"),
    ("topk=[]", "topk=\\[\\] .* non-empty list of positive integers"),
    ("valid_ratio=1.5", "valid_ratio=1.5 .* \\[0, 1\\)"),
    ("epochs=", "epochs .* is empty"),
    ("embedding_size=[8,16]", "not in hyper_parameters"),
    ("hyper_parameters=[nope]", "names 'nope', which is not a config key"),
    ("hyper_parameters=[valid_ratio]", "selects the data"),
    ("hyper_parameters=seed", "must be a list of key names"),
    ("noequals", "must look like key=value"),
    ("epochs=[1", "not valid YAML"),
])
def test_bad_values(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config("Fake", "office", overrides=[item])


@pytest.mark.parametrize("model, item, match", [
    ("BM3", "dropout=1.5", r"dropout=1.5 \(from the command line\) must lie in \[0, 0.99\]"),
    ("BM3", "n_layers=-1", "n_layers=-1 .* must not be negative"),
    ("BM3", "n_layers=1.5", "n_layers .* must be an int"),
    ("BM3", "seed=100000000000000000000", r"seed=100000000000000000000 .* \[0, 2\*\*63\)"),
    ("BM3", "sgfd_loss=foo", "sgfd_loss='foo' .* is not one of official, standard"),
    ("BM3", "protocol=foo", "protocol='foo' .* is not one of standard, legacy"),
    ("BM3", "collapse_teacher=1", "collapse_teacher .* must be a bool"),
    ("BM3", "t_decay=0", "t_decay=0.0 .* at least 1e-06"),
    ("GRCN", "num_routing=-1", "num_routing=-1 .* must not be negative"),
    ("MAML", "hidden_layer_dim=1", "hidden_layer_dim=1 .* at least 2"),
    ("MAML", "clip_norm=0", "clip_norm=0.0 .* at least 1e-12"),
    ("MAML", "use_rank_weight=2", "use_rank_weight .* must be a bool"),
])
def test_model_values_are_checked_at_load(model, item, match):
    """The models read config[key] unchecked: every range they rely on is checked here."""
    with pytest.raises(ConfigError, match=match):
        load_config(model, "office", overrides=[item])


def test_every_grid_point_is_checked():
    with pytest.raises(ConfigError, match="dropout=1.5 .* must lie in"):
        load_config("BM3", "office", overrides=["hyper_parameters=[dropout]", "dropout=[0.1,1.5]"])


def test_values_parsed_as_yaml_never_evaluated():
    assert parse_override("x=[1, 2]") == ("x", [1, 2])
    assert parse_override("x=__import__('os')") == ("x", "__import__('os')")
    cfg = load_config("Fake", "office", overrides=["learning_rate=1e-3", "weight_decay=0",
                                                   "sgfd=false", "modalities=[text]",
                                                   "topk=[5,20]"])
    assert cfg["learning_rate"] == 0.001 and isinstance(cfg["weight_decay"], float)
    assert cfg["sgfd"] is False and cfg["modalities"] == ["text"] and cfg["topk"] == [5, 20]


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("Fake", "office", [tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("Fake", "office", [write(tmp_path, "bad.yaml", "a: [1\n")])
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config("Fake", "office", [write(tmp_path, "list.yaml", "- 1\n- 2\n")])
    assert load_config("Fake", "office", [write(tmp_path, "empty.yaml", "")])["seed"] == 999


def test_grid(model_yaml):
    cfg = load_config("Fake", "office", model_file=model_yaml)
    assert cfg.grid_keys == ["n_layers", "reg_weight"]
    pts = cfg.points()
    assert [(p["n_layers"], p["reg_weight"]) for p in pts] == \
        [(1, 0.1), (1, 0.01), (2, 0.1), (2, 0.01)]
    assert all(p["dropout"] == 0.5 and p["seed"] == 999 for p in pts)
    # overriding a grid key with a scalar gives one point; its type stays checked
    cfg = load_config("Fake", "office", overrides=["n_layers=3", "reg_weight=[0.5]"],
                      model_file=model_yaml)
    assert len(cfg.points()) == 1 and cfg.points()[0]["n_layers"] == 3
    with pytest.raises(ConfigError, match="n_layers .* must be an int"):
        load_config("Fake", "office", overrides=["n_layers=[1, 2.5]"], model_file=model_yaml)
    # dropping a key from the grid: a one-element list collapses, several values are an error
    cfg = load_config("Fake", "office", overrides=["hyper_parameters=[reg_weight]",
                                                   "n_layers=[2]"], model_file=model_yaml)
    assert cfg["n_layers"] == 2 and len(cfg.points()) == 2
    with pytest.raises(ConfigError, match="n_layers=\\[1, 2\\] .* not in hyper_parameters"):
        load_config("Fake", "office", overrides=["hyper_parameters=[]"], model_file=model_yaml)
    # a grid over a shared key, and values checked per point
    cfg = load_config("Fake", "office", overrides=["hyper_parameters=[learning_rate]",
                                                   "learning_rate=[0.1, 1e-2]"])
    assert [p["learning_rate"] for p in cfg.points()] == [0.1, 0.01]
    with pytest.raises(ConfigError, match="learning_rate=-1.0 .* must be positive"):
        load_config("Fake", "office", overrides=["hyper_parameters=[learning_rate]",
                                                 "learning_rate=[0.1, -1]"])


# --- issue 22, kind 4: what YAML 1.1 and PyYAML would read silently ---------------------------


@pytest.mark.parametrize("item, meant", [("epochs=010", "octal (010 = 8)"),
                                         ("seed=0x3", "hexadecimal (0x3 = 3)"),
                                         ("epochs=1_0", "underscores dropped (1_0 = 10)"),
                                         ("epochs=1:30", "base 60 (1:30 = 90)"),
                                         ("learning_rate=1_0.5", "(1_0.5 = 10.5)")])
def test_yaml_1_1_numbers_are_refused_with_the_reason(tmp_path, item, meant):
    with pytest.raises(ConfigError, match=rf"override '{item}': .*{re.escape(meant)}.*decimal"):
        load_config("Fake", "office", overrides=[item])
    key, value = item.split("=")
    f = write(tmp_path, "u.yaml", f"stopping_step: 5\n{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"{f}, line 2, column \d+: .*{re.escape(meant)}"):
        load_config("Fake", "office", [f])
    # plain decimal, quoted strings and 1e-3 (a string to YAML 1.1) still read as written
    assert load_config("Fake", "office", overrides=["epochs=10", "learning_rate=1e-3",
                                                    "seed=0"])["epochs"] == 10


def test_non_finite_floats_are_refused():
    for item in ("learning_rate=.inf", "weight_decay=-.inf", "kd_weight=1e999"):
        with pytest.raises(ConfigError, match="must be a finite number"):
            load_config("Fake", "office", overrides=[item])
    with pytest.raises(ConfigError, match="must be a float, got 'nan'"):  # a string to YAML
        load_config("Fake", "office", overrides=["weight_decay=nan"])


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    f = write(tmp_path, "u.yaml", "epochs: 3\nlearning_rate: 0.1\nepochs: 5\n")
    with pytest.raises(ConfigError, match=rf"{f}, line 3, column 1: 'epochs' is given twice "
                                          r"\(first on line 1\)"):
        load_config("Fake", "office", [f])


@pytest.mark.parametrize("items, match", [
    (["hyper_parameters=[seed]", "seed=[1,1]"], r"seed=\[1, 1\] .* lists 1 twice"),
    (["hyper_parameters=[n_layers]", "n_layers=[1,2,1]"], "lists 1 twice"),
    (["modalities=[text,text]"], "lists the modality 'text' twice"),
    (["topk=[10,20,10]"], "lists the cut-off 10 twice"),
])
def test_repeated_values_are_refused(items, match):
    with pytest.raises(ConfigError, match=match):
        load_config("BM3", "office", overrides=items)


@pytest.mark.parametrize("key, values, why", [
    ("valid_metric", "[recall@20,precision@10]", "selected and compared on"),
    ("protocol", "[standard,legacy]", "validated on"),
    ("device", "[cpu,cpu]", "a setting of the whole run"),
    ("dist_backend", "[gloo,auto]", "a setting of the whole run"),
])
def test_run_wide_keys_cannot_be_grid_keys(key, values, why):
    with pytest.raises(ConfigError, match=rf"names '{key}', which cannot vary over a grid: .*"
                                          rf"{why}"):
        load_config("BM3", "office", overrides=[f"hyper_parameters=[{key}]", f"{key}={values}"])


def test_a_huge_grid_is_counted_not_expanded():
    import tracemalloc

    items = ["hyper_parameters=[seed,n_layers,reg_weight,learning_rate,dropout,cl_weight,"
             "embedding_size]", "seed=[" + ",".join(map(str, range(10))) + "]",
             "n_layers=[0,1,2,3,4,5,6,7,8,9]", "embedding_size=[" +
             ",".join(str(8 * i) for i in range(1, 11)) + "]"]
    items += [f"{k}=[" + ",".join(str(0.01 * i) for i in range(1, 11)) + "]"
              for k in ("reg_weight", "learning_rate", "dropout", "cl_weight")]
    tracemalloc.start()
    cfg = load_config("BM3", "office", overrides=items)
    points = cfg.points()
    assert len(points) == 10**7
    assert points[-1]["seed"] == 9 and points[-1]["embedding_size"] == 80 and \
        points[10**6]["seed"] == 1 and points[10**6]["n_layers"] == 0
    assert cfg.describe_grid().startswith("10,000,000 points (seed: 10 values × ")
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20  # never expanded
    tracemalloc.stop()
    with pytest.raises(ConfigError, match="dropout=1.5 .* must lie in"):  # yet every value checked
        load_config("BM3", "office", overrides=["hyper_parameters=[cl_weight,dropout]",
                                                "cl_weight=[1,2,3]", "dropout=[0.1,0.2,1.5]"])


# --- review of issue 22 -----------------------------------------------------------------------

def test_a_key_given_twice_on_one_command_line_is_refused():
    from sgfd_fast.config import parse_overrides

    assert parse_overrides(["epochs=1", "n_layers=[1,2]"]) == [("epochs", 1), ("n_layers", [1, 2])]
    with pytest.raises(ConfigError, match=re.escape(
            "epochs is given twice on the command line (epochs=1 and epochs=2); give it once")):
        parse_overrides(["epochs=1", "epochs=2"])
    with pytest.raises(ConfigError, match=re.escape(
            "device is given twice on the command line (--device cpu and device=cuda)")):
        parse_overrides(["device=cuda"], {"device": "--device cpu"})


def test_errors_name_the_source_of_every_key_they_blame():
    """A value is blamed together with the key it clashes with, each with its own source."""
    with pytest.raises(ConfigError, match=re.escape(
            "ce_weight=[1, 2] (from spec.yaml) lists several values, but ce_weight is not in "
            "hyper_parameters=['n_layers'] (from the command line)")):
        load_config("BM3", "office", overrides=[
            ("ce_weight", [1, 2], "spec.yaml"), "hyper_parameters=[n_layers]", "n_layers=[1,2]"])
    with pytest.raises(ConfigError, match=re.escape(
            "valid_metric='recall@50' (from the command line) uses k=50, which is not in "
            "topk=[5, 10] (from spec.yaml)")):
        load_config("BM3", "office", overrides=[("topk", [5, 10], "spec.yaml"),
                                                "valid_metric=recall@50"])
