"""pyproject.toml's dependencies are the distributions the code imports, and the installed ones fit their ranges.

The floors in pyproject are the versions CI installs (``pip install -c constraints.txt -e ".[dev]"``), so the
suite running green on them is what tests the floors; these tests keep the declaration and the environment in step.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys

import pytest

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
Requirement = pytest.importorskip("packaging.requirements").Requirement

CODE = ("ctta", "scenarios", "strategies")  # the installed package (library code; tests and benchmarks excluded)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extras: tuple[str, ...] = ("diffusion", "dev")) -> list:
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if _norm(r.name) != "ctta"]  # "ctta[diffusion]" inside dev


def _imported_top_level_modules() -> set[str]:
    names = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("ctta", "__future__")}


def _distributions_of(modules: set[str]) -> dict[str, set[str]]:
    """Top-level module -> the installed distributions providing it (normalised names)."""
    providers = md.packages_distributions()
    return {m: {_norm(d) for d in providers.get(m, [])} for m in modules}


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_installed_versions_fit_the_declared_ranges(req):
    installed = md.version(req.name)  # PackageNotFoundError: a declared dependency CI did not install
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req}"


def test_every_imported_distribution_is_declared_and_every_declared_one_imported():
    declared = {_norm(r.name) for r in _requirements(("diffusion",))}
    by_module = _distributions_of(_imported_top_level_modules())
    optional = {_norm(r.name) for extra in _project()["optional-dependencies"] for r in _requirements((extra,))}
    missing = {m for m, d in by_module.items() if not d}
    unknown = sorted(m for m in missing if _norm(m) not in optional)  # e.g. ray: its own extra, not installed by CI
    assert not unknown, f"imported but neither installed nor declared in an extra: {unknown}"
    by_module = {m: d for m, d in by_module.items() if m not in missing}
    undeclared = sorted(m for m, d in by_module.items() if not d & declared)
    assert not undeclared, f"imported directly but not in pyproject's dependencies: {undeclared}"
    used = set().union(*by_module.values())
    assert declared <= used, f"declared but never imported: {sorted(declared - used)}"


def test_filelock_is_neither_declared_nor_imported():
    """The DiffTPT view cache locks with fcntl.flock; nothing imports filelock, so ctta does not depend on it."""
    assert "filelock" not in {_norm(r.name) for r in _requirements()}
    assert "filelock" not in _imported_top_level_modules()


def test_diffusion_extras_are_bounded_below_their_next_major_version():
    for req in _requirements(("diffusion",)):
        if _norm(req.name) in ("diffusers", "transformers"):
            major = int(md.version(req.name).split(".")[0])
            assert not req.specifier.contains(f"{major + 1}.0"), f"{req} admits the next major version"


def test_no_module_takes_a_standard_library_name():
    """A module named like the standard library's (the former ``ctta/logging.py``) shadows it for code run from its
    folder and misleads readers; every module and package under ctta/, scenarios/, strategies/ has its own name."""
    clashes = [
        str(p.relative_to(ROOT))
        for folder in CODE
        for p in (ROOT / folder).rglob("*.py")
        if (p.parent.name if p.stem == "__init__" else p.stem) in sys.stdlib_module_names
    ]
    assert not clashes, f"modules named like the standard library's: {clashes}"
