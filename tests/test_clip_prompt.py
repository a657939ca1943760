"""The CLIP prompt-learner core besides the text tower (whose exactness tests are in test_clip_prompted_text.py):
the image tower with and without prompts, couplers, teacher, schedule, Gaussian averaging, base/new metric."""

from __future__ import annotations

import math

import pytest
import torch
from ctta.strategies.promptsrc import GaussianEpochAverage, gaussian_epoch_weights

from ctta.clip_prompting import (
    FrozenCLIPTeacher,
    MaPLeCoupling,
    MetaNet,
    encode_image,
    encode_words,
    epoch_lr,
    make_sgd,
    warmup_cosine,
)
from ctta.clip_prompting.metrics import harmonic_mean

NAMES = ["dog", "cat", "golden retriever", "airplane_jet", "sea lion (animal)", "x"]


def _ref_text(model, tok, texts):
    with torch.no_grad():
        return model.encode_text(tok(texts))


def test_image_tower_without_prompts_equals_open_clip(tiny):
    model, _ = tiny
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
        width = model.visual.class_embedding.shape[-1]
        torch.testing.assert_close(encode_image(model, x), ref)
        torch.testing.assert_close(encode_image(model, x, torch.zeros(0, width)), ref, atol=1e-5, rtol=1e-5)


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
        torch.testing.assert_close(encode_image(model, x, p0, [p1], round_prompts=False), ref, atol=1e-5, rtol=1e-5)


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
    teacher = FrozenCLIPTeacher(model, tok, NAMES[:3], templates, round_embeddings=False)
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
