"""Small pretrained backbones made by ctta and shipped in the package (``.safetensors``, sha256-checked).

* ``ctta-tiny-vit`` (``backbone: {name: vit, model: ctta-tiny-vit, pretrained: true}``): a timm ViT (32 px, patch
  8, depth 6, width 64) pretrained on Fashion-MNIST and the sklearn digits train split, for the continual-learning
  methods; it has never seen the digits test split.
* ``ctta-tiny-clip-digits`` (``backbone: {name: clip, model: ctta-tiny-clip-digits, pretrained: ctta}``): an
  open_clip CLIP (image + text tower) trained on the clean sklearn digits train split and Fashion-MNIST with
  captions, for the test-time methods.

``manifest.json`` records each file's sha256, architecture, recipe, data, epochs, seed and measured accuracy;
``python -m ctta.pretrained.recipe vit|clip`` re-creates them (``ctta/pretrained/recipe.py``).
"""

from __future__ import annotations

import os

from torch import nn

from ctta.pretrained.archs import (
    CLIP_NAME,
    CLIP_TAG,
    VIT_ARCH,
    VIT_NAME,
    VocabTokenizer,
    build_tiny_clip,
    build_tiny_vit,
)
from ctta.pretrained.store import (
    ChecksumError,
    MissingWeightsError,
    PretrainedError,
    load_weights,
    manifest_entry,
    read_manifest,
    verified_path,
)

__all__ = [
    "VIT_NAME",
    "VIT_ARCH",
    "VIT_DATA_CONFIG",
    "CLIP_NAME",
    "CLIP_TAG",
    "VocabTokenizer",
    "PretrainedError",
    "MissingWeightsError",
    "ChecksumError",
    "create_tiny_vit",
    "create_tiny_clip",
    "manifest_entry",
    "read_manifest",
    "verified_path",
]


#: What ``ctta-tiny-vit`` was trained on (``recipe.py``): 32 x 32 RGB images scaled to [0, 1], then normalised
#: with mean 0.5 and std 0.5 per channel, i.e. inputs in [-1, 1]; set as the model's timm ``pretrained_cfg``.
VIT_DATA_CONFIG = {
    "architecture": VIT_NAME, "tag": "ctta", "num_classes": 0, "input_size": (3, 32, 32), "crop_pct": 1.0,
    "crop_mode": "center", "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    "first_conv": "patch_embed.proj", "classifier": "head",
}  # fmt: skip


def create_tiny_vit(pretrained: bool | str | os.PathLike = True, **timm_kwargs) -> nn.Module:
    """``ctta-tiny-vit`` as a timm ``VisionTransformer`` without head (not frozen; ``create_vit`` freezes it).

    Its input: 32 x 32 RGB in [-1, 1] (``(x - 0.5) / 0.5`` of images in [0, 1]); ``model.pretrained_cfg`` says so
    (``VIT_DATA_CONFIG``), so ``timm.data.resolve_data_config(model=model)`` gives its mean, std and size.

    Args:
        pretrained: True = the shipped weights (sha256-checked), False = random init, a path = a file written by
            the recipe (checked against the manifest beside it, if any).
        **timm_kwargs: other ``timm.create_model`` arguments (e.g. ``drop_path_rate``); the architecture is fixed.
    """
    model = build_tiny_vit(**timm_kwargs)
    if pretrained is not False:
        model.load_state_dict(load_weights(VIT_NAME, pretrained))
    model.pretrained_cfg = model.default_cfg = dict(VIT_DATA_CONFIG)  # timm.data.resolve_data_config reads it
    return model


def create_tiny_clip(pretrained: str = CLIP_TAG, precision: str = "fp32"):
    """``ctta-tiny-clip-digits``: ``(open_clip.CLIP, VocabTokenizer)``.

    Args:
        pretrained: ``"ctta"`` = the shipped weights (sha256-checked), ``""`` = random init, or a path to a file
            written by the recipe.
        precision: open_clip weight precision.
    """
    if not pretrained:
        return build_tiny_clip(precision=precision)
    state = dict(load_weights(CLIP_NAME, True if pretrained == CLIP_TAG else pretrained))
    vocab = state.pop("tokenizer.vocab", None)
    if vocab is None:
        raise PretrainedError(f"{pretrained}: not a {CLIP_NAME} file (no tokenizer.vocab tensor)")
    model, tokenizer = build_tiny_clip(vocab.tolist(), precision)
    model.load_state_dict(state)
    return model, tokenizer
