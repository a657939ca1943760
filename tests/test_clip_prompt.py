"""The CLIP prompt-learner core: exactness against open_clip and the 77-token path, layouts, couplers, teacher,
schedule, Gaussian averaging, base/new metric."""

from __future__ import annotations

import math

import pytest
import torch

from ctta.clip_prompting import (
    FrozenCLIPTeacher,
    GaussianEpochAverage,
    MaPLeCoupling,
    MetaNet,
    PromptedText,
    encode_image,
    encode_words,
    epoch_lr,
    gaussian_epoch_weights,
    make_sgd,
    warmup_cosine,
)
from ctta.clip_prompting.metrics import harmonic_mean
from ctta.clip_prompting.text import context_init

NAMES = ["dog", "cat", "golden retriever", "airplane_jet", "sea lion (animal)", "x"]


def _ref_text(model, tok, texts):
    with torch.no_grad():
        return model.encode_text(tok(texts))


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


def test_image_tower_without_prompts_equals_open_clip(tiny):
    model, _ = tiny
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
        width = model.visual.class_embedding.shape[-1]
        torch.testing.assert_close(encode_image(model, x), ref)
        torch.testing.assert_close(encode_image(model, x, torch.zeros(0, width)), ref, atol=1e-5, rtol=1e-5)


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
    t = PromptedText(model, tok, NAMES, layout)
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


def test_vision_prompts_against_straightforward_loop(tiny):
    model, _ = tiny
    v = model.visual
    g = torch.Generator().manual_seed(3)
    w = v.class_embedding.shape[-1]
    x = torch.randn(2, 3, 32, 32, generator=g)
    p0, p1 = torch.randn(3, w, generator=g), torch.randn(3, w, generator=g)
    with torch.no_grad():
        t = v.conv1(x).flatten(2).transpose(1, 2)
        t = torch.cat([v.class_embedding.expand(2, 1, -1), t], 1) + v.positional_embedding
        t = v.ln_pre(torch.cat([t, p0.expand(2, -1, -1)], 1))
        for i, blk in enumerate(v.transformer.resblocks):
            if i == 1:
                t = torch.cat([t[:, :-3], p1.expand(2, -1, -1)], 1)
            t = blk(t)
        ref = v.ln_post(t[:, 0]) @ v.proj
        torch.testing.assert_close(encode_image(model, x, p0, [p1]), ref, atol=1e-5, rtol=1e-5)


def test_gradients_reach_prompts_only(tiny):
    model, tok = tiny
    layout, ctx0 = context_init(model, tok, "a photo of a", 2)
    ctx = ctx0.clone().requires_grad_(True)
    deep = [torch.zeros(2, ctx.shape[1], requires_grad=True)]
    t = PromptedText(model, tok, NAMES, layout)
    t(ctx, deep).sum().backward()
    assert ctx.grad.abs().sum() > 0 and deep[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_couplers():
    torch.manual_seed(0)
    c = MaPLeCoupling(8, 12, depth=3)
    assert len(c.deep) == 2 and torch.equal(c.deep[0].weight, c.deep[1].weight)
    v0, vs = c(torch.randn(2, 8), [torch.randn(2, 8), torch.randn(2, 8)])
    assert v0.shape == (2, 12) and [v.shape for v in vs] == [(2, 12), (2, 12)]
    m = MetaNet(512, 512)
    assert sum(p.numel() for p in m.parameters()) == 512 * 32 + 32 + 32 * 512 + 512


def test_teacher_template_mean(tiny):
    model, tok = tiny
    templates = ("a photo of a {}.", "a sketch of the {}.")
    teacher = FrozenCLIPTeacher(model, tok, NAMES[:3], templates)
    names = [n.replace("_", " ") for n in NAMES[:3]]
    ref = torch.stack([_ref_text(model, tok, [t.format(n) for n in names]) for t in templates]).mean(0)
    torch.testing.assert_close(teacher.text_features, ref)
    f = torch.randn(2, ref.shape[1])
    want = model.logit_scale.exp() * (f / f.norm(dim=-1, keepdim=True)) @ (ref / ref.norm(dim=-1, keepdim=True)).t()
    torch.testing.assert_close(teacher.logits(f), want)
    assert not list(teacher.parameters())


def test_schedule_matches_dassl_recurrence():
    """Closed form vs the constant warm-up epoch followed by a restarted ``CosineAnnealingLR(T_max=E)``."""
    lr, n = 0.002, 5
    got = [epoch_lr(e, lr, n) for e in range(n)]
    assert got[0] == 1e-5 and got[1] == pytest.approx(lr)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)
    ref = [1e-5, lr]
    for _ in range(n - 2):
        opt.step()
        cos.step()
        ref.append(opt.param_groups[0]["lr"])
    assert got == pytest.approx(ref)
    opt2 = make_sgd([torch.nn.Parameter(torch.zeros(1))], lr)
    assert opt2.defaults["momentum"] == 0.9 and opt2.defaults["weight_decay"] == 5e-4
    sched, seen = warmup_cosine(opt2, n), []
    for _ in range(n):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched.step()
    assert seen == pytest.approx(got)


