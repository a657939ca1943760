"""GLAD (unofficial, from the paper arXiv 2507.13089): the LoRA weight update, SAM's ascent step and the steered
gradient in closed form, one strategy step against a hand computation, what trains, the caller's CLIP left plain,
the ViT-B/16 parameter count, base-to-new end to end."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.glad import GLADConfig, GLADModel, LoRADelta, sam_perturbation, steer_gradient

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])


def test_lora_delta_closed_form():
    d = LoRADelta(6, 4, rank=2, alpha=1.0, blocks=3, generator=torch.Generator().manual_seed(0))
    assert d.A.shape == (3, 2, 4) and d.B.shape == (3, 2, 2) and not d.B.any()  # B = 0: starts at the plain weight
    assert float(d.A.detach().abs().max()) <= 0.5  # Kaiming-uniform(a=sqrt 5) bound 1 / sqrt(d_in)
    with torch.no_grad():
        d.B.copy_(torch.arange(12.0).view(3, 2, 2))
    w = torch.randn(6, 4)
    want = torch.cat([d.B[i] @ d.A[i] for i in range(3)]) * 0.5  # alpha / r = 1 / 2
    torch.testing.assert_close(d(w), w + want)


def test_forward_equals_clip_with_the_merged_weights(tiny):
    model, tok = tiny
    m = GLADModel(model, tok, NAMES, GLADConfig(targets="qkvo", rank=1))
    assert len(m.lora) == 2 * (len(model.visual.transformer.resblocks) + len(model.transformer.resblocks))
    with torch.no_grad():
        for d in m.lora:
            d.B.normal_(std=0.05)
        explicit = copy.deepcopy(model)
        for name, d in zip(m.lora_names, m.lora):
            explicit.get_parameter(name.removeprefix("clip.")).add_(d.delta())
        x = torch.randn(2, 3, 32, 32)
        f = explicit.encode_image(x)
        g = explicit.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
        torch.testing.assert_close(m(x), m.logits(f, g), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        GLADModel(model, tok, NAMES, GLADConfig(targets="mlp"))


def test_sam_perturbation_and_steering_closed_form():
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    e = sam_perturbation(g, 0.5)  # ||g|| = 5 over both tensors
    torch.testing.assert_close(e[0], torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(e[1], torch.tensor([[0.4]]))
    assert all(not x.any() for x in sam_perturbation([torch.zeros(3)], 0.5))  # zero gradient: no step, no NaN
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])
    torch.testing.assert_close(steer_gradient(a, b, 0.25), torch.tensor([1.5, -1.0]))
    torch.testing.assert_close(steer_gradient(a, b, 0.0), a)
    torch.testing.assert_close(steer_gradient(a, b, 1.0), b)


def _strategy(model, tok, **kw):
    return STRATEGIES.get("glad").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, momentum=0.0, weight_decay=0.0, evaluator=EvaluationPlugin(loggers=[]), **kw,
    )  # fmt: skip


def _grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.lora.parameters()]


def test_one_step_uses_the_steered_gradient(tiny):
    model, tok = tiny
    strategy = _strategy(model, tok, rho=0.1, beta=0.5, init_seed=0)
    m = strategy.model
    with torch.no_grad():
        for d in m.lora:
            d.B.normal_(std=0.05)  # away from B = 0 so every LoRA tensor has a gradient
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    theta = [p.detach().clone() for p in m.lora.parameters()]
    g = _grads(m, x, y)
    e = sam_perturbation(g, 0.1)
    with torch.no_grad():
        for p, d in zip(m.lora.parameters(), e):
            p.add_(d)
    g_sam = _grads(m, x, y)
    with torch.no_grad():
        for p, t in zip(m.lora.parameters(), theta):
            p.copy_(t)
    want = [t - 0.05 * steer_gradient(a, b, 0.5) for t, a, b in zip(theta, g, g_sam)]
    strategy.model.train()
    strategy.make_optimizer()
    strategy.mbatch = [x, y, torch.zeros(8, dtype=torch.long)]
    strategy._unpack_minibatch()
    strategy.sgd_update()
    for p, w in zip(m.lora.parameters(), want):
        torch.testing.assert_close(p.detach(), w, atol=1e-6, rtol=1e-5)


def test_only_lora_trains_and_the_callers_clip_stays_plain(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok)
    trainable = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("lora.") and n.split(".")[-1] in ("A", "B") for n in trainable)
    n_layers = len(model.visual.transformer.resblocks) + len(model.transformer.resblocks)
    assert len(strategy.model.lora) == n_layers  # q, k, v of every block of both towers
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed and all(k.split(".")[-1] in ("A", "B") for k in changed)
    assert any(m is model for m in strategy.model.modules())  # the caller's CLIP, wrapped, not copied
    assert set(model.state_dict()) == set(before)  # and it holds no LoRA module
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_starts_at_zero_shot_clip(tiny):
    model, tok = tiny
    m = GLADModel(model, tok, NAMES, GLADConfig())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = model.encode_image(x)
        g = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
        torch.testing.assert_close(m(x), m.logits(f, g), atol=1e-5, rtol=1e-5)


def test_vit_b16_trainable_parameter_count():
    """No published count; r = 2 on q, k, v: 12 x 3 x 2 x (768 + 768) + 12 x 3 x 2 x (512 + 512); with o: 245,760."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)

    def n(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    assert n(GLADModel(model, tok, NAMES, GLADConfig())) == 184_320
    assert n(GLADModel(model, tok, NAMES, GLADConfig(targets="qkvo"))) == 245_760


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("glad_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
