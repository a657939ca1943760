"""Registry: duplicates raise, unknown names list the valid ones, built-ins are loaded."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ctta.registry import BACKBONES, SCENARIOS, STRATEGIES, Registry


def test_duplicate_raises():
    r = Registry("thing")
    r.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="duplicate thing name 'a'"):
        r.register("a")(lambda: 2)


def test_unknown_lists_valid():
    r = Registry("thing")

    @dataclass(frozen=True)
    class C:
        x: int = 1

    r.register("b", config=C)(lambda c: c)
    with pytest.raises(KeyError, match=r"unknown thing 'zz'; valid thing names: \['b'\]"):
        r.get("zz")
    assert r.get("b").config is C


def test_config_must_be_dataclass():
    with pytest.raises(TypeError, match="must be a dataclass"):
        Registry("t").register("x", config=int)


def test_builtins_registered():
    assert "vpt" in STRATEGIES
    assert "class_incremental" in SCENARIOS
    assert "vit" in BACKBONES
