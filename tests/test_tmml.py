"""TMML (unofficial, from the paper arXiv 2303.17169): CTP's class-aware meta-net input and TFT's text-guided
pooling against their closed forms on hand-made inputs, the start at CoCoOp-like logits (zero TFT), one prompt per
image and class, what trains, the ViT-B/16 parameter count, base-to-new end to end."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.tmml import TMMLConfig, TMMLModel, class_aware_input, frozen_image_tokens, text_guided_pooling

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])


def test_class_aware_input_closed_form():
    f = torch.tensor([[3.0, 4.0]])  # norm 5
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    u = class_aware_input(f, t)
    assert u.shape == (1, 2, 2)
    torch.testing.assert_close(u[0, 0], torch.tensor([1.0, 0.0]))  # (0.6, 0) * (1, 0) -> normalised
    torch.testing.assert_close(u[0, 1], torch.tensor([0.6, 0.8]))  # (0.6, 0.8) / sqrt 2, re-normalised


def test_text_guided_pooling_closed_form():
    patches = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # (B=1, N=2, E=2)
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = text_guided_pooling(patches, t, scale=2.0)
    w = 1 / (1 + math.exp(-2.0))  # class 0: scores (2, 0) -> weight of patch 0
    torch.testing.assert_close(out[0, 0], torch.tensor([2 * w, 1 - w]))
    torch.testing.assert_close(out[0, 1], torch.tensor([1.0, 0.5]))  # class 1: equal scores -> mean


def test_starts_at_the_frozen_image_feature_and_prompts_per_class(tiny):
    model, tok = tiny
    m = TMMLModel(model, tok, NAMES, TMMLConfig())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f, patches = frozen_image_tokens(model, x)
        torch.testing.assert_close(f, model.encode_image(x), atol=1e-5, rtol=1e-5)
        assert patches.shape[:2] == (2, (32 // model.visual.patch_size[0]) ** 2)
        t = m.labels.text_features
        bias = m.meta_net(class_aware_input(f, t))  # (B, C, D)
        want = [[m.text(m.ctx + bias[b, c])[c] for c in range(4)] for b in range(2)]
        g = F.normalize(torch.stack([torch.stack(r) for r in want]), dim=-1)
        torch.testing.assert_close(m(x), m.logit_scale * (F.normalize(f, dim=-1)[:, None] * g).sum(-1), atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
        assert not torch.allclose(bias[0, 0], bias[0, 1])  # class-aware: each class its own bias


def test_only_the_declared_parameters_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = STRATEGIES.get("tmml").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    declared = {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                "meta_net.linear2.bias", "tft.weight", "tft.bias"}  # fmt: skip
    assert {n for n, p in strategy.model.named_parameters() if p.requires_grad} == declared
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed == declared


def test_vit_b16_trainable_parameter_count():
    """No published count in the available text: ctx 4 x 512, meta-net 512-32-512, TFT Linear(512, 512)."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = TMMLModel(model, tok, NAMES, TMMLConfig())
    want = 4 * 512 + (512 * 32 + 32 + 32 * 512 + 512) + (512 * 512 + 512)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == want == 298_016


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("tmml_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
