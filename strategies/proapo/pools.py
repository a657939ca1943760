"""ProAPO's template pools, dataset-type phrases and per-dataset settings (shipped, MIT, see ``data/NOTICE``).

Reference: MorningStarOvO/ProAPO@fefdf18 ``tools/models/APO_build_knowledge_base/task_specific_knowledge.py:
get_task_specific_prompt_knowledge_base``, ``tools/models/util_prompt.py:{add_dataset_type_to_template,
init_dataset_prompt}``, ``tools/process/select_optimal_prompt.py`` (the per-dataset YAML overrides), read and
re-implemented. The pool files and ``official_settings.json`` (the ``data/dataset/<ds>/config/*.yaml`` files, as
JSON) are the reference's data, shipped with its licence.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
BASELINE = "a photo of a {}."

#: ctta's few-shot catalogue names -> the reference's dataset keys (the others are the same)
DATASET_KEYS = {"flower102": "flo", "pets": "oxford_pets", "cars": "stanford_cars", "eurosat": "euro_sat",
                "aircraft": "fgvc_aircraft", "imagenet_sketch": "imagenet_s", "oxford_flowers": "flo"}  # fmt: skip

#: reference: without dataset-type phrases some datasets edit the templates (``init_dataset_prompt``)
_PLAIN_EDITS = {"oxford_pets": (".", ", a type of pet."), "flo": (".", ", a type of flower."),
                "fgvc_aircraft": (".", ", a type of aircraft."), "food101": (".", ", a type of food."),
                "ucf101": (" {}", " person doing {}"), "euro_sat": ("photo", "centered satellite photo")}  # fmt: skip


def dataset_key(name: str) -> str:
    """The reference's key of a ctta dataset name (``""`` stays ``""``)."""
    return DATASET_KEYS.get(name, name)


def read_pool(source: str) -> list[str]:
    """Templates of a pool: a shipped name (``imagenet_80``, ``filip``, ``defilip_6``, ``imagenet_select``,
    ``clip``, ``class_name`` and their ``_suffix`` variants) or a JSON file (a list of templates, or the reference's
    ``{"prefix": [...], "suffix": [...]}``: every ``prefix suffix`` pair, lower-cased, stripped)."""
    path = DATA / f"{source}.json" if (DATA / f"{source}.json").is_file() else Path(source)
    if not path.is_file():
        shipped = sorted(p.stem for p in DATA.glob("*.json") if p.stem not in ("official_settings", "dataset_type_list",
                                                                              "ProAPO_template"))  # fmt: skip
        raise FileNotFoundError(f"template pool {source!r} not found: pass a JSON file or one of {shipped}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        return [str(t) for t in data]
    if "suffix" in data:
        return [f"{p} {s}".lower().strip() for s in data["suffix"] for p in data["prefix"]]
    return [p.lower() for p in data["prefix"]]


def with_dataset_types(templates: list[str], dataset: str) -> list[str]:
    """The reference's ``add_dataset_species_flag`` expansion: after each template, per dataset-type phrase
    ``T``: ``", a type of T."``, ``"T: {}"`` and, for templates with "photo", ``T`` and ``"T photo"`` in its place."""
    types = json.loads((DATA / "dataset_type_list.json").read_text())[dataset]
    out = []
    for t in templates:
        out.append(t)
        for kind in (k.lower() for k in types):
            out += [t.replace(".", f", a type of {kind}."), t.replace(" {}", f" {kind}: {{}}")]
            if "photo" in t:
                out += [t.replace("photo", kind), t.replace("photo", f"{kind} photo")]
    return out


def without_dataset_types(templates: list[str], dataset: str) -> list[str]:
    """The reference's per-dataset edit of every template when no dataset-type phrases are added."""
    if dataset not in _PLAIN_EDITS:
        return list(templates)
    old, new = _PLAIN_EDITS[dataset]
    return [t.replace(old, new) for t in templates]


def build_pool(source: str, dataset: str = "", dataset_types: bool = True) -> list[str]:
    """The search pool: ``source``'s templates, expanded for ``dataset`` (a reference key), de-duplicated in order,
    with the baseline template first (the reference's ``get_task_specific_prompt_knowledge_base``)."""
    pool = read_pool(source)
    types = json.loads((DATA / "dataset_type_list.json").read_text())
    if dataset and dataset_types and dataset in types:
        pool, baseline = with_dataset_types(pool, dataset), BASELINE
    else:
        pool = without_dataset_types(pool, dataset)
        baseline = without_dataset_types([BASELINE], dataset)[0]
    pool = [t for t in dict.fromkeys(pool) if t != baseline]
    return [baseline, *pool]


def official_settings(dataset: str, backbone: str, shots: int = 1) -> dict:
    """The reference's per-dataset overrides ``{"agnostic": {...}, "specific": {...}}`` for ``clip_<backbone>-
    num_shots_<shots>`` (backbone e.g. ``ViT-B-32``, ``RN50``); ``{}`` when it ships none."""
    table = json.loads((DATA / "official_settings.json").read_text())
    return table.get(dataset, {}).get(f"clip_{backbone.replace('/', '-')}-num_shots_{shots}", {})
