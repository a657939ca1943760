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

Licences: both repositories are MIT; ctta ships none of their files (large, per dataset); get them from the
repositories named in the error messages and pass the file or folder (``descriptions:``).

Deviations: the frozen text tower is the run's shared CLIP in the run's precision (the references build a second
CLIP: same weights; MSGCoOp's is fp16 in every precision, reproduced by ``round_fp16`` on the stored mean); a class
name is matched exactly (``_`` -> space), then case-insensitively when that is unique; no cache file is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["FORMATS", "DescriptionBank", "description_file", "load_descriptions", "match_classnames"]

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
FORMATS = {
    "coprompt": ("ShuvenduRoy/CoPrompt@a2a6c12 (MIT)", "gpt_file", "{}_prompt.json", _COPROMPT_STEMS),
    "msgcoop": ("Rain-Bus/MSGCoOp@a298669 (MIT)", "MSGCoOp/desc/gpt-4.1/descriptions_top4", "{}.json", _MSGCOOP_NAMES),
}

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_BUILTIN = {
    "digits": {
        name: [f"a handwritten digit {name}.", f"the number {name} written by hand.", f"a small image of a {name}."]
        for name in _DIGITS
    }
}  # ctta's own text (not from the references), same D for every class


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
    if path.is_dir() or not path.suffix:
        if dataset not in stems:
            raise ValueError(f"{fmt} descriptions: dataset {dataset!r} has no official file; valid: {sorted(stems)}")
        name = pattern.format(stems[dataset])
        tried = [path / Path(folder).name / name, path / name, path / folder / name]
        found = next((p for p in tried if p.is_file()), None)
        if found is not None:
            return found
        path = tried[0]
    name = pattern.format(stems[dataset] if dataset in stems else "<dataset>")
    where = f"{repo}: {folder}/{name}"
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


def match_classnames(descriptions: Mapping[str, Sequence[str]], classnames: Sequence[str]) -> list[list[str]]:
    """The descriptions of each class of ``classnames`` (``_`` -> space; exact, else unique case-insensitive match).

    Raises:
        KeyError: a class has no descriptions (names the class and a few available keys).
    """
    lower: dict[str, list[str]] = {}
    for k in descriptions:
        lower.setdefault(k.lower(), []).append(k)
    out = []
    for c in classnames:
        name = c.replace("_", " ")
        key = name if name in descriptions else (lower.get(name.lower()) or [None, None])
        if isinstance(key, list):
            if len(key) != 1:
                raise KeyError(f"no descriptions for class {name!r} (keys such as {sorted(descriptions)[:5]})")
            key = key[0]
        out.append(list(descriptions[key]))
    return out


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

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        clip = self.clip[0]
        dev = next(clip.parameters()).device
        parts = [clip.encode_text(self.tokenizer(texts[i : i + self.chunk]).to(dev)).float()
                 for i in range(0, len(texts), self.chunk)]  # fmt: skip
        feats = torch.cat(parts)
        return feats / feats.norm(dim=-1, keepdim=True)

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
