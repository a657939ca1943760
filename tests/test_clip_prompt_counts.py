"""Trainable-parameter counts of the CLIP prompt learners on ViT-B/16 equal the published ones (random weights,
built once, no download)."""

from __future__ import annotations

import pytest
import torch

from ctta.backbones.clip import create_clip

NAMES = ["cat", "dog", "sea lion", "airplane"]


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def vitb16():
    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    return model, tok


def test_published_parameter_counts_vitb16(vitb16):
    from ctta.strategies.cocoop import CoCoOpConfig, CoCoOpModel
    from ctta.strategies.coop import CoOpConfig, CoOpModel
    from ctta.strategies.maple import MaPLeConfig, MaPLeModel
    from ctta.strategies.promptsrc import PromptSRCConfig, PromptSRCModel

    model, tok = vitb16
    assert n_trainable(CoOpModel(model, tok, NAMES, CoOpConfig())) == 2_048  # 4 x 512 ("a photo of a")
    assert n_trainable(CoOpModel(model, tok, NAMES, CoOpConfig(ctx_init="", n_ctx=16))) == 8_192  # CoOp paper
    assert n_trainable(CoCoOpModel(model, tok, NAMES, CoCoOpConfig())) == 35_360  # CoCoOp, MaPLe Table 1
    # MaPLe "3.55M": ctx 2x512 + F_0 (512x768+768) + 8 x (2x512 deep text + 512x768+768)
    assert n_trainable(MaPLeModel(model, tok, NAMES, MaPLeConfig())) == 3_555_072
    # PromptSRC "46K": text 4x512 + 8 x 4x512, vision 4x768 + 8 x 4x768 (the teacher adds nothing)
    assert n_trainable(PromptSRCModel(model, tok, NAMES, PromptSRCConfig(teacher_templates="hand"))) == 46_080
    # PRE (not published): ctx 4x512 + BiLSTM(512 -> 2 x 256): 2 x (4 x 256 x (512 + 256) + 2 x 4 x 256)
    from ctta.strategies.pre import PREConfig, PREModel

    assert n_trainable(PREModel(model, tok, NAMES, PREConfig())) == 2_048 + 1_576_960
    assert n_trainable(model) == 0
