"""The one prompted CLIP text tower, ``PromptedText``: every exactness argument of its docstring checked against the
straightforward computation (open_clip's ``encode_text``, the 77-token path, a loop over open_clip's blocks):
truncation, length buckets, shared prefix, layouts and deep prompts, for CoOp-family prompts and TPT's tuned
context (``TunedContext``, the same class underneath)."""

from __future__ import annotations

import pytest
import torch

from ctta.clip_prompting import PromptedText
from ctta.clip_prompting.episode_model import TunedContext
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.tower import bucket_plan

NAMES = ["dog", "cat", "golden retriever", "airplane_jet", "sea lion (animal)", "x"]
TPT_NAMES = [
    "dog",
    "cat",
    "great white shark",
    "golden retriever puppy with a hat",
    "Annual_Crop Land",
    "tree",
    "2012 Rolls-Royce Phantom Drophead Coupe Convertible",
]


def _ref_text(model, tok, texts):
    with torch.no_grad():
        return model.encode_text(tok(texts))


def _reference(model, tok, names, prefix="a photo of a"):
    return model.encode_text(tok([f"{prefix} {n.replace('_', ' ')}." for n in names]))


def _ctx(model, tok, names=None, **kw):
    """TPT's tuned context ("a photo of a") over ``PromptedText``."""
    return TunedContext.from_words(model, tok, names or TPT_NAMES, "a photo of a", 0, **kw)


def test_no_prompts_equal_open_clip(tiny):
    model, tok = tiny
    ref = _ref_text(model, tok, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    hard = PromptedText(model, tok, NAMES, ["a photo of a"])
    torch.testing.assert_close(hard(None), ref, atol=1e-5, rtol=1e-5)
    for n_ctx in (4, 2):  # CoOp (4 words) and MaPLe (2 context tokens, "of a" stays hard text)
        layout, ctx0 = context_init(model, tok, "a photo of a", n_ctx)
        for shared in (True, False):
            t = PromptedText(model, tok, NAMES, layout, shared_prefix=shared)
            torch.testing.assert_close(t(ctx0), ref, atol=1e-5, rtol=1e-5)
    assert context_init(model, tok, "a photo of a", 2)[0] == [2, "of a"]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_truncation_and_shared_prefix_equal_77_token_path(tiny, position):
    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    d = model.token_embedding.embedding_dim
    full = PromptedText(model, tok, NAMES, [4], position=position, truncate=False, shared_prefix=False)
    assert full.plan[0][1] == 77
    ctx = torch.randn(4, d, generator=g) * 0.1
    csc = torch.randn(len(NAMES), 4, d, generator=g) * 0.1
    per_image = torch.randn(3, 1, 4, d, generator=g) * 0.1
    deep = [torch.randn(4, d, generator=g) * 0.1] if position == "end" else []
    for shared in (True, False):
        fast = PromptedText(model, tok, NAMES, [4], position=position, shared_prefix=shared)
        assert fast.tokens_encoded < full.tokens_encoded
        for soft in (ctx, csc, per_image):
            torch.testing.assert_close(fast(soft, deep), full(soft, deep), atol=2e-5, rtol=1e-5)


def test_deep_text_prompts_replace_context_states(tiny):
    """Deep prompts at layer 1 against a straightforward loop over open_clip's blocks (77 tokens)."""
    model, tok = tiny
    g = torch.Generator().manual_seed(2)
    d = model.token_embedding.embedding_dim
    layout, ctx = context_init(model, tok, "a photo of a", 2)
    p1 = torch.randn(2, d, generator=g)
    t = PromptedText(model, tok, NAMES, layout, round_prompts=False)  # rounding: tests/test_clip_rounding.py
    tokens = tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    with torch.no_grad():
        x = model.token_embedding(tokens)
        x[:, 1:3] = ctx
        x = x + model.positional_embedding
        for i, blk in enumerate(model.transformer.resblocks):
            if i == 1:
                x = torch.cat([x[:, :1], p1.expand(len(NAMES), -1, -1), x[:, 3:]], dim=1)
            x = blk(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(len(NAMES)), tokens.argmax(-1)] @ model.text_projection
        torch.testing.assert_close(t(ctx, [p1]), x, atol=2e-5, rtol=1e-5)


def test_middle_and_front_token_order(tiny):
    model, tok = tiny
    x = tok.encode("X")[0]
    name = tok.encode("golden retriever")
    mid = PromptedText(model, tok, ["golden retriever"], [4], position="middle")
    front = PromptedText(model, tok, ["golden retriever"], [4], position="front")
    sos, dot, eot = tok.sot_token_id, tok.encode(".")[0], tok.eot_token_id
    assert mid.tokens[0, :9].tolist() == [sos, x, x, *name, x, x, dot, eot]
    assert front.tokens[0, :9].tolist() == [sos, *name, x, x, x, x, dot, eot]
    assert mid.soft_pos[0].tolist() == [1, 2, 5, 6] and front.soft_pos[0].tolist() == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="single soft block"):
        PromptedText(model, tok, NAMES, [2, "of a"], position="middle")


