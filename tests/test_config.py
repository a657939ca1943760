"""Config loading: typed conversion, overrides, unknown keys, missing files."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ctta.runner.config import ConfigError, apply_overrides, dump_config, from_dict, load_config

BASE = {
    "seed": 3,
    "scenario": {"name": "class_incremental", "dataset": "digits", "n_experiences": 3},
    "backbone": {"name": "vit", "model": "vit_tiny_patch16_224", "pretrained": False},
    "strategy": {"name": "vpt", "lr": "5e-3"},
    "log": {"out_dir": "runs/x"},
}


@dataclass(frozen=True)
class Inner:
    a: int = 1
    b: tuple[int, ...] = (1, 2)
    c: float | None = None


def test_from_dict_types_and_tuples():
    x = from_dict(Inner, {"a": "4", "b": [3, 4, 5], "c": "1e-3"})
    assert x == Inner(4, (3, 4, 5), 1e-3)
    assert isinstance(x.b, tuple)


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['d'\].*valid keys: \['a', 'b', 'c'\]"):
        from_dict(Inner, {"d": 1})


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="x.a: expected an integer"):
        from_dict(Inner, {"a": 1.5}, "x")


def test_load_config_sections_and_overrides(tmp_path):
    cfg = load_config(BASE, ["strategy.lr=0.1", "seed=7", "scenario.n_experiences=2"])
    assert cfg.seed == 7
    assert cfg.strategy.name == "vpt" and cfg.strategy.params.lr == pytest.approx(0.1)
    assert cfg.scenario.params.n_experiences == 2
    assert cfg.log.out_dir == "runs/x"
    # resolved config round-trips through YAML
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_unknown_strategy_param_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\] in strategy.*valid keys:.*'lr'"):
        load_config(BASE, ["strategy.lrr=0.1"])


def test_unknown_component_name_lists_valid_names():
    with pytest.raises(ConfigError, match=r"strategy.name: unknown strategy 'nope'; valid strategy names: \[.*'vpt'"):
        load_config(BASE, ["strategy.name=nope"])


def test_unknown_top_level_key_and_missing_section():
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['sede'\]"):
        load_config({**BASE, "sede": 1})
    bad = dict(BASE)
    del bad["backbone"]
    with pytest.raises(ConfigError, match="missing required section 'backbone'"):
        load_config(bad)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["strategy.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
