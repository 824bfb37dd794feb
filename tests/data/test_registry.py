"""One registry of dataset formats and built-in datasets (sgfd_fast/data/registry.py): every
reader of the names (load_dataset, python -m sgfd_fast.train, python -m sgfd_fast.data, study
specs) offers exactly the registry's, with its defaults."""

import argparse
import json

import numpy as np
import pytest

from sgfd_fast import study
from sgfd_fast.config import CONFIG_DIR
from sgfd_fast.data import DATASETS, FORMATS, load_dataset, write_mmrec, write_sgfd
from sgfd_fast.data import __main__ as data_cli
from sgfd_fast.data import builtin, registry
from sgfd_fast.errors import ConfigError, DataError
from sgfd_fast.train import build_parser as train_parser

#: How the test writes a dataset in each format, returning its labels file for the reader (a
#: format added to the registry needs its writer here).
WRITERS = {"sgfd": lambda ds, d: write_sgfd(ds, d) and None, "mmrec": write_mmrec}


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_defaults_are_registered():
    assert registry.DEFAULT_DATASET in DATASETS and registry.DEFAULT_FORMAT in FORMATS
    assert DATASETS is registry.DATASETS and FORMATS is registry.FORMATS
    assert builtin.DATASETS is registry.DATASETS


def test_every_builtin_has_its_parts_and_config_layer():
    assert list(builtin.PARTS) == list(DATASETS)
    layers = {f.stem for f in (CONFIG_DIR / "dataset").glob("*.yaml")} - {"default"}
    assert layers == set(DATASETS)


def test_train_cli_offers_the_registry():
    p = train_parser()
    assert _option(p, "--format").choices == tuple(FORMATS)
    helps = " ".join(_option(p, flag).help for flag in ("-d", "--format", "--data-path"))
    for name in [*DATASETS, *FORMATS]:
        assert name in helps, name
    assert f"(default {registry.DEFAULT_DATASET};" in _option(p, "-d").help
    assert f"(default {registry.DEFAULT_FORMAT})" in _option(p, "--format").help


def test_train_refuses_an_unknown_dataset_naming_the_registry(capsys):
    from sgfd_fast.train import main

    assert main(["-d", "ofice"]) == 2
    err = capsys.readouterr().err
    assert f"built-in datasets are {', '.join(DATASETS)}" in err and "'office'" in err, err


def test_data_cli_offers_the_registry():
    inspect = _subparser(data_cli._parser(), "inspect")
    assert sorted(_option(inspect, "--dataset").choices) == sorted(DATASETS)
    assert list(_option(inspect, "--format").choices) == list(FORMATS)
    for name, about in DATASETS.items():
        assert f"{name}: {about}" in _option(inspect, "--dataset").help


def test_study_specs_take_the_registry(tmp_path):
    for name in DATASETS:
        assert name in study.SPEC_FORMAT
    assert f"({' or '.join(FORMATS)}, default {registry.DEFAULT_FORMAT})" in study.SPEC_FORMAT
    (tmp_path / "d").mkdir()
    base = {"model": "BM3", "seeds": [1], "baseline": "a", "arms": {"a": {}}}
    for fmt in FORMATS:
        spec = tmp_path / f"{fmt}.yaml"
        spec.write_text(json.dumps({**base, "data_path": "d", "format": fmt}))
        assert study.load_spec(spec).data["format"] == fmt
    spec = tmp_path / "default.yaml"
    spec.write_text(json.dumps({**base, "data_path": "d"}))
    assert study.load_spec(spec).data["format"] == registry.DEFAULT_FORMAT
    spec.write_text(json.dumps({**base, "data_path": "d", "format": "recbole"}))
    with pytest.raises(ConfigError, match=f"format must be {' or '.join(FORMATS)}, got 'recbole'"):
        study.load_spec(spec)
    spec.write_text(json.dumps({**base, "dataset": "ofice"}))
    with pytest.raises(ConfigError, match=f"is not a built-in dataset \\({', '.join(DATASETS)}\\)"):
        study.load_spec(spec)


def test_load_dataset_reads_every_format_and_names_the_registry(tmp_path, tiny):
    for fmt in FORMATS:
        labels = WRITERS[fmt](tiny, tmp_path / fmt)
        back = load_dataset(path=tmp_path / fmt, format=fmt, labels=labels)
        np.testing.assert_array_equal(back.test, tiny.test)
        np.testing.assert_array_equal(back.labels, tiny.labels)
    with pytest.raises(DataError, match=" or ".join(repr(f) for f in FORMATS)):
        load_dataset(path=tmp_path / "sgfd", format="recbole")
    with pytest.raises(DataError, match=f"built-in datasets are {', '.join(DATASETS)}"):
        load_dataset("ofice")
    with pytest.raises(DataError, match=f"built-in datasets are {', '.join(DATASETS)}"):
        builtin.builtin_parts("ofice")
