"""``ctta list``: strategies, scenarios, backbones, datasets and shipped backbones, one plain line each.

Read without importing torch or Avalanche: the components from their source (``ctta.registry_index``), the datasets
from the catalogue (``ctta.data.catalogue``), the shipped backbones from ``ctta/pretrained/manifest.json``.
"""

from __future__ import annotations

import json

from ctta import registry_index
from ctta.data import catalogue

_TITLES = {"strategy": "strategies", "scenario": "scenarios", "backbone": "backbones"}
_WIDTH = 22


def _line(name: str, text: str) -> str:
    return f"  {name:<{_WIDTH}} {text}".rstrip()


def component_lines(kind: str) -> list[str]:
    """``name  summary`` for every built-in component of ``kind`` (summary: its module docstring's first sentence;
    its builder's where one module registers several)."""
    return [_line(name, e.summary) for name, e in sorted(registry_index.entries(kind).items())]


def dataset_lines() -> list[str]:
    """``name  title (uses; folder)`` for every catalogue dataset (a name with two layouts: both, ``|``-separated)."""
    by_name: dict[str, list] = {}
    for e in catalogue.entries():
        by_name.setdefault(e.name, []).append(e)
    out = []
    for name, group in sorted(by_name.items()):
        parts = []
        for e in group:
            uses = ", ".join(k.replace("_", "-") for k in e.kinds)
            where = "bundled" if e.bundled else f"<root>/{e.folder}" if e.folder else "<root>"
            parts.append(f"{uses}; {where}")
        out.append(_line(name, f"{group[0].title} ({' | '.join(parts)})"))
    return out


def shipped_lines() -> list[str]:
    """``name  how to use it, what it has learned`` for every backbone shipped in ``ctta/pretrained``."""
    manifest = registry_index.package_dir("ctta.pretrained") / "manifest.json"
    models = json.loads(manifest.read_text())["models"]
    out = []
    for name, m in sorted(models.items()):
        acc = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f} %" for k, v in m.get("accuracy", {}).items())
        use = f"backbone: {{name: {m['kind']}, model: {name}, pretrained: ctta}}"
        out.append(_line(name, f"{use}; {acc}" if acc else use))
    return out


def listing() -> str:
    """The whole ``ctta list`` output."""
    parts = []
    for kind, title in _TITLES.items():
        parts += [f"{title}:", *component_lines(kind)]
    parts += ["shipped backbones (offline, sha256-checked):", *shipped_lines()]
    parts += ["datasets (scenario.dataset=NAME; <root> is scenario.root, default data/):", *dataset_lines()]
    return "\n".join(parts)
