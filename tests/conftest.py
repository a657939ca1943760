"""Shared fixtures: tiny random models and small synthetic/bundled data (all offline, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a shared 2-core machine)

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIGS = sorted((ROOT / "configs" / "smoke").glob("*.yaml"))

# The tiny ViT used across the suite (depth >= 6 so MVP's prompt layers 0-4 exist).
TINY_VIT = dict(
    model="vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=6, embed_dim=48, num_heads=3
)


@pytest.fixture
def tiny_vit():
    """A frozen tiny ``PromptedViT`` (random weights, 32 px, patch 8, depth 6, dim 48, 3 heads)."""
    from ctta.backbones.vit import ViTConfig, build_vit

    torch.manual_seed(0)
    return build_vit(ViTConfig(**TINY_VIT))


@pytest.fixture
def digits():
    """sklearn's bundled digits at 32 px: (train, test) with integer ``targets``."""
    from ctta.data.digits import load_digits

    return load_digits(img_size=32)


@pytest.fixture(scope="module")
def tiny():
    """``(model, tokenizer)`` of the tiny random CLIP (``ctta-tiny-clip``), one per test module, seed 0."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ctta-tiny-clip", "")
    return model, tok
