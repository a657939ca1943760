"""MaPLe: zero-shot text at depth 1, coupled vision prompts, deep prompts reach both towers, gradients."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.maple import MaPLeConfig, MaPLeModel

from ctta.clip_prompting import encode_image

NAMES = ["cat", "dog", "sea lion", "airplane"]


def test_text_starts_as_zero_shot_prompt(tiny):
    model, tok = tiny
    m = MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=1))
    assert m.text.layout == [2, "of a"] and len(m.deep_text) == 0
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
        torch.testing.assert_close(m.text(m.ctx), ref, atol=1e-5, rtol=1e-5)


def test_forward_is_the_coupled_two_tower_model(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    m = MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        deep = list(m.deep_text)
        v0 = m.coupling.proj(m.ctx)
        v1 = m.coupling.deep[0](deep[0])
        g = m.text(m.ctx, deep)
        f = encode_image(model, x, v0, [v1])
        torch.testing.assert_close(m(x), m.logits(f, g))
        assert not torch.allclose(f, model.encode_image(x))


def test_gradients_reach_every_prompt_and_map(tiny):
    model, tok = tiny
    m = MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2))
    m(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="depth"):
        MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=3))
