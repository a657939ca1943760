"""The CLIP prompting core (``ctta/clip_prompting``) holds no single-method code: it never imports a method, and
every module serves at least two methods (counted through the core's own imports), or its docstring names the
second user to come (``Shared with wave 2:``, see ``clip-prompt-learners.md`` section 23)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "ctta" / "clip_prompting"
METHODS = ROOT / "strategies"


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports (absolute names, ``from x import y`` as both ``x`` and ``x.y``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _core_modules() -> dict[str, Path]:
    return {f"ctta.clip_prompting.{p.stem}": p for p in CORE.glob("*.py") if p.stem != "__init__"}


def _closure(mods: set[str], core: dict[str, Path]) -> set[str]:
    seen, todo = set(), [m for m in mods if m in core]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += [d for d in _imports(core[m]) if d in core]
    return seen


def _methods() -> dict[str, list[Path]]:
    """Method name -> its source files (a module ``strategies/x.py`` or a package ``strategies/x/``)."""
    out = {p.stem: [p] for p in METHODS.glob("*.py") if p.stem != "__init__"}
    packages = [p for p in METHODS.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    out.update({p.name: sorted(p.glob("*.py")) for p in packages})
    return out


def test_core_never_imports_a_method():
    for path in CORE.glob("*.py"):
        bad = sorted(m for m in _imports(path) if m.startswith(("ctta.strategies", "strategies")))
        assert not bad, f"{path.name} imports method code {bad}"


def test_every_core_module_serves_two_methods_or_names_its_wave2_users():
    core = _core_modules()
    users: dict[str, set[str]] = {m: set() for m in core}
    for method, files in _methods().items():
        used = _closure(set().union(*(_imports(f) for f in files)), core)
        for m in used:
            users[m].add(method)
    single = {}
    for m, methods in users.items():
        doc = ast.get_docstring(ast.parse(core[m].read_text())) or ""
        if len(methods) < 2 and "Shared with wave 2:" not in doc:
            single[m] = sorted(methods)
    assert not single, f"single-method modules in the CLIP core (move them to the method's package): {single}"
