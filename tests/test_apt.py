"""APT (unofficial on CLIP, from the paper and the reference's ViLT/METER module): the approximated-prompt module in
closed form, the hooked image tower against a hand-written block loop, hooks that never outlive a forward, what
trains, base-to-new, the ViT-B/16 parameter count."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.apt import ApproximatedPrompt, APTConfig, APTModel

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])


def test_module_closed_form():
    m = ApproximatedPrompt(2, memory=2, rank=1)
    with torch.no_grad():
        m.tokens.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        m.down.copy_(torch.tensor([[1.0, 1.0]]))  # mm(M) = up @ down @ M^T rows: [1, 2] -> up * [1, 2]
        m.up.copy_(torch.tensor([[0.5], [0.0]]))
        m.scale.fill_(0.1)
    a, q = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.0, -1.0]])
    keys = torch.tensor([[1.5, 0.0], [1.0, 2.0]])  # M + mm(M): row0 + 0.5*[1,0], row1 + 0.5*2*[1,0]
    attn = F.relu(q @ keys.t())  # [1.5, 0] -> ReLU
    assert torch.equal(attn, torch.tensor([[1.5, 0.0]]))
    want = (a + (attn @ m.tokens.detach()) * 1.5) * torch.exp(torch.tensor(0.1))
    torch.testing.assert_close(m(a, q), want)
    fresh = ApproximatedPrompt(8, memory=5, rank=2)
    assert torch.equal(fresh.up, torch.zeros(8, 2)) and fresh.scale.item() == 0.0
    assert 0.005 < float(fresh.tokens.detach().std()) < 0.04 and 0.5 < float(fresh.down.detach().std()) < 1.6


def test_max_weight_is_detached():
    m = ApproximatedPrompt(3, memory=4, rank=2)
    a, q = torch.zeros(1, 3), torch.randn(1, 3, requires_grad=True)
    m(a, q).sum().backward()
    keys = (m.tokens + F.linear(F.linear(m.tokens, m.down), m.up)).detach()
    attn = F.relu(q.detach() @ keys.t())
    w = attn.max(-1, keepdim=True).values
    mask = (attn > 0).float()
    want = (mask * (m.tokens.detach().sum(-1) * w)) @ keys  # d/dq of sum((A M) * w) with w constant
    torch.testing.assert_close(q.grad, want)


def _reference_image_features(model, apt, x):
    """The image tower block by block with the side module applied to each attention output."""
    v = model.visual
    h = v.conv1(x).flatten(2).permute(0, 2, 1)
    h = torch.cat([v.class_embedding.expand(h.shape[0], 1, -1), h], 1) + v.positional_embedding
    h = v.ln_pre(h)
    for i, blk in enumerate(v.transformer.resblocks):
        q = blk.ln_1(h)
        a = blk.attn(q, q, q, need_weights=False)[0]
        h = h + blk.ls_1(apt.blocks[i](a, q) if i < len(apt.blocks) else a)
        h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
    pooled, _ = v._pool(h)
    return pooled @ v.proj


def test_hooked_tower_matches_the_block_loop_and_hooks_are_removed(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    apt = APTModel(model, tok, NAMES, APTConfig(memory=6, rank=2, depth=1), generator=g).eval()
    with torch.no_grad():
        for b in apt.blocks:
            b.up.normal_(0, 0.5, generator=g)
            b.tokens.mul_(20)
            b.scale.fill_(0.2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.visual(x)
        f = _reference_image_features(model, apt, x)
        assert not torch.allclose(f, plain, atol=1e-3)  # the side module changes the features
        t = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
        want = model.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t()
        torch.testing.assert_close(apt(x), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.visual(x), plain)  # no hook left on the shared CLIP
    assert all(not b.attn._forward_hooks for b in model.visual.transformer.resblocks)


def test_only_the_side_modules_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = STRATEGIES.get("apt").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, memory=8, rank=2, evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    trainable = {n.split(".")[-1] for n, p in strategy.model.named_parameters() if p.requires_grad}
    assert trainable == {"tokens", "down", "up", "scale"}
    assert all(n.startswith("blocks.") for n, p in strategy.model.named_parameters() if p.requires_grad)
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed and all(k.startswith("blocks.") for k in changed)
    assert any(k.endswith(".up") for k in changed)  # the zero-initialised map leaves zero


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("apt_digits", tmp_path))
    assert (tmp_path / "results.json").exists()


def test_trainable_parameter_count_vitb16():
    """12 x (200 x 768 + 2 x 768 x 4 + 1) (no published CLIP count)."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = APTModel(model, tok, ["cat", "dog"], APTConfig())
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 1_916_940
