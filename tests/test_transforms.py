"""Transforms follow the backbone's pretrained config, including an img_size override."""

from __future__ import annotations

import torch
from PIL import Image

from ctta.data.transforms import backbone_transforms, data_config


def test_transforms_match_model_input(tiny_vit):
    cfg = data_config(tiny_vit)
    assert cfg["input_size"] == (3, 32, 32)
    _, ev = backbone_transforms(tiny_vit)
    x = ev(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    # red channel normalised with the config's mean/std
    assert torch.allclose(x[0], torch.full((32, 32), (1 - cfg["mean"][0]) / cfg["std"][0]), atol=1e-4)
