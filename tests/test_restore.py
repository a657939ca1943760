"""RESTORE: closed forms of the feature-shift loss and the calibrator mixing, the official ratio quirks (untrained,
raised once after epoch epochs // 3 by the absolute shift, float32-rounded) and their switches, fp16-rounded init,
the parameters the official code trains, TPT hand-over, class-incremental stream, base-to-new end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.restore import RESTORE, RESTOREConfig, RESTOREModel, feature_shift_loss, gram_norms

from ctta.clip_prompting import encode_image
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc

NAMES = ["cat", "dog", "sea lion", "airplane"]


def _model(tiny, **kw) -> RESTOREModel:
    model, tok = tiny
    return RESTOREModel(model, tok, NAMES, RESTOREConfig(depth=2, **kw), generator=torch.Generator().manual_seed(0))


def test_feature_shift_loss_closed_form():
    t = [torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 4.0]])]
    v = [torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])]
    # |P^T P|_F = |P P^T|_F: t0 -> sqrt(1 + 16), t1 -> 25, v0 -> 2, v1 -> 4
    torch.testing.assert_close(gram_norms(t), torch.tensor([math.sqrt(17.0), 25.0]))
    torch.testing.assert_close(gram_norms(v), torch.tensor([2.0, 4.0]))
    ref_t, ref_v = torch.tensor([1.0, 5.0]), torch.tensor([4.0, 2.0])
    expected = (math.sqrt(17.0) - 0.5) ** 2 + (5.0 - 2.0) ** 2
    torch.testing.assert_close(feature_shift_loss(t, v, ref_t, ref_v), torch.tensor(expected))
    assert feature_shift_loss(t, v, gram_norms(t), gram_norms(v)) == 0  # at the reference: exactly zero
    assert feature_shift_loss([], [], torch.zeros(0), torch.zeros(0)) == 0


def _calibrated(cal, x):
    ln = F.layer_norm(x, x.shape[-1:], cal.post_ln.weight, cal.post_ln.bias)
    h = ln @ cal.FFN[0].weight.t() + cal.FFN[0].bias
    return x + (h * torch.sigmoid(1.702 * h)) @ cal.FFN[2].weight.t() + cal.FFN[2].bias


def test_forward_is_calibrated_maple_closed_form(tiny):
    torch.manual_seed(1)
    m = _model(tiny, text_calib_r=0.3, vis_calib_r=0.2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ctx, deep, v0, vs = m.prompts()
        g, f = m.text(ctx, deep), encode_image(m.clip, x, v0, vs)
        g = 0.3 * _calibrated(m.text_adapter.module, g) + 0.7 * g
        f = 0.2 * _calibrated(m.visual_adapter.module, f) + 0.8 * f
        expected = m.logit_scale * F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).t()
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def test_reference_norms_first_forward_then_loss_moves(tiny):
    m = _model(tiny).train()
    x = torch.randn(2, 3, 32, 32)
    m(x)
    assert m.fs_reg == 0 and m.ref_norms is not None
    assert not any("ref" in k for k in m.state_dict())  # plain attributes, never saved (a resume re-takes them)
    with torch.no_grad():
        m.deep_text[0].mul_(3.0)
    m(x)
    _, deep, _, vs = m.prompts()
    expected = (gram_norms(deep) / m.ref_norms[0] - gram_norms(vs) / m.ref_norms[1]).pow(2).sum()
    assert m.fs_reg > 0
    torch.testing.assert_close(m.fs_reg, expected)


def test_official_trainables_and_untrained_ratios(tiny):
    m = _model(tiny)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(names) == 3 * 2 + 12  # 3J + 12 tensors: MaPLe's set and two calibrators (LN + 2 Linear)
    assert sum("adapter" in n for n in names) == 12 and not any("ratio" in n for n in names)
    m.train()
    out = m(torch.randn(2, 3, 32, 32))
    (F.cross_entropy(out, torch.tensor([0, 1])) + m.fs_reg).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert m.ratios() == (0.1, 0.1) and m.text_adapter.ratio.dtype == torch.float64


def test_ratio_update_closed_form_and_float32(tiny):
    m = _model(tiny, text_calib_r=0.05, vis_calib_r=0.15)
    with torch.no_grad():
        _, deep, _, vs = m.prompts()
    deep = [p.detach() for p in deep]
    shift_t = float(sum(torch.linalg.matrix_norm(p.t() @ p) / len(deep) for p in deep))  # absolute, not relative
    shift_v = float(sum(torch.linalg.matrix_norm(p.t() @ p) / len(vs) for p in vs))
    m.raise_ratios(0.02, 0.005)
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    assert m.ratios() == pytest.approx((f32(0.05 + 0.02 * shift_t), f32(0.15 + 0.005 * shift_v)), rel=1e-6)
    assert m.ratios()[0] == f32(m.ratios()[0])  # stored float32-rounded, as the reference's new Parameter
    m.text_adapter.half()  # (the adapter only: the tiny CLIP is the module's shared fixture)
    assert m.text_adapter.ratio.dtype == torch.float64  # a half() cast does not round the ratio


@pytest.mark.parametrize("epochs,raised_after", [(10, 3), (3, 1), (1, 0)])
def test_ratio_update_runs_once_after_epoch_epochs_div_3(epochs, raised_after):
    calls = []
    fake = SimpleNamespace(
        cfg=RESTOREConfig(), train_epochs=epochs, scheduler=SimpleNamespace(last_epoch=0),
        model=SimpleNamespace(raise_ratios=lambda *a: calls.append(a)),
    )  # fmt: skip
    for e in range(epochs):
        fake.scheduler.last_epoch = e + 1  # epoch_end runs after the schedule step
        RESTORE.epoch_end(fake)
        assert len(calls) == (1 if e >= raised_after else 0)
    assert calls == [(0.02, 0.005)]
    off = SimpleNamespace(**{**vars(fake), "cfg": RESTOREConfig(ratio_update=False)})
    RESTORE.epoch_end(off)
    assert len(calls) == 1


def test_learn_ratios_switch_trains_them(tiny):
    m = _model(tiny, learn_ratios=True).train()
    out = m(torch.randn(2, 3, 32, 32))
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad != 0 for p in m.learned_ratios.values())
    m.raise_ratios(0.02, 0.005)
    assert m.ratios() == (m.text_adapter.r, m.visual_adapter.r)


def test_fp16_init_and_its_switch(tiny):
    on, off = _model(tiny), _model(tiny, fp16_init=False)
    for m, rounded in ((on, True), (off, False)):
        for mod in (m.coupling.proj, m.text_adapter, m.visual_adapter):
            w = mod.weight if hasattr(mod, "weight") else mod.module.FFN[0].weight
            assert torch.equal(w, w.half().float()) is rounded
    assert not torch.equal(on.coupling.deep[0].weight, on.coupling.deep[0].weight.half().float())  # deep maps: fp32


def test_tpt_tunes_a_trained_restore_model(tiny):
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    m = _model(tiny)
    views = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tuner = PromptTuner.from_prompted(m, TPTConfig(selection_p=0.25))
    assert tuner.prompted is m
    with torch.no_grad():
        before = m(views[:, 0])
    tuned = tuner.predict_many(views)
    assert tuned.shape == before.shape and not torch.allclose(tuned, before)


def test_class_incremental_stream(tiny):
    model, tok = tiny
    train, test = cc.digits(20, 20)
    bench = cc.class_incremental(train, test)
    strategy = STRATEGIES.get("restore").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), depth=2, epochs=1, batch_size=8, prec="fp32",
        evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    strategy.train(bench.train_stream[0])
    assert strategy.model.text.n_classes == 5 and strategy.seen == [0, 1, 2, 3, 4]
    strategy.train(bench.train_stream[1])
    assert strategy.model.text.n_classes == 10


def test_base_to_new_end_to_end(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    cfg = load_config("configs/smoke/restore_digits.yaml", [f"log.out_dir={tmp_path}", "log.plot=false"])
    summary = run(cfg, verbose=False)["summary"]
    assert {"base_acc", "new_acc", "hm"} <= set(summary)
    b, n = summary["base_acc"], summary["new_acc"]
    assert summary["hm"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
