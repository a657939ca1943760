"""Per-class LLM description files and the frozen-CLIP text classifiers built from them (wave 2's description
teachers: CoPrompt, HiCroPL, MSGCoOp).

Papers: CoPrompt (Roy & Etemad, ICLR 2024, arXiv 2306.01195), HiCroPL (Zheng et al., ICCV 2025), MSGCoOp (2025,
Rain-Bus/MSGCoOp). References (behaviour read, re-implemented, no code copied; spec ``clip-prompt-learners.md``
sections 4, 12, 14, 23.1, 23.3, 23.4, 23.5): ShuvenduRoy/CoPrompt@a2a6c12 ``trainers/coprompt.py:gpt_clip_classifier``
(``gpt_file/<stem>_prompt.json``), zzeoZheng/HiCroPL@2c2b2f2 (the same files), Rain-Bus/MSGCoOp@a298669
``MSGCoOp/trainers/msgcoop.py`` (``desc/gpt-4.1/descriptions_top4/<Name>.json``).

Shared with wave 2: CoPrompt, MSGCoOp and HiCroPL. API (HiCroPL uses the ``coprompt`` format and
``DescriptionBank(reduce="mean", renormalize=True)``):

* ``load_descriptions(source, fmt, dataset="")`` -> ``{class name: [descriptions]}``. ``source`` is a JSON file, a
  folder holding the official layout (``gpt_file/<stem>_prompt.json`` or ``<stem>_prompt.json`` for ``coprompt``;
  ``desc/gpt-4.1/descriptions_top4/<Name>.json`` or ``<Name>.json`` for ``msgcoop``; ``dataset`` is ctta's catalogue
  name, e.g. ``fgvc_aircraft``), or ``builtin:digits`` (ctta's own ten-digit descriptions for the bundled digits and
  the tiny smoke runs). A missing file raises ``FileNotFoundError`` naming the file and where the official
  repository keeps it; a file that is not ``{name: [strings]}`` raises ``ValueError``.
* ``DescriptionBank(clip, tokenizer, descriptions, classnames, template=..., reduce=..., ...)``: an ``nn.Module``
  with the non-persistent buffer ``features``: ``reduce="index"`` -> ``(D, C, E)`` normalised rows, description-major
  (CoPrompt; needs the same D for every class); ``reduce="mean"`` -> ``(C, E)`` mean of the normalised rows
  (MSGCoOp: not re-normalised, ``round_fp16``; HiCroPL: ``renormalize=True``). ``template`` formats ``{name}`` and
  ``{desc}`` (CoPrompt / HiCroPL ``"{desc}"``: verbatim; MSGCoOp ``"a photo of {name}, {desc}"``).
  ``set_classnames(names)`` recomputes it (new classes); ``features_for(names)`` recomputes only when the names
  changed (call it where the loss needs the teacher). The frozen CLIP is shared, never a submodule.

Issue 23 (block R2 of ``remaining-seed-systems.md`` §19; CuPL, FuDD, ProAPO, GLOV, TFUP):

* formats ``cupl`` (sarahpratt/CuPL@719619c: ``all_prompts/full_prompts/<stem>_prompts_full.json``, ImageNet's
  ``imagenet_prompts/CuPL_image_prompts.json``; ``source`` = the file or the repository folder), ``cupl_base``
  (``all_prompts/base_prompts/<stem>_prompts_base.json``) and ``json`` (any ``{class: [texts]}`` file, e.g. ProAPO's
  ``category_description/<source>.json``);
  ``builtin:digits_cupl`` (ctta's own CuPL-style sentences, a different count per class).
* class-name alignment: ``align_classnames(keys, classnames, table)`` / ``match_classnames(..., table)`` with a
  table ``{ctta class name: bank key}`` (``load_alignment``: a mapping or a JSON file); every class without a key is
  named in one ``KeyError``.
* ``load_templates(source)``: a JSON list of templates with ``{}`` (FuDD's ``clip_templates.json``), or
  ``builtin:clip_imagenet`` / ``builtin:tip``.
* ``load_pairwise(source, dataset)`` -> ``PairwiseBank`` (FuDD, BatsResearch/fudd@3226423
  ``differential_descriptions/<stem>_prompt_pairs.json`` + ``<stem>_class_names.json``): ``pair_texts(a, b)`` (a
  missing pair gives "a photo of a {name}."), ``pooled(c)`` (every pair of ``c``: FuDD's K = |C| classifier);
  ``builtin:digits`` is ctta's own tiny pairwise bank.

Licences: CoPrompt and MSGCoOp are MIT; CuPL and FuDD have no licence, so their files are user-supplied (the errors
name the official location); ctta ships only its own ``builtin:`` banks. Get the files from the repositories named
in the error messages and pass the file or folder (``descriptions:``).

Deviations: the frozen text tower is the run's shared CLIP in the run's precision (the references build a second
CLIP: same weights; MSGCoOp's is fp16 in every precision, reproduced by ``round_fp16`` on the stored mean); a class
name is matched exactly (``_`` -> space), then case-insensitively when that is unique (or through an alignment
table); ``DescriptionBank`` writes no cache file (the zero-shot classifiers use ``ctta.clip_prompting.text_cache``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ctta.clip_prompting.text_cache import encode_texts

__all__ = ["FORMATS", "PAIR_DEFAULT", "BankKeyError", "DescriptionBank", "PairwiseBank", "align_classnames",
           "check_descriptions", "description_file", "load_alignment", "load_descriptions", "load_pairwise",
           "load_templates", "match_classnames", "pairwise_files"]

#: official file location per format: (repository@commit, folder in it, file-name pattern, dataset -> stem)
_COPROMPT_STEMS = {
    "caltech101": "caltech", "dtd": "dtd", "eurosat": "eurosat", "fgvc_aircraft": "fgvc", "food101": "food101",
    "oxford_flowers": "oxford_flowers", "oxford_pets": "oxford_pets", "stanford_cars": "stanford_cars",
    "sun397": "sun397", "ucf101": "ucf101", "imagenet": "imagenet", "imagenet_a": "imagenet_a",
    "imagenet_r": "imagenet_r", "imagenet_sketch": "imagenet_sketch", "imagenet_v2": "imagenetv2",
}  # fmt: skip
_MSGCOOP_NAMES = {
    "caltech101": "Caltech101", "dtd": "DescribableTextures", "eurosat": "EuroSAT", "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101", "oxford_flowers": "OxfordFlowers", "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars", "sun397": "SUN397", "ucf101": "UCF101", "imagenet": "ImageNet",
    "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR", "imagenet_sketch": "ImageNetSketch",
    "imagenet_v2": "ImageNetV2",
}  # fmt: skip
_CUPL_FILES = {  # CuPL's GPT-3 banks ("full" variant; ImageNet's lives in imagenet_prompts/)
    "aircraft": "airplane", "fgvc_aircraft": "airplane", "caltech101": "cal", "cars": "cars", "stanford_cars": "cars",
    "cifar10": "cifar10", "cifar100": "cifar100", "cub200": "bird", "dtd": "texture", "flower102": "flower",
    "oxford_flowers": "flower", "food101": "food", "pets": "pets", "oxford_pets": "pets", "sun397": "sun",
    "ucf101": "ucf", "imagenet": "imagenet", "imagenet_a": "imagenet", "imagenet_r": "imagenet",
    "imagenet_sketch": "imagenet", "imagenet_v2": "imagenet",
}  # fmt: skip
_CUPL_STEMS = {k: ("imagenet_prompts/CuPL_image_prompts.json" if v == "imagenet"
                   else f"all_prompts/full_prompts/{v}_prompts_full.json") for k, v in _CUPL_FILES.items()}  # fmt: skip
_CUPL_BASE = {k: f"all_prompts/base_prompts/{'pet' if v == 'pets' else v}_prompts_base.json"
              for k, v in _CUPL_FILES.items() if v != "bird"}  # the "base" variant (no CUB file)
FORMATS = {
    "coprompt": ("ShuvenduRoy/CoPrompt@a2a6c12 (MIT)", "gpt_file", "{}_prompt.json", _COPROMPT_STEMS),
    "msgcoop": ("Rain-Bus/MSGCoOp@a298669 (MIT)", "MSGCoOp/desc/gpt-4.1/descriptions_top4", "{}.json", _MSGCOOP_NAMES),
    "cupl": ("sarahpratt/CuPL@719619c (no licence: user-supplied)", "", "{}", _CUPL_STEMS),  # repository root
    "cupl_base": ("sarahpratt/CuPL@719619c (no licence: user-supplied)", "", "{}", _CUPL_BASE),
    # any {class: [texts]} file, e.g. CuPL's all_prompts/*/<ds>_prompts_*.json or ProAPO's
    # (MorningStarOvO/ProAPO@fefdf18, MIT) data/dataset/<ds>/category_description/<source>.json: pass the file itself
    "json": ("a {class name: [texts]} JSON file", "", "<file>.json", {}),
}

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_BUILTIN = {
    "digits": {
        name: [f"a handwritten digit {name}.", f"the number {name} written by hand.", f"a small image of a {name}."]
        for name in _DIGITS
    }
}  # ctta's own text (not from the references), same D for every class
_BUILTIN["digits_cupl"] = {  # ctta's own CuPL-style sentences (not GPT-3's), a different count per class
    "zero": ["A handwritten zero is a closed oval loop.", "The digit zero looks like a ring.",
             "A zero written by hand is round and empty in the middle."],
    "one": ["A handwritten one is a single vertical stroke.", "The digit one looks like a short straight line."],
    "two": ["A handwritten two has a curved top and a flat base.", "The digit two looks like a swan.",
            "A two written by hand ends in a horizontal stroke.", "A caption of an image of a two: a curvy digit."],
    "three": ["A handwritten three has two bumps open to the left.", "The digit three looks like half of an eight."],
    "four": ["A handwritten four has a crossing bar and an open top.", "The digit four looks like a chair upside down.",
             "A four written by hand has three straight strokes."],
    "five": ["A handwritten five has a flat bar on top and a round belly.", "The digit five looks like a hook."],
    "six": ["A handwritten six has a closed loop at the bottom.", "The digit six looks like a curl.",
            "A six written by hand starts with a long curve."],
    "seven": ["A handwritten seven has a bar on top of a slanted stroke.", "The digit seven looks like a cliff edge."],
    "eight": ["A handwritten eight is two loops stacked.", "The digit eight looks like a snowman.",
              "An eight written by hand crosses itself in the middle.",
              "A caption of an image of an eight: two rings."],
    "nine": ["A handwritten nine has a closed loop on top of a stem.",
             "The digit nine looks like a balloon on a string."],
}  # fmt: skip
_DIGIT_PAIRS = {  # ctta's own differential descriptions of confusable digit pairs (bank ids = DIGIT_NAMES order)
    (1, 7): [("a one, a single stroke.", "a seven, a bar and a stroke."),
             ("a one, no top bar.", "a seven, a top bar.")],
    (3, 8): [("a three, open on the left.", "an eight, closed on the left.")],
    (4, 9): [("a four, open on top.", "a nine, a loop on top."), ("a four, a crossing bar.", "a nine, a curved stem.")],
    (5, 6): [("a five, a flat top bar.", "a six, a loop at the bottom.")],
    (0, 6): [("a zero, an empty oval.", "a six, a tail above a loop.")],
    (2, 7): [("a two, a flat base.", "a seven, no base.")],
}  # fmt: skip


def _format(fmt: str) -> tuple:
    if fmt not in FORMATS:
        raise ValueError(f"description format {fmt!r}; valid: {sorted(FORMATS)}")
    return FORMATS[fmt]


def description_file(source: str | Path, fmt: str, dataset: str = "") -> Path:
    """The description file ``source`` names: the file itself, or the official file name inside folder ``source``.

    Raises:
        FileNotFoundError: no such file; the message names it and where the official repository keeps it.
        ValueError: ``source`` is a folder and ``dataset`` is not one the format knows.
    """
    repo, folder, pattern, stems = _format(fmt)
    path = Path(source)
    if path.is_file():
        return path
    if not stems:  # a format without official layout: the file itself
        raise FileNotFoundError(f"description file {path} not found; expected {repo} (pass its path)")
    if path.is_dir() or not path.suffix:
        if dataset not in stems:
            raise ValueError(f"{fmt} descriptions: dataset {dataset!r} has no official file; valid: {sorted(stems)}")
        name = pattern.format(stems[dataset])
        tried = [path / Path(folder).name / name, path / name, path / folder / name, path / Path(name).name]
        found = next((p for p in tried if p.is_file()), None)
        if found is not None:
            return found
        path = tried[0]
    name = pattern.format(stems[dataset] if dataset in stems else "<dataset>")
    where = f"{repo}: {'/'.join(p for p in (folder, name) if p)}"
    raise FileNotFoundError(f"description file {path} not found; the official one is in {where} (pass its path)")


def _validate(data, path) -> dict[str, list[str]]:
    ok = isinstance(data, dict) and all(
        isinstance(k, str) and isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)
        for k, v in data.items()
    )
    if not ok or not data:
        raise ValueError(f"{path}: expected a JSON object {{class name: [non-empty description strings]}}")
    return {k: list(v) for k, v in data.items()}


def load_descriptions(source: str | Path, fmt: str = "coprompt", dataset: str = "") -> dict[str, list[str]]:
    """``{class name: [descriptions]}`` from a description file (see the module notes for ``source``)."""
    _format(fmt)
    if str(source).startswith("builtin:"):
        key = str(source).split(":", 1)[1]
        if key not in _BUILTIN:
            raise ValueError(f"unknown built-in descriptions {source!r}; valid: builtin:{', builtin:'.join(_BUILTIN)}")
        return {k: list(v) for k, v in _BUILTIN[key].items()}
    path = description_file(source, fmt, dataset)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {{class name: [descriptions]}}") from err
    return _validate(data, path)


def check_descriptions(source: str | Path, fmt: str = "coprompt", dataset: str = "") -> None:
    """Raise what ``load_descriptions`` raises for a missing file, an unknown format or built-in, without reading
    the file (a run's early check: CuPL, ProAPO)."""
    if str(source).startswith("builtin:"):
        load_descriptions(source, fmt, dataset)  # in memory
    else:
        description_file(source, fmt, dataset)  # checks the format too


def load_alignment(table: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """A class-name alignment table ``{ctta class name: bank key}``: a mapping, a JSON file holding one, or None/""
    (empty).

    Raises:
        FileNotFoundError: no such file. ValueError: not a ``{string: string}`` object.
    """
    if not table:
        return {}
    data = table
    if not isinstance(table, Mapping):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"class-name alignment table {path} not found")
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"class-name alignment table {table}: expected a JSON object {{ctta class name: bank key}}")
    return dict(data)


