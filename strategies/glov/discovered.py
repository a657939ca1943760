"""GLOV's discovered prompt templates: a safe reader of the user's ``utils/discovered_prompts.py`` and GLOV's rule
for filling a template with a class name.

Reference (read, re-implemented; nothing copied, no prompt list shipped): jmiemirza/GLOV@4c4fe64
``utils/discovered_prompts.py`` (dict literals ``lov_templates_clip`` / ``lov_guidance_templates_clip``: per dataset a
list of three templates, raw LLM output) and ``trainers/zero_shot_gpt.py:CLIP_Zero_Shot_adapt.txt_features`` (the
fill rule). The repository has no licence, so ctta never ships the lists: the user passes their copy of the file.

The file is read with :mod:`ast`: only module-level assignments of dict / list / str literals are accepted
(``ast.literal_eval`` on each value); anything else (imports, calls, names, comprehensions, f-strings) makes the file
refused with the line number. Strings are kept verbatim (quotes, ``<placeholder>`` artefacts, truncated endings).
A plain JSON list of templates (``["a photo of a {}.", ...]``) is accepted as well.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from ctta.clip_prompting.descriptions import BankKeyError
from ctta.data import catalogue

__all__ = [
    "GLOV_DATASETS", "GLOV_FILE", "fill_template", "glov_dataset_key", "load_templates", "read_prompt_dicts",
]

GLOV_FILE = ("utils/discovered_prompts.py of https://github.com/jmiemirza/GLOV (commit 4c4fe64; no licence, so ctta "
             "does not ship it: download that file and pass its path)")

# GLOV's dataset names (Dassl class names) -> ctta catalogue names. RESISC45 has no catalogue entry: a scenario on a
# user's own loader selects it with ``dataset: RESISC45`` (strategy.dataset).
GLOV_DATASETS: dict[str, str] = {
    "ImageNet": "imagenet", "ImageNetV2": "imagenet_v2", "ImageNetSketch": "imagenet_sketch",
    "ImageNetA": "imagenet_a", "ImageNetR": "imagenet_r", "Caltech101": "caltech101", "OxfordPets": "pets",
    "StanfordCars": "cars", "OxfordFlowers": "flower102", "Food101": "food101", "FGVCAircraft": "aircraft",
    "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat", "UCF101": "ucf101",
    "RESISC45": "resisc45",
}
_DICTS = {False: "lov_templates_clip", True: "lov_guidance_templates_clip"}
_EMPTY_BRACES = re.compile(r"\{\s*\}")


def read_prompt_dicts(path: str | Path) -> dict[str, object]:
    """Module-level literal assignments of a Python file, read without importing or executing it.

    Args:
        path: the user's copy of GLOV's ``utils/discovered_prompts.py`` (or any file of literal assignments).

    Returns:
        ``{variable name: literal value}``.

    Raises:
        FileNotFoundError: the file is missing (the message names where GLOV keeps it).
        ValueError: a statement is not ``NAME = <literal>`` (the message gives its line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLOV prompt file {path} not found: it is {GLOV_FILE}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring or a bare string
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path}:{node.lineno}: only 'NAME = <literal>' statements are read, "
                             f"refusing {type(node).__name__}")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"{path}:{node.lineno}: the value of {node.targets[0].id} is not a literal") from err
    return values


def glov_dataset_key(dataset: str) -> str:
    """GLOV's dataset name for a ctta dataset name (catalogue aliases resolved), or ``dataset`` if it is one."""
    if dataset in GLOV_DATASETS:
        return dataset
    try:
        name = catalogue.entry(dataset, ["few_shot", "test_time", "transfer", "cl"]).name
    except (KeyError, ValueError):
        name = dataset
    for key, value in GLOV_DATASETS.items():
        if value == name:
            return key
    raise BankKeyError(f"dataset {dataset!r} has no GLOV prompts; GLOV's datasets: {sorted(GLOV_DATASETS)} "
                       f"(set strategy.dataset to one of them)")


def load_templates(path: str | Path, dataset: str = "", guidance: bool = True) -> list[str]:
    """The templates for ``dataset``: GLOV's dict (with or without guidance) or a plain JSON list.

    Args:
        path: GLOV's ``discovered_prompts.py`` (user copy) or a ``.json`` file holding a list of templates.
        dataset: a key of the dict, or a ctta dataset name mapped by ``GLOV_DATASETS`` (unused for a JSON list).
        guidance: ``lov_guidance_templates_clip`` (GLOV) if true, else ``lov_templates_clip`` (GLOV w/o guidance).

    Returns:
        The template strings, verbatim, in file order.
    """
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"template list {path} not found")
        templates = json.loads(path.read_text(encoding="utf-8"))
    else:
        name = _DICTS[bool(guidance)]
        table = read_prompt_dicts(path).get(name)
        if not isinstance(table, dict):
            raise ValueError(f"{path} has no dict {name} (expected {GLOV_FILE})")
        key = dataset if dataset in table else glov_dataset_key(dataset)
        if key not in table:
            raise BankKeyError(f"{path}: {name} has no entry {key!r} (has {sorted(table)})")
        templates = table[key]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(f"{path}: expected a non-empty list of template strings")
    return templates


def fill_template(template: str, classname: str) -> str | None:
    """GLOV's fill rule (``txt_features``): None drops the template for this class.

    A template without an empty brace pair (``{}``, ``{ }``) is dropped; one ``{}`` is filled with ``str.format``
    (a template that ``format`` rejects, e.g. ``{shape}`` elsewhere, is dropped); otherwise every ``{}`` is replaced
    by the name in turn (a ``{ }``-only template thus stays unfilled, as in GLOV).
    """
    if not _EMPTY_BRACES.search(template):
        return None
    count = template.count("{}")
    if count == 1:
        try:
            return template.format(classname)
        except (ValueError, KeyError, IndexError):
            return None
    return template.replace("{}", classname, count) if count else template
