"""Issue 21 item 2: ``from ctta.strategies import MVP`` (every strategy and config, every scenario builder), lazily;
and the source-read registry index (``ctta.registry_index``) equals the registry it stands in for."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from ctta import registry_index
from ctta.fields import field_range
from ctta.registry import BACKBONES, SCENARIOS, STRATEGIES

REGISTRIES = {"strategy": STRATEGIES, "scenario": SCENARIOS, "backbone": BACKBONES}


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_and_config_exported_from_the_package(name):
    import ctta.strategies as pkg

    entry = STRATEGIES.get(name)
    assert getattr(pkg, entry.builder.__name__) is entry.builder
    assert getattr(pkg, entry.config.__name__) is entry.config
    assert entry.builder.__name__ in dir(pkg) and entry.config.__name__ in pkg.__all__


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_builder_exported_from_the_package(name):
    import ctta.scenarios as pkg

    entry = SCENARIOS.get(name)
    assert getattr(pkg, entry.builder.__name__) is entry.builder
    assert getattr(pkg, entry.config.__name__) is entry.config


def test_import_from_the_package_is_lazy_and_keeps_the_registry():
    out = _run(
        "import sys\n"
        "from ctta.strategies import MVP, MVPConfig, DiffTPT\n"
        "from ctta.scenarios import build_si_blurry\n"
        "from ctta.registry import STRATEGIES\n"
        "print('diffusers' in sys.modules, 'ctta.strategies.coop' in sys.modules,\n"
        "      STRATEGIES.get('mvp').builder is MVP)\n"
        "print(len(list(STRATEGIES)))\n"
    )
    lazy, n = out.splitlines()
    assert lazy == "False False True"  # no optional dependency, no unrelated method imported; same class registered
    assert int(n) == len(list(STRATEGIES))  # every component still registers (no duplicates raised)


def test_unknown_name_is_an_attribute_error_and_submodules_still_import():
    import ctta.strategies as pkg

    with pytest.raises(AttributeError, match="no attribute 'NoSuchMethod'"):
        pkg.NoSuchMethod  # noqa: B018
    from ctta.strategies import mvp

    assert mvp.MVP is pkg.MVP


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_registry_index_equals_the_registry(kind):
    reg, idx = REGISTRIES[kind], registry_index.entries(kind)
    assert sorted(idx) == list(reg)
    for name in reg:
        entry, found = reg.get(name), idx[name]
        assert (found.builder, found.module) == (entry.builder.__name__, entry.builder.__module__) or (
            getattr(sys.modules[found.module], found.builder) is entry.builder
        )
        fields = tuple(f.name for f in dataclasses.fields(entry.config) if f.init) if entry.config else ()
        assert found.fields == fields, name
        ranges = {f.name: field_range(f) for f in dataclasses.fields(entry.config) if field_range(f)} if fields else {}
        assert found.ranges == ranges, name
        assert getattr(sys.modules[found.module], found.config) is entry.config if entry.config else True


def test_registry_index_imports_nothing_heavy():
    out = _run(
        "import sys\nfrom ctta import registry_index\nregistry_index.index()\n"
        "print(sorted(m for m in ('torch', 'avalanche', 'timm', 'open_clip') if m in sys.modules))"
    )
    assert out.strip() == "[]"