class BankKeyError(KeyError, ValueError):
    """A description bank or prompt file lacks entries the run needs. A ``KeyError`` (a missing key) and a
    ``ValueError`` (the user's input does not fit), so ``ctta run`` prints its message as one line, exit code 2."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote the message


def align_classnames(keys: Sequence[str], classnames: Sequence[str], table: Mapping[str, str] | None = None,
                     what: str = "descriptions") -> list[str]:  # fmt: skip
    """The bank key of each class of ``classnames``: ``table[name]`` (the alignment table, by the ctta name or its
    ``_`` -> space form), else the exact name (``_`` -> space), else its unique case-insensitive match.

    Raises:
        BankKeyError: classes without a key, all listed in one message (with a few available keys).
    """
    table, known = dict(table or {}), set(keys)
    lower: dict[str, list[str]] = {}
    for k in keys:
        lower.setdefault(k.lower(), []).append(k)
    out, missing = [], []
    for c in classnames:
        name = c.replace("_", " ")
        key = table.get(c, table.get(name, name))
        if key not in known:
            found = lower.get(key.lower(), [])
            key = found[0] if len(found) == 1 else None
        if key is None:
            missing.append(name)
        out.append(key)
    if missing:
        raise BankKeyError(f"no {what} for classes {missing} (keys such as {sorted(keys)[:5]}); map them with a "
                       f"class-name alignment table {{ctta class name: bank key}}")  # fmt: skip
    return out


def match_classnames(descriptions: Mapping[str, Sequence[str]], classnames: Sequence[str],
                     table: Mapping[str, str] | None = None) -> list[list[str]]:  # fmt: skip
    """The descriptions of each class of ``classnames`` (``align_classnames``: alignment ``table``, exact name with
    ``_`` -> space, else unique case-insensitive match).

    Raises:
        KeyError: classes without descriptions (all named in one message).
    """
    return [list(descriptions[k]) for k in align_classnames(list(descriptions), classnames, table)]


class DescriptionBank(nn.Module):
    """Frozen-CLIP text classifier from per-class descriptions (buffer ``features``; see the module notes).

    Args:
        clip_model: the frozen open_clip ``CLIP`` (shared, not a submodule).
        tokenizer: its tokenizer.
        descriptions: ``{class name: [descriptions]}`` (``load_descriptions``).
        classnames: the classes of the head.
        template: text of one description, with ``{name}`` and ``{desc}``.
        reduce: ``"index"`` (``(D, C, E)``) or ``"mean"`` (``(C, E)``).
        renormalize: re-normalise the mean (HiCroPL).
        round_fp16: store the features rounded to fp16 (MSGCoOp's fp16 teacher).
        chunk: texts encoded per call.
    """

    def __init__(
        self, clip_model: nn.Module, tokenizer, descriptions: Mapping[str, Sequence[str]], classnames: Sequence[str],
        *, template: str = "{desc}", reduce: str = "mean", renormalize: bool = False, round_fp16: bool = False,
        chunk: int = 256,
    ) -> None:  # fmt: skip
        super().__init__()
        if reduce not in ("index", "mean"):
            raise ValueError(f"reduce={reduce!r}; valid: index, mean")
        self.clip = [clip_model]
        self.tokenizer, self.descriptions, self.template = tokenizer, dict(descriptions), template
        self.reduce, self.renormalize, self.round_fp16, self.chunk = reduce, renormalize, round_fp16, chunk
        self.set_classnames(classnames)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(self.clip[0], self.tokenizer, texts, chunk=self.chunk)  # no cache: every text, in order

    @torch.no_grad()
    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Recompute ``features`` for ``classnames``."""
        per_class = match_classnames(self.descriptions, classnames)
        counts = {len(d) for d in per_class}
        if self.reduce == "index" and len(counts) != 1:
            raise ValueError(f"per-index description bank needs the same count for every class, got {sorted(counts)}")
        texts = [self.template.format(name=c.replace("_", " "), desc=d) for c, ds in zip(classnames, per_class)
                 for d in ds]  # fmt: skip
        rows = self._encode(texts).split([len(d) for d in per_class])
        if self.reduce == "index":
            feats = torch.stack(rows, dim=1)  # (D, C, E), description-major
        else:
            feats = torch.stack([r.mean(0) for r in rows])  # (C, E)
            if self.renormalize:
                feats = feats / feats.norm(dim=-1, keepdim=True)
        feats = feats.half().float() if self.round_fp16 else feats
        self.register_buffer("features", feats, persistent=False)
        self.classnames = list(classnames)

    def features_for(self, classnames: Sequence[str]) -> torch.Tensor:
        """``features`` for ``classnames``, recomputed only when they changed (a lazy teacher: evaluation on classes
        without descriptions never needs it)."""
        if list(classnames) != self.classnames:
            self.set_classnames(classnames)
        return self.features

    @property
    def n_descriptions(self) -> int:
        """D of the per-index bank (1 for a mean bank)."""
        return self.features.shape[0] if self.reduce == "index" else 1


# ------------------------------------------------------------------------------------- template lists
def load_templates(source: str | Path) -> list[str]:
    """A template list: a JSON list of strings, each with one ``{}`` for the class name (FuDD's
    ``differential_descriptions/clip_templates.json``, GLOV's and ProAPO's template pools), or
    ``builtin:clip_imagenet`` (CLIP's 80 ImageNet templates) / ``builtin:tip`` (the 7 "tip" templates).

    Raises:
        FileNotFoundError: no such file. ValueError: not a non-empty list of strings holding ``{}``.
    """
    from ctta.clip_prompting.prompt_templates import CLIP_IMAGENET_TEMPLATES, TIP_TEMPLATES

    builtin = {"builtin:clip_imagenet": CLIP_IMAGENET_TEMPLATES, "builtin:tip": TIP_TEMPLATES}
    if str(source) in builtin:
        return list(builtin[str(source)])
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"template list {path} not found (or one of {sorted(builtin)})")
    data = _read_json(path, "a JSON list of templates")
    if not isinstance(data, list) or not data or not all(isinstance(t, str) and "{}" in t for t in data):
        raise ValueError(f"{path}: expected a JSON list of template strings, each with {{}} for the class name")
    return list(data)


