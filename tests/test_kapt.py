"""KAPT (unofficial, from the paper arXiv 2308.11186): key-word extraction and the loss against their closed forms on
hand-made inputs, the knowledge prompt text, the start at CoOp with the frozen image feature, what trains, the
ViT-B/16 parameter count, base-to-new end to end."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.kapt import KAPTConfig, KAPTModel, keywords

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
DESC = "builtin:digits"
NAMES = list(DIGIT_NAMES[:4])


def test_keywords_closed_form():
    descs = ["A red bird with a red crest.", "The cardinal bird sings; crest is red.", "Often seen in a garden."]
    assert keywords(descs, "northern_cardinal", 3) == ["red", "bird", "crest"]  # counts 3, 2, 2; ties by order
    assert keywords(descs, "northern_cardinal", 5) == ["red", "bird", "crest", "sings", "seen"]
    assert keywords(descs, "x", 0) == []


def test_knowledge_prompt_text_and_class_names(tiny):
    model, tok = tiny
    m = KAPTModel(model, tok, NAMES, KAPTConfig(descriptions=DESC))
    assert m.classnames == NAMES
    assert m.text.classnames[0] == "zero, handwritten digit number"
    m.set_classnames(["five", "six", "unknown_class"])
    assert m.classnames == ["five", "six", "unknown_class"] and m.text.classnames[1] == "six, handwritten digit number"
    assert m.text.classnames[2] == "unknown_class"  # no descriptions: no key words


def test_starts_at_coop_with_the_frozen_image_feature(tiny):
    model, tok = tiny
    m = KAPTModel(model, tok, NAMES, KAPTConfig(descriptions=DESC))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.logits(model.encode_image(x), m.text(m.ctx)), atol=1e-5, rtol=1e-5)


def _strategy(model, tok, **kw):
    return STRATEGIES.get("kapt").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, descriptions=DESC, evaluator=EvaluationPlugin(loggers=[]), **kw,
    )  # fmt: skip


def test_loss_closed_form(tiny):
    model, tok = tiny
    strategy = _strategy(model, tok, w=2.0)
    m = strategy.model
    m.set_classnames(NAMES)
    strategy.is_training = True
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 3])
    m.train()
    strategy.mb_output, strategy.mbatch = m(x), [x, y, torch.zeros(3, dtype=torch.long)]
    d = m.knowledge.features_for(NAMES)
    g = F.normalize(m.text(m.ctx), dim=-1)
    want = F.cross_entropy(strategy.mb_output, y) + 2.0 * (1 - F.cosine_similarity(g, d, dim=-1).mean())
    torch.testing.assert_close(strategy.criterion(), want)


def test_only_the_declared_parameters_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok)
    declared = {"ctx", "query", "head.weight", "head.bias"}
    assert {n for n, p in strategy.model.named_parameters() if p.requires_grad} == declared
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed == declared


def test_vit_b16_trainable_parameter_count():
    """No published count in the available text: ctx 4 x 512, query 512, head Linear(512, 512)."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = KAPTModel(model, tok, NAMES, KAPTConfig(descriptions=DESC))
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 4 * 512 + 512 + 512 * 512 + 512 == 265_216


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("kapt_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
