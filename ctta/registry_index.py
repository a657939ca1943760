"""What the built-in packages register, read from their source without importing them (no torch, no Avalanche).

``ctta.registry`` learns the components by importing every module of ``ctta.backbones``, ``ctta.scenarios`` and
``ctta.strategies`` (seconds: torch, Avalanche, timm, open_clip). This module reads the same modules' source with
``ast`` instead (about 0.1 s) and returns, for every ``@REGISTRY.register("name", config=Cfg)`` (or
``REGISTRY.register(...)(builder)``) it finds: the component name, the builder, its module, the first line of its
docstring, the config class's field names (inherited fields included, followed through ``from ... import``) and the
numeric ranges its fields declare with ``ctta.fields.ranged``.

Uses: the config loader rejects unknown names and keys before the stack loads, ``ctta list`` prints the components
without importing them, and ``ctta.strategies`` / ``ctta.scenarios`` export their classes lazily (PEP 562). The
registry stays the source of truth: ``tests/test_new_user_imports.py`` asserts the index equals it (names, builders,
config fields). Anything the reader cannot resolve is ``None`` (callers then defer to the registry).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from ctta.fields import Range

__all__ = ["IndexEntry", "PACKAGES", "index", "entries", "public_names", "package_dir", "summary", "lazy_exports"]

PACKAGES = {"backbone": "ctta.backbones", "scenario": "ctta.scenarios", "strategy": "ctta.strategies"}
_REGISTRIES = {"BACKBONES": "backbone", "SCENARIOS": "scenario", "STRATEGIES": "strategy"}


@dataclass(frozen=True)
class IndexEntry:
    """One registration found in the source: ``kind`` (strategy | scenario | backbone) and ``name`` as registered."""

    kind: str
    name: str
    builder: str  # the class or function registered
    module: str  # the module that registers it (``builder`` and ``config`` are importable from it)
    config: str | None  # the config class's name (None: the component takes no parameters)
    fields: tuple[str, ...] | None  # the config's field names (None: not resolvable from the source)
    doc: str  # first line of the builder's docstring
    summary: str = ""  # module (or, if it registers several, builder) docstring's first sentence (``ctta list``)
    ranges: Mapping[str, Range] = field(default_factory=dict)  # fields declared with ``ctta.fields.ranged``


def package_dir(package: str) -> Path:
    """The folder of ``package`` (imports only its parents, never the package itself)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(module: str) -> Path | None:
    """The source file of ``module`` (``ctta...`` only), found from its package folders without importing."""
    parts = module.split(".")
    if parts[0] != "ctta":
        return None
    for n in range(len(parts) - 1, 0, -1):  # the longest importable-free prefix: ctta.strategies, ctta.scenarios, ctta
        prefix = ".".join(parts[:n])
        if prefix in ("ctta", *PACKAGES.values()):
            base = package_dir(prefix).joinpath(*parts[n:])
            for p in (base.with_suffix(".py"), base / "__init__.py"):
                if p.is_file():
                    return p
            return None
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve_from(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _find_class(module: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
    """``(defining module, ClassDef)`` of ``name`` as seen from ``module``, following ``from x import name``."""
    path = _module_file(module)
    if path is None or depth > 8:
        return None
    tree = _parse(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    src = _resolve_from(node, module, path.name == "__init__.py")
                    return _find_class(src, alias.name, depth + 1)
    return None


def _is_classvar(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _init_false(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Call) and any(
        k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords
    )


def _declared_range(value: ast.expr | None) -> Range | None:
    """The ``Range`` of a ``ranged(default, ge=..., gt=..., le=..., lt=...)`` field with literal bounds, else None."""
    call = value if isinstance(value, ast.Call) else None
    if call is None or not (isinstance(call.func, ast.Name) and call.func.id == "ranged"):
        return None
    try:
        bounds = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("ge", "gt", "le", "lt")}
    except ValueError:
        return None
    return Range(**bounds)


def _class_schema(module: str, name: str) -> dict[str, Range | None] | None:
    """``{field: declared range or None}`` of dataclass ``name`` seen from ``module`` (``__init__`` fields in
    dataclass order, bases first; a re-declared field keeps its place and takes the new range)."""
    found = _find_class(module, name)
    if found is None:
        return None
    where, cls = found
    schema: dict[str, Range | None] = {}
    for base in cls.bases:
        inherited = _class_schema(where, base.id) if isinstance(base, ast.Name) else None
        if inherited is None:
            return None
        schema |= inherited
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and not _is_classvar(node.annotation):
            if not _init_false(node.value):
                schema[node.target.id] = _declared_range(node.value)
    return schema


def _registration(call: ast.expr) -> tuple[str, str, str | None] | None:
    """``(kind, name, config class name)`` of a ``REGISTRY.register("name", config=Cfg)`` call, else None."""
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "register"):
        return None
    reg = call.func.value
    if not (isinstance(reg, ast.Name) and reg.id in _REGISTRIES and call.args):
        return None
    name = call.args[0]
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
        return None
    cfg = next((k.value for k in call.keywords if k.arg == "config"), None)
    return _REGISTRIES[reg.id], name.value, cfg.id if isinstance(cfg, ast.Name) else None


def _doc_line(tree: ast.Module, builder: str) -> str:
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == builder:
            doc = ast.get_docstring(node) or ""
            return doc.strip().splitlines()[0] if doc.strip() else ""
    return ""


def summary(doc: str) -> str:
    """The first sentence of ``doc``'s first paragraph as plain text: citations in parentheses (``et al.``, arXiv)
    and reStructuredText markup removed."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    while True:  # drop the innermost parenthetical group that cites something, until none is left
        cut = re.sub(r" ?\([^()]*(?:et al\.|arXiv|Reference)[^()]*\)", "", text, count=1)
        if cut == text:
            break
        text = cut
    first = re.split(r"(?<=[A-Za-z0-9)\]])\. (?=[A-Z])|; ", text)[0].rstrip(".")
    return first.replace("``", "").replace("`", "").replace("**", "")


def _module_entries(module: str, path: Path) -> list[IndexEntry]:
    tree = _parse(path)
    about = summary(ast.get_docstring(tree) or "")
    out = []
    for node in ast.walk(tree):
        found = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):  # @REGISTRY.register(...) over a definition
            found = [(r, node.name) for r in map(_registration, node.decorator_list) if r]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):  # register(...)(f)
            r = _registration(node.func)
            found = [(r, node.args[0].id)] if r else []
        for (kind, name, cfg), builder in found:
            schema = _class_schema(module, cfg) if cfg else {}
            fields, ranges = (None, {}) if schema is None else (tuple(schema), {k: r for k, r in schema.items() if r})
            out.append(IndexEntry(kind, name, builder, module, cfg, fields, _doc_line(tree, builder), about, ranges))
    return _tell_apart(tree, out)


def _tell_apart(tree: ast.Module, entries: list[IndexEntry]) -> list[IndexEntry]:
    """Entries of one kind that share a module are summarised by their builders' docstrings (each would otherwise
    get the module's one sentence: ``ctta list`` showed promptcam and promptcam_online alike)."""
    kinds = Counter(e.kind for e in entries)
    defs = (n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))
    docs = {n.name: ast.get_docstring(n) or "" for n in defs}
    return [replace(e, summary=summary(docs.get(e.builder, "")) or e.summary) if kinds[e.kind] > 1 else e
            for e in entries]


def _modules(package: str) -> list[tuple[str, Path]]:
    """Every non-private module under ``package`` (sub-packages included), as ``(dotted name, file)``."""
    root = package_dir(package)
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).with_suffix("").parts
        if any(part.startswith("_") for part in rel):
            continue
        out.append((".".join((package, *rel)), p))
    return out


