"""Shipped weight files: the manifest, sha256 checks and safetensors loading.

``ctta/pretrained/manifest.json`` lists every shipped model (file, sha256, size, architecture, recipe, data, epochs,
seed, measured accuracy). Loading a model checks the file's sha256 against the manifest first; a missing or
changed file raises an error that names it and the command that re-creates it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

__all__ = [
    "PACKAGE_DIR",
    "MANIFEST_NAME",
    "PretrainedError",
    "MissingWeightsError",
    "ChecksumError",
    "sha256_of",
    "read_manifest",
    "manifest_entry",
    "verified_path",
    "load_weights",
    "save_weights",
]

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
_RECIPE_KIND = {"ctta-tiny-vit": "vit", "ctta-tiny-clip-digits": "clip"}


class PretrainedError(Exception):
    """A shipped backbone cannot be loaded (missing, changed or unlisted file)."""


class MissingWeightsError(PretrainedError, FileNotFoundError):
    """The weight file or the manifest does not exist."""


class ChecksumError(PretrainedError, ValueError):
    """The weight file's sha256 differs from the manifest's (corrupted or changed file)."""


def _recreate_hint(name: str) -> str:
    kind = _RECIPE_KIND.get(name, "vit|clip")
    return (
        f"Re-create it with `python -m ctta.pretrained.recipe {kind} --out DIR` and pass DIR/<file> as "
        f"backbone.pretrained, or reinstall ctta to restore the shipped file"
    )


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | os.PathLike = PACKAGE_DIR) -> dict:
    """The manifest of ``folder`` (``{"format": 1, "models": {name: entry}}``); raises if it is missing."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise MissingWeightsError(f"manifest of the shipped backbones not found: {path}. {_recreate_hint('')}")
    with open(path) as fh:
        return json.load(fh)


def manifest_entry(name: str, folder: str | os.PathLike = PACKAGE_DIR) -> dict:
    """The manifest entry of ``name``; raises naming the listed models when it is absent."""
    models = read_manifest(folder).get("models", {})
    if name not in models:
        raise PretrainedError(f"{name!r} is not listed in {Path(folder) / MANIFEST_NAME}; listed: {sorted(models)}")
    return models[name]


def verified_path(name: str, folder: str | os.PathLike = PACKAGE_DIR) -> Path:
    """Path of ``name``'s weight file after checking that it exists and its sha256 matches the manifest.

    Raises:
        MissingWeightsError: the file (or the manifest) is missing; the message names it and how to re-create it.
        ChecksumError: the file's sha256 differs from the manifest's.
    """
    entry = manifest_entry(name, folder)
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise MissingWeightsError(f"weight file of {name!r} not found: {path}. {_recreate_hint(name)}")
    got = sha256_of(path)
    if got != entry["sha256"]:
        raise ChecksumError(
            f"weight file of {name!r} is corrupted or was changed: {path} has sha256 {got}, the manifest "
            f"{Path(folder) / MANIFEST_NAME} says {entry['sha256']}. {_recreate_hint(name)}"
        )
    return path


def load_weights(name: str, source: bool | str | os.PathLike = True) -> dict[str, torch.Tensor]:
    """State dict of a shipped model: ``True`` = the packaged file, or a path to a file made by the recipe.

    A path is checked against the ``manifest.json`` beside it when that manifest lists ``name``; a file with no
    manifest beside it is loaded as it is (the user's own file).
    """
    from safetensors.torch import load_file

    if source is True:
        return load_file(verified_path(name))
    path = Path(source).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weight file for {name!r} not found: {path}. {_recreate_hint(name)}")
    beside = path.parent / MANIFEST_NAME
    if beside.is_file() and name in read_manifest(path.parent).get("models", {}):
        entry = manifest_entry(name, path.parent)
        if entry["file"] == path.name:
            path = verified_path(name, path.parent)
    return load_file(path)


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write ``state`` as safetensors (contiguous CPU copies, sorted keys); returns the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(state.items())}
    save_file(tensors, str(path))
    return sha256_of(path)