def _read_json(path: Path, expected: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {expected}") from err


# ------------------------------------------------------------------------------------- pairwise banks (FuDD)
FUDD_REPO = "BatsResearch/fudd@3226423 (no licence: user-supplied)"
FUDD_FOLDER = "differential_descriptions"
_FUDD_STEMS = {
    "cub200": "cub", "dtd": "dtd", "eurosat": "eurosat", "aircraft": "fgvc_aircraft", "fgvc_aircraft": "fgvc_aircraft",
    "flower102": "flowers", "oxford_flowers": "flowers", "food101": "food101", "imagenet": "imagenet",
    "imagenet_v2": "imagenet", "pets": "pets", "oxford_pets": "pets", "places365": "places365",
    "cars": "stanford_cars", "stanford_cars": "stanford_cars", "stanford_dogs": "stanford_dogs",
}  # fmt: skip
PAIR_DEFAULT = "a photo of a {}."  # FuDD's text of a class in a pair without descriptions


class PairwiseBank:
    """FuDD's differential descriptions: per class pair, descriptions of each side that tell the two apart.

    Args:
        classnames: the bank's class names, index = bank class id (``_`` -> space, as the reference).
        entries: ``{key: ((i, j), [(text for i, text for j), ...])}`` in file order (the key of a pair is looked up
            as ``"<min>_<max>"``, as the reference does; every entry counts for ``pooled``).
    """

    def __init__(self, classnames: Sequence[str], entries: Mapping[str, tuple[tuple[int, int], list]]) -> None:
        self.classnames = [c.replace("_", " ") for c in classnames]
        self.entries = dict(entries)

    def pair_texts(self, a: int, b: int) -> tuple[list[str], list[str]]:
        """Texts of bank classes ``a`` and ``b`` from pair ``"<min>_<max>"`` (each side in the file's order); a pair
        the bank lacks gives each side ``"a photo of a {name}."``."""
        entry = self.entries.get(f"{min(a, b)}_{max(a, b)}")
        if entry is None:
            return [PAIR_DEFAULT.format(self.classnames[a])], [PAIR_DEFAULT.format(self.classnames[b])]
        (i, j), pairs = entry
        side = {i: [p[0] for p in pairs], j: [p[1] for p in pairs]}
        return list(side.get(a, [])), list(side.get(b, []))

    def pooled(self, c: int) -> list[str]:
        """Every text of bank class ``c`` over all the bank's pairs, in file order (``"a photo of a {name}."`` when
        there is none): FuDD's "gpt" classifier (K = |C|), before de-duplication."""
        out: list[str] = []
        for (i, j), pairs in self.entries.values():
            if c in (i, j):
                out += [p[0] if c == i else p[1] for p in pairs]
        return out or [PAIR_DEFAULT.format(self.classnames[c])]


def pairwise_files(source: str | Path, dataset: str = "") -> tuple[Path, Path]:
    """``(<ds>_prompt_pairs.json, <ds>_class_names.json)``: ``source`` is the pairs file (class names next to it) or
    a folder holding FuDD's ``differential_descriptions/`` layout for ctta dataset ``dataset``.

    Raises:
        FileNotFoundError: a file is missing; the message names it and FuDD's official location.
    """
    path = Path(source)
    if path.is_file():
        pairs = path
        names = path.with_name(path.name.replace("_prompt_pairs.json", "_class_names.json"))
    else:
        stem = _FUDD_STEMS.get(dataset, dataset or "<dataset>")
        base = path / FUDD_FOLDER if (path / FUDD_FOLDER).is_dir() else path
        pairs, names = base / f"{stem}_prompt_pairs.json", base / f"{stem}_class_names.json"
    for f in (pairs, names):
        if not f.is_file():
            raise FileNotFoundError(f"FuDD description file {f} not found; the official one is in {FUDD_REPO}: "
                                    f"{FUDD_FOLDER}/{f.name} (pass the folder or the pairs file)")  # fmt: skip
    return pairs, names


def _pair_entry(key, value, n: int, path) -> tuple[tuple[int, int], list[tuple[str, str]]]:
    bad = ValueError(f"{path}: pair {key!r}: expected {{'classes': [i, j], 'prompt_pairs': [{{'prompt_pair': "
                     f"[text, text]}}, ...]}} with class ids below {n}")  # fmt: skip
    if not isinstance(value, dict):
        raise bad
    ids, rows = value.get("classes"), value.get("prompt_pairs")
    if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, int) and 0 <= i < n for i in ids)):
        raise bad
    if not isinstance(rows, list):
        raise bad
    pairs = [r.get("prompt_pair") if isinstance(r, dict) else None for r in rows]
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(t, str) and t for t in p) for p in pairs):
        raise bad
    return (ids[0], ids[1]), [(p[0], p[1]) for p in pairs]


def load_pairwise(source: str | Path, dataset: str = "") -> PairwiseBank:
    """FuDD's pairwise bank from its files (``pairwise_files``) or ``builtin:digits`` (ctta's own tiny bank)."""
    if str(source) == "builtin:digits":
        return PairwiseBank(_DIGITS, {f"{i}_{j}": ((i, j), list(p)) for (i, j), p in _DIGIT_PAIRS.items()})
    pairs_path, names_path = pairwise_files(source, dataset)
    names = _read_json(names_path, "a JSON list of class names")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise ValueError(f"{names_path}: expected a JSON list of class names (index = class id)")
    data = _read_json(pairs_path, "a JSON object {'<i>_<j>': {...}}")
    if not isinstance(data, dict):
        raise ValueError(f"{pairs_path}: expected a JSON object {{'<i>_<j>': {{'classes': ..., 'prompt_pairs': ...}}}}")
    return PairwiseBank(names, {k: _pair_entry(k, v, len(names), pairs_path) for k, v in data.items()})
