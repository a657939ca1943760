"""CoOp and CoCoOp: zero-shot initialisation, class-specific context, per-image context, class-name swaps."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.cocoop import CoCoOpConfig, CoCoOpModel
from ctta.strategies.coop import CoOpConfig, CoOpModel

NAMES = ["cat", "dog", "sea lion", "airplane"]


def test_coop_initial_context_is_zero_shot_clip(tiny):
    model, tok = tiny
    m = CoOpModel(model, tok, NAMES, CoOpConfig())
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
        torch.testing.assert_close(m.text_features(), ref, atol=1e-5, rtol=1e-5)
        x = torch.randn(2, 3, 32, 32)
        f = model.encode_image(x)
        want = (
            model.logit_scale.exp()
            * torch.nn.functional.normalize(f, dim=-1)
            @ torch.nn.functional.normalize(ref, dim=-1).t()
        )
        torch.testing.assert_close(m(x), want, atol=1e-4, rtol=1e-4)


def test_coop_class_specific_context(tiny):
    model, tok = tiny
    m = CoOpModel(model, tok, NAMES, CoOpConfig(ctx_init="", n_ctx=3, csc=True, class_token_position="middle"))
    assert m.ctx.shape == (4, 3, model.token_embedding.embedding_dim)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="class-specific"):
        m.set_classnames(NAMES[:2])
    with pytest.raises(ValueError, match="csc=True"):
        CoOpModel(model, tok, NAMES, CoOpConfig(csc=True))


def test_new_classes_keep_the_context(tiny):
    model, tok = tiny
    m = CoOpModel(model, tok, NAMES, CoOpConfig())
    with torch.no_grad():
        m.ctx.add_(0.1)
    ctx = m.ctx.detach().clone()
    m.set_classnames(["truck", "ship", "frog"])
    assert torch.equal(m.ctx, ctx) and m(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_cocoop_per_image_context_equals_loop(tiny):
    """One batched per-image text encoding equals encoding each image's context separately (reference loop)."""
    model, tok = tiny
    torch.manual_seed(0)
    m = CoCoOpModel(model, tok, NAMES, CoCoOpConfig())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        rows = []
        for i in range(3):
            g = m.text(m.ctx + m.meta_net(f[i : i + 1]), normalize=True)  # (C, E)
            rows.append(model.logit_scale.exp() * f[i] @ g.t())
        torch.testing.assert_close(out, torch.stack(rows), atol=1e-4, rtol=1e-4)
