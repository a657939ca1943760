"""The layout keeps methods apart: every method package (or file) under ``strategies/`` is self-contained (no
other method imports it), and the method-agnostic core ``ctta/`` imports no method and no scenario module
(the registry loads them by package; the runner reaches them only through the registry)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

STRATEGIES = ROOT / "strategies"
METHODS = sorted(
    p.stem if p.is_file() else p.name
    for p in STRATEGIES.iterdir()
    if not p.name.startswith(("_", ".")) and (p.suffix == ".py" or (p / "__init__.py").exists())
)


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: use absolute imports (ctta.strategies.<method>...)")
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def _method_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["ctta", "strategies"] and len(parts) > 2 and parts[2] in METHODS:
        return parts[2]
    return None


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_methods_found():
    assert {"mvp", "tpt", "difftpt", "damvp", "multilane", "coop"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_method_is_self_contained(method):
    own = STRATEGIES / method if (STRATEGIES / method).is_dir() else STRATEGIES / f"{method}.py"
    files = _files(own) if own.is_dir() else [own]
    for f in files:
        others = {m for m in map(_method_of, _imports(f)) if m and m != method}
        assert not others, f"{f.relative_to(ROOT)} imports other methods: {sorted(others)}"


def test_core_imports_no_method_and_no_scenario():
    for f in _files(ROOT / "ctta"):
        bad = [m for m in _imports(f) if m.split(".")[:2] in (["ctta", "strategies"], ["ctta", "scenarios"])
               or m.split(".")[0] in ("strategies", "scenarios")]  # fmt: skip
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}: the core reaches methods only through the registry"


def test_the_checker_sees_a_cross_method_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from ctta.strategies.tpt import TPTConfig\nimport ctta.strategies.mvp\n")
    assert {_method_of(m) for m in _imports(bad)} >= {"tpt", "mvp"}


# ------------------------------------------------------------------------------ the test suite's own layout
def _test_imports(path: Path) -> list[str]:
    """Modules under ``tests`` that ``path`` imports (``from tests import x`` counts as ``tests.x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "tests":
            out += [f"tests.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("tests.")]
    return out


def test_test_modules_import_helpers_not_each_other():
    """Shared code lives in tests/helpers.py (or another helper module), never in a test module."""
    for f in sorted((ROOT / "tests").glob("*.py")):
        bad = [m for m in _test_imports(f) if m.split(".")[1].startswith("test_")]
        assert not bad, f"tests/{f.name} imports {bad}: move what it needs to tests/helpers.py"


def test_readme_and_ci_run_the_same_test_command():
    """README's Quick start command 2 is what .ci/run runs (pytest-xdist from the dev extra included)."""
    readme = [ln for ln in (ROOT / "README.md").read_text().splitlines() if "-e \".[dev]\"" in ln]
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "-e \".[dev]\"" in ln]
    assert len(readme) == 1 and ci == readme, (readme, ci)
    assert "pytest-xdist" in (ROOT / "pyproject.toml").read_text() and " -n " in ci[0]


def test_the_checker_sees_a_cross_test_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from tests import test_contract\nfrom tests.test_cl_datasets import make_cifar\n"
                   "import tests.test_vit\n")  # fmt: skip
    assert _test_imports(bad) == ["tests.test_contract", "tests.test_cl_datasets", "tests.test_vit"]
