"""DiSa (unofficial, from the paper arXiv 2505.19373): the saliency mask, the directional loss and the running class
prototypes against their closed forms on hand-made inputs, the full loss as PromptSRC's plus the two new terms, what
trains, the ViT-B/16 parameter count, base-to-new end to end."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.promptsrc import PromptSRC
from ctta.strategies.promptsrc.disa import DiSaConfig, DiSaModel, directional_loss, saliency_mask

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])
TRAINED = {"ctx", "deep_text.0", "vpt", "deep_vision.0"}


def test_saliency_mask_closed_form():
    sal = torch.tensor([[0.1, 0.9, 0.5, 0.2]])  # 2 x 2 grid, keep the 2 most salient: patches 1 and 2
    m = saliency_mask(sal, 0.5, patch=2)
    want = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float)
    torch.testing.assert_close(m, want.view(1, 1, 4, 4))
    assert saliency_mask(sal, 0.01, patch=1).sum() == 1  # at least one patch is kept


def test_directional_loss_closed_form():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    protos = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    want = ((1 - 2**-0.5) + 0.0) / 2
    torch.testing.assert_close(directional_loss(f, protos, torch.tensor([0, 1])), torch.tensor(want))


def _strategy(model, tok, **kw):
    return STRATEGIES.get("disa").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), depth_text=2, depth_vision=2, epochs=1,
        batch_size=8, prec="fp32", warmup_epochs=0, lr=0.05, teacher_templates="hand", gpa_mean=1.0,
        evaluator=EvaluationPlugin(loggers=[]), **kw,
    )  # fmt: skip


def test_loss_is_promptsrc_plus_the_new_terms(tiny):
    model, tok = tiny
    s = _strategy(model, tok, cir_weight=0.5, dir_weight=2.0, keep_ratio=0.25)
    m = s.model
    s.make_optimizer()
    s.is_training = True
    m.train()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 2])
    s.mbatch = [x, y, torch.zeros(3, dtype=torch.long)]
    s.mb_output = m(x)
    base = PromptSRC.criterion(s)
    with torch.no_grad():
        t = F.normalize(m.teacher.text_features, dim=-1)
        zs = m.teacher.image_features(x)
        masked = m.masked_view(x, t[y], 0.25)
        assert (masked == 0).float().mean() > 0.5  # 3 of 4 patches zeroed
        cir = F.cross_entropy(m.logit_scale * m.prompted_image(masked) @ t.t(), y)
        cir = cir + F.cross_entropy(m.logit_scale * F.normalize(zs, dim=-1) @ m.features["text"].t(), y)
        zn = F.normalize(zs, dim=-1)
        protos = torch.zeros(10, zs.shape[-1])
        protos[0], protos[2] = zn[0], (zn[1] + zn[2]) / 2  # running class means of this first batch
        want = base + 0.5 * cir + 2.0 * directional_loss(m.features["image"], protos, y)
    torch.testing.assert_close(s.criterion(), want, atol=1e-5, rtol=1e-5)
    assert s.proto_count.tolist()[:3] == [1.0, 0.0, 2.0]


def test_only_the_prompts_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok)
    assert {n for n, p in strategy.model.named_parameters() if p.requires_grad} == TRAINED
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed == TRAINED


def test_vit_b16_trainable_parameter_count():
    """PromptSRC's prompts (no published DiSa count): 9 x 4 x 512 + 9 x 4 x 768."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = DiSaModel(model, tok, NAMES, DiSaConfig(teacher_templates="hand"))
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 9 * 4 * 512 + 9 * 4 * 768 == 46_080


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("disa_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