@cache
def index() -> dict[str, dict[str, IndexEntry]]:
    """``{kind: {name: IndexEntry}}`` of every built-in registration (strategy, scenario, backbone)."""
    out: dict[str, dict[str, IndexEntry]] = {kind: {} for kind in PACKAGES}
    for package in PACKAGES.values():
        for module, path in _modules(package):
            for e in _module_entries(module, path):
                out[e.kind][e.name] = e
    return out


def entries(kind: str) -> dict[str, IndexEntry]:
    """The built-in registrations of ``kind`` by name."""
    return index()[kind]


@cache
def public_names(kind: str) -> dict[str, str]:
    """``{name: module}`` a package exports lazily: each registered builder and config, and each module's ``__all__``.

    A name listed by two modules' ``__all__`` is left out (ambiguous); registered builders and configs always win.
    """
    seen: dict[str, set[str]] = {}
    for module, path in _modules(PACKAGES[kind]):
        for node in _parse(path).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                try:
                    for name in ast.literal_eval(node.value):
                        seen.setdefault(name, set()).add(module)
                except ValueError:
                    continue
    out = {name: next(iter(mods)) for name, mods in seen.items() if len(mods) == 1}
    for e in entries(kind).values():
        out[e.builder] = e.module
        if e.config:
            out[e.config] = e.module
    return out


def lazy_exports(kind: str, namespace: dict):
    """``(__getattr__, __dir__)`` for a package's module namespace (PEP 562): a name of ``public_names(kind)`` is
    imported from the module that defines it on first use and kept in ``namespace``; ``__all__`` lists them all."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        import importlib

        if name == "__all__":  # ``from package import *``
            return sorted(public_names(kind))
        module = public_names(kind).get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public_names(kind)))

    return __getattr__, __dir__
