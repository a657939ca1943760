"""CasPL (unofficial, from the paper): PromptKD's distillation loss in closed form, the boosting + adapting cascade in
both towers, the two phases (boosting prompts alone train in phase 1, then stay frozen while cross-entropy trains the
adapting prompts), base-to-new, the ViT-B/16 parameter counts."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.caspl import CasPLConfig, CasPLModel, kd_loss

from ctta.clip_prompting.vision import encode_image
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])
SMALL = dict(n_boost=2, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2)


def test_kd_loss_closed_form():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    temp = 2.0
    p = (t / temp).softmax(-1)
    log_q = (s / temp).log_softmax(-1)
    want = (p * (p.log() - log_q)).sum() * temp**2 / 4
    torch.testing.assert_close(kd_loss(s, t, temp), want)
    assert kd_loss(t, t, 1.0).abs() < 1e-7


def test_cascade_in_both_towers(tiny):
    model, tok = tiny
    m = CasPLModel(model, tok, NAMES, CasPLConfig(**SMALL), generator=torch.Generator().manual_seed(0)).eval()
    assert m.text.n_soft == 4 and m.text.layout == [4, "of a"]  # [boost 2 + "a photo" 2] + "of a"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ctx = torch.cat([m.boost_text[0], m.ctx])
        g = m.text(ctx, [torch.cat([m.boost_text[1], m.deep_text[0]])])
        vpt = torch.cat([m.boost_vision[0], m.vpt])
        f = encode_image(model, x, vpt, [torch.cat([m.boost_vision[1], m.deep_vision[0]])])
        want = model.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).t()
        torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)
        m.boost_vision[1].add_(1.0)  # the deep boosting prompt is used
        assert not torch.allclose(m(x), want, atol=1e-4)


class _Snapshot:
    """Plugin keeping the named parameters at the first training epoch (after the boosting phase)."""

    def __init__(self):
        self.at_phase2 = None

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def before_training_epoch(self, strategy, **kw):
        if self.at_phase2 is None:
            self.at_phase2 = {n: (p.detach().clone(), p.requires_grad) for n, p in strategy.model.named_parameters()}


def test_two_phases(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    snap = _Snapshot()
    strategy = STRATEGIES.get("caspl").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, boost_lr=0.5, boost_epochs=2, teacher_model="ctta-tiny-clip",
        teacher_pretrained="", evaluator=EvaluationPlugin(loggers=[]), plugins=[snap], **SMALL,
    )  # fmt: skip
    init = {n: p.detach().clone() for n, p in strategy.model.named_parameters() if p.requires_grad}
    strategy.train(cc.class_incremental(train, test).train_stream[0])
    final = dict(strategy.model.named_parameters())
    for name, start in init.items():
        mid, grad = snap.at_phase2[name]
        if name.startswith("boost_"):
            assert not torch.equal(mid, start) and not grad  # trained in phase 1, frozen for phase 2
            assert torch.equal(final[name].detach(), mid)
        else:
            assert torch.equal(mid, start) and grad  # untouched by phase 1
    assert not torch.equal(final["ctx"].detach(), init["ctx"])  # phase 2 trains the adapting prompts
    assert strategy.model.boosted and torch.isfinite(strategy.loss)


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("caspl_digits", tmp_path))


def test_trainable_parameter_counts_vitb16():
    """Boosting prompts 9 x 4 x 512 + 9 x 4 x 768 = the 46,080 adapting (IVLP) parameters (no published count)."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = CasPLModel(model, tok, ["cat", "dog"], CasPLConfig())
    boost = sum(p.numel() for p in [*m.boost_text, *m.boost_vision])
    assert boost == 46_080
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 2 * 46_080