def test_gaussian_epoch_average_closed_form():
    w = gaussian_epoch_weights(20, 15, 1)
    z = sum(math.exp(-0.5 * (e - 15) ** 2) for e in range(1, 21))
    assert w == pytest.approx([math.exp(-0.5 * (e - 15) ** 2) / z for e in range(1, 21)])
    p = torch.nn.Parameter(torch.zeros(2))
    avg = GaussianEpochAverage([("p", p)], 3, mu=2, sigma=1)
    for e in range(3):
        with torch.no_grad():
            p.fill_(e + 1.0)
        avg.epoch_end()
    ws = gaussian_epoch_weights(3, 2, 1)
    assert p.tolist() == pytest.approx([sum(wi * (i + 1) for i, wi in enumerate(ws))] * 2)
    with pytest.raises(RuntimeError):
        avg.epoch_end()


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_encode_words_is_token_embedding(tiny):
    model, tok = tiny
    e = encode_words(model, tok, "a photo")
    torch.testing.assert_close(e, model.token_embedding.weight[tok.encode("a photo")])


def test_prompt_learners_share_the_common_constructor_and_from_config():
    """The family's template is ctta's EpochTemplate (one constructor, from_config and epoch loop)."""
    from ctta.strategies.atprompt import ATPCoOp, ATPMaPLe
    from ctta.strategies.cocoop import CoCoOp
    from ctta.strategies.coop import CoOp
    from ctta.strategies.maple import MaPLe
    from ctta.strategies.pre import PRE
    from ctta.strategies.promptsrc import PromptSRC

    from ctta.clip_prompting.template import PromptLearnerTemplate
    from ctta.templates.base import StrategyBase
    from ctta.templates.epoch import EpochTemplate

    for cls in (CoOp, CoCoOp, MaPLe, PromptSRC, PRE, ATPCoOp, ATPMaPLe):
        assert issubclass(cls, PromptLearnerTemplate) and issubclass(cls, EpochTemplate)
        assert cls.from_config.__func__ is StrategyBase.from_config.__func__
        assert cls.resolve_config(None, {"lr": 0.5}).lr == 0.5
        assert not cls.distributed_ok  # the losses read un-sharded batch tensors
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['foo'\].*'classnames'.*'tokenizer'"):
        CoOp(model=torch.nn.Linear(1, 1), foo=1)
    with pytest.raises(TypeError, match="classnames"):
        CoOp(model=torch.nn.Linear(1, 1), num_classes=3)
    with pytest.raises(ValueError, match="prec="):
        CoOp(model=torch.nn.Linear(1, 1), prec="bf17")
    with pytest.raises(ValueError, match="tokenizer"):
        CoOp(model=torch.nn.Linear(1, 1), classnames=["a"])
    with pytest.raises(ValueError, match="class names"):
        CoOp.benchmark_kwargs(CoOp.default_config(), object())