def test_attribute_layout_positions(tiny):
    """ATPrompt-style layout: soft blocks between hard attribute words; deep prompts replace the last block."""
    model, tok = tiny
    t = PromptedText(model, tok, NAMES, [2, "color", 2, "shape", 3])
    assert t.n_soft == 7 and t.blocks == [(0, 2), (2, 2), (4, 3)]
    assert t.soft_pos[0].tolist() == [1, 2, 4, 5, 7, 8, 9]
    assert t._deep_slice() == (7, 10)
    d = model.token_embedding.embedding_dim
    soft, deep = torch.randn(7, d), [torch.randn(3, d)]
    full = PromptedText(model, tok, NAMES, [2, "color", 2, "shape", 3], truncate=False, shared_prefix=False)
    torch.testing.assert_close(t(soft, deep), full(soft, deep), atol=2e-5, rtol=1e-5)


def test_gradients_reach_prompts_only(tiny):
    model, tok = tiny
    layout, ctx0 = context_init(model, tok, "a photo of a", 2)
    ctx = ctx0.clone().requires_grad_(True)
    deep = [torch.zeros(2, ctx.shape[1], requires_grad=True)]
    t = PromptedText(model, tok, NAMES, layout)
    t(ctx, deep).sum().backward()
    assert ctx.grad.abs().sum() > 0 and deep[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "truncate,bucket,shared", [(False, False, False), (True, False, False), (True, True, False), (True, True, True)]
)
def test_prompted_encoder_equals_encode_text(tiny, truncate, bucket, shared):
    model, tok = tiny
    enc = _ctx(model, tok, truncate=truncate, n_buckets=4 if bucket else 1, shared_prefix=shared)
    assert enc.encoder.shared_ok == shared
    with torch.no_grad():
        assert torch.allclose(enc(), _reference(model, tok, TPT_NAMES), atol=1e-5, rtol=0)
    if truncate:
        assert max(length for _, length in enc.encoder.plan) == int(enc.encoder.eot.max()) + 1 < 77
    else:
        assert [length for _, length in enc.encoder.plan] == [77]


def test_initial_context_is_the_phrase_embedding(tiny):
    model, tok = tiny
    enc = TunedContext.from_words(model, tok, TPT_NAMES, "a_photo of  a", 0)
    emb = model.token_embedding(tok(["a photo of a"]))[0, 1:5]
    assert enc.ctx.shape[0] == 4 and torch.equal(enc.ctx.detach(), emb) and torch.equal(enc.ctx0, emb)
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["ctx"]
    rnd = TunedContext.from_words(model, tok, TPT_NAMES, "", 3, generator=torch.Generator().manual_seed(0))
    assert rnd.ctx.shape == (3, model.token_embedding.embedding_dim) and rnd.encoder.layout == [3]


def test_truncation_and_buckets_are_exact_for_gradients(tiny):
    model, tok = tiny
    full = _ctx(model, tok, truncate=False, shared_prefix=False)
    fast = _ctx(model, tok, n_buckets=3, shared_prefix=False)
    shared = _ctx(model, tok, n_buckets=3)
    w = torch.randn(len(TPT_NAMES), full().shape[-1])
    grads = []
    for enc in (full, fast, shared):
        ctx = enc.ctx0 + 0.01 * torch.randn(enc.ctx0.shape, generator=torch.Generator().manual_seed(1))
        ctx = ctx.requires_grad_(True)
        (enc(ctx, normalize=True) * w).sum().backward()
        grads.append(ctx.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert torch.allclose(grads[0], grads[2], atol=1e-5, rtol=1e-4)
    assert fast.tokens_encoded < full.tokens_encoded


def test_stacked_and_per_class_contexts(tiny):
    model, tok = tiny
    enc = _ctx(model, tok, shared_prefix=False)
    shared = _ctx(model, tok)
    ctxs = enc.ctx0 + 0.05 * torch.randn(3, *enc.ctx0.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stacked = enc(ctxs)  # (S, C, E)
        assert stacked.shape == (3, len(TPT_NAMES), enc().shape[-1])
        assert torch.allclose(shared(ctxs), stacked, atol=1e-5, rtol=0)
        for s in range(3):
            assert torch.allclose(stacked[s], enc(ctxs[s]), atol=1e-5, rtol=0)
        per_class = enc(ctxs[:1].expand(len(TPT_NAMES), -1, -1), per_class=True)
        assert torch.allclose(per_class, stacked[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="ctx must end with shape"):
        enc(torch.zeros(2, 5, 7))


def test_bucket_plan_covers_every_class_once_and_minimises_tokens():
    eot = [8] * 50 + [9] * 30 + [12] * 10 + [17] * 10 + [5]
    plan = bucket_plan(eot, 4)
    assert sorted(c for idx, _ in plan for c in idx) == list(range(len(eot)))
    assert all(length == max(eot[c] for c in idx) + 1 for idx, length in plan)
    assert len(plan) <= 4
    tokens = sum(len(idx) * length for idx, length in plan)
    assert tokens == 51 * 9 + 30 * 10 + 10 * 13 + 10 * 18  # 5 lengths into 4 buckets: the 6 joins the 9s
    assert bucket_plan(eot, 1) == [(sorted(range(len(eot)), key=lambda c: eot[c]), 18)]
    assert bucket_plan(eot, 4, context_length=77) == [(list(range(len(eot))), 77)]


def test_set_classnames_rebuilds_prompts(tiny):
    model, tok = tiny
    enc = _ctx(model, tok)
    enc.set_classnames(["zero", "one", "two"])
    with torch.no_grad():
        assert torch.allclose(enc(), _reference(model, tok, ["zero", "one", "two"]), atol=1e-5, rtol=0)
