"""Layered configuration: layers, unknown keys, types, values, overrides, grids."""

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
