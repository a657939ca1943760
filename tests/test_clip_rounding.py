"""Issue 20: the official fp16 rounding of inserted prompts (text and vision, MaPLe and PromptSRC) and of PromptSRC's
teacher embeddings, the switch that turns it off, and the plain per-class 77-token path."""

from __future__ import annotations

import torch
from ctta.strategies.maple import MaPLeConfig, MaPLeModel
from ctta.strategies.promptsrc import PromptSRCConfig, PromptSRCModel

from ctta.clip_prompting import FrozenCLIPTeacher, PromptedText
from ctta.clip_prompting.text import context_init

NAMES = ["dog", "cat", "golden retriever", "airplane_jet", "x"]


def _text_loop(model, tok, ctx, deep, round_prompts):
    """Straightforward 77-token text with MaPLe's layout: ``.half()`` on each inserted deep prompt when rounding."""
    tokens = tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    x = model.token_embedding(tokens)
    x[:, 1:3] = ctx
    x = x + model.positional_embedding
    for i, blk in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1].expand(len(NAMES), -1, -1)
            x = torch.cat([x[:, :1], p.half().float() if round_prompts else p, x[:, 3:]], dim=1)
        x = blk(x, attn_mask=model.attn_mask)
    return model.ln_final(x)[torch.arange(len(NAMES)), tokens.argmax(-1)] @ model.text_projection


def _vision_loop(model, images, p0, deep, round_prompts):
    v, b = model.visual, images.shape[0]
    r = (lambda p: p.half().float()) if round_prompts else (lambda p: p)
    t = v.conv1(images).flatten(2).transpose(1, 2)
    t = torch.cat([v.class_embedding.expand(b, 1, -1), t], 1) + v.positional_embedding
    t = v.ln_pre(torch.cat([t, r(p0.expand(b, -1, -1))], 1))
    for i, blk in enumerate(v.transformer.resblocks):
        if 1 <= i <= len(deep):
            t = torch.cat([t[:, : -p0.shape[0]], r(deep[i - 1].expand(b, -1, -1))], 1)
        t = blk(t)
    return v.ln_post(t[:, 0]) @ v.proj


def _scaled(model, f, g):
    f, g = f / f.norm(dim=-1, keepdim=True), g / g.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * f @ g.t()


def test_maple_forward_equals_half_rounded_recomputation(tiny):
    model, tok = tiny
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for rounding in (True, False):
        torch.manual_seed(0)
        maple = MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2, round_prompts=rounding))
        with torch.no_grad():
            maple.deep_text[0].mul_(37.0)  # values with many mantissa bits, so rounding shows
            ctx, deep, v0, vs = maple.prompts()
            f, g = _vision_loop(model, images, v0, vs, rounding), _text_loop(model, tok, ctx, deep, rounding)
            ref = _scaled(model, f, g)
            torch.testing.assert_close(maple(images), ref, atol=2e-5, rtol=1e-5)
            f, g = _vision_loop(model, images, v0, vs, not rounding), _text_loop(model, tok, ctx, deep, not rounding)
            other = _scaled(model, f, g)
            assert (maple(images) - other).abs().max() > 1e-5  # the two settings really differ


def test_promptsrc_forward_and_teacher_equal_rounded_computation(tiny):
    model, tok = tiny
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = PromptSRCConfig(n_ctx_text=2, ctx_init="a photo of a", depth_text=2, depth_vision=2, teacher_templates="hand")
    torch.manual_seed(0)
    src = PromptSRCModel(model, tok, NAMES, cfg).eval()
    with torch.no_grad():
        for p in (src.vpt, src.deep_vision[0], src.deep_text[0]):
            p.mul_(41.0)
        f = _vision_loop(model, images, src.vpt, list(src.deep_vision), True)
        # PromptSRC's text keeps "a photo" as soft tokens then "of a" hard: the same layout as MaPLe's
        g = _text_loop(model, tok, src.ctx, list(src.deep_text), True)
        torch.testing.assert_close(src(images), _scaled(model, f, g), atol=2e-5, rtol=1e-5)
        teacher = src.teacher
        plain = model.encode_text(tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])).float()
        assert torch.equal(teacher.text_features, plain.half().float())
        z = model.encode_image(images).float()
        torch.testing.assert_close(teacher.logits(z), _scaled(model, z, plain.half().float()))
        off = FrozenCLIPTeacher(model, tok, NAMES, round_embeddings=False)
        assert torch.equal(off.text_features, plain)


def test_rounding_off_reproduces_the_unrounded_computation(tiny):
    model, tok = tiny
    layout, ctx = context_init(model, tok, "a photo of a", 2)
    deep = [torch.randn(2, ctx.shape[1], generator=torch.Generator().manual_seed(3)) * 29]
    off = PromptedText(model, tok, NAMES, layout, round_prompts=False)
    on = PromptedText(model, tok, NAMES, layout)
    with torch.no_grad():
        torch.testing.assert_close(off(ctx, deep), _text_loop(model, tok, ctx, deep, False), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(on(ctx, deep), _text_loop(model, tok, ctx, deep, True), atol=2e-5, rtol=1e-5)
        assert torch.equal(on(ctx), off(ctx))  # no deep prompts: nothing is rounded (the input context escapes it)


def test_77_token_path_is_per_class_and_equals_the_default(tiny):
    model, tok = tiny
    layout, ctx = context_init(model, tok, "a photo of a", 2)
    deep = [torch.randn(2, ctx.shape[1], generator=torch.Generator().manual_seed(4))]
    full = PromptedText(model, tok, NAMES, layout, truncate=False)
    fast = PromptedText(model, tok, NAMES, layout)
    assert not full.shared_ok and full.tokens_encoded == 77 * len(NAMES) and fast.shared_ok
    with torch.no_grad():
        torch.testing.assert_close(full(ctx, deep), fast(ctx, deep), atol=2e-5, rtol=1e-5)


def test_random_initialisations_take_a_seed(tiny):
    from ctta.strategies.atprompt import ATPMaPLe, ATPMaPLeConfig
    from ctta.strategies.cocoop import CoCoOp, CoCoOpConfig
    from ctta.strategies.coop import CoOp, CoOpConfig
    from ctta.strategies.maple import MaPLe

    model, tok = tiny
    cases = [
        (CoOp, CoOpConfig(ctx_init="", n_ctx=3, csc=True)),
        (CoCoOp, CoCoOpConfig(ctx_init="", n_ctx=2)),
        (MaPLe, MaPLeConfig(depth=2)),
        (ATPMaPLe, ATPMaPLeConfig(depth=2)),
    ]
    for strategy, cfg in cases:
        states = []
        for global_seed, seed in ((0, 5), (1, 5), (0, 6)):
            torch.manual_seed(global_seed)
            m = strategy.build_prompted(model, tok, NAMES, type(cfg)(**{**cfg.__dict__, "init_seed": seed}))
            states.append({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        assert states[0].keys() == states[1].keys()
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), strategy.__name__  # the seed decides
        assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0]), strategy.__name__
