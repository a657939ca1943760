"""Image transforms derived from a backbone's pretrained config (timm ``pretrained_cfg``).

``backbone_transforms(model)`` returns ``(train, eval)`` torchvision pipelines with the input size,
interpolation, crop and normalisation the weights were trained with (timm's ``resolve_data_config`` and
``create_transform``), so a dataset loaded from a folder is fed the way the weights expect.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's resolved data config (input_size, interpolation, mean, std, crop_pct, crop_mode) for ``model``."""
    from timm.data import resolve_data_config

    inner = getattr(model, "vit", model)  # PromptedViT wraps the timm model
    cfg = resolve_data_config({}, model=inner)
    size = getattr(getattr(inner, "patch_embed", None), "img_size", None)
    if size is not None:  # an img_size override is not reflected in pretrained_cfg
        cfg["input_size"] = (cfg["input_size"][0], *tuple(size))
    return cfg


def backbone_transforms(model: nn.Module, train_augment: bool = False):
    """``(train, eval)`` transforms for PIL images from the model's pretrained config.

    Args:
        model: a timm model or a ``PromptedViT``.
        train_augment: use timm's training augmentation (random resized crop, flip) for the train transform;
            otherwise both are the deterministic eval pipeline.
    """
    from timm.data import create_transform

    cfg = data_config(model)
    eval_tf = create_transform(**cfg, is_training=False)
    train_tf = create_transform(**cfg, is_training=True) if train_augment else eval_tf
    return train_tf, eval_tf
