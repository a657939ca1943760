"""MSGCoOp (Rain-Bus/MSGCoOp@a298669): ensemble logits, the score and orthogonality terms in closed form, the official
identical-contexts quirk and its ``ctx_init=""`` switch, what trains, a class-incremental stream, TPT, base-to-new."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.msgcoop import MSGCoOpConfig, MSGCoOpModel, msgcoop_regularisers, pairwise_cos2
from ctta.strategies.tpt import PromptTuner, TPTConfig

from ctta.clip_prompting.template import MASKED_LOGIT
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
DESC = "builtin:digits"
NAMES = list(DIGIT_NAMES[:4])


class _Logits:
    """Plugin keeping the eval logits."""

    def __init__(self):
        self.outputs = []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def after_eval_iteration(self, strategy, **kw):
        self.outputs.append(strategy.mb_output.detach().clone())


def _strategy(model, tok, plugins=(), **kw):
    return STRATEGIES.get("msgcoop").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, descriptions=DESC, evaluator=EvaluationPlugin(loggers=[]), plugins=list(plugins),
        **kw,
    )  # fmt: skip


def test_regularisers_closed_form():
    g = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 3.0]]])  # (N=2, C=2, E=2)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cos_c0 = F.cosine_similarity(torch.tensor([1.0, 0.5]), t[0], dim=0)  # mean of the un-normalised features
    score = 1 - (cos_c0 + 0.0) / 2
    div = (0.5 + 1.0) / 2  # cos^2 between the two prompts: class 0: 1/2, class 1: 1
    torch.testing.assert_close(pairwise_cos2(g), torch.tensor(div))
    cfg = MSGCoOpConfig(w=8.0, div_weight=1.0, descriptions=DESC)
    torch.testing.assert_close(msgcoop_regularisers(g, t, cfg), 8.0 * score + 1.0 * div)
    assert pairwise_cos2(g[:1]) == 0  # one prompt: no pairs
    g3 = torch.randn(3, 4, 5)
    pairs = [(0, 1), (0, 2), (1, 2)]
    want = torch.stack([F.cosine_similarity(g3[i], g3[j], dim=-1).pow(2) for i, j in pairs]).mean()
    torch.testing.assert_close(pairwise_cos2(g3), want)


def test_logits_are_the_mean_over_prompts(tiny):
    model, tok = tiny
    m = MSGCoOpModel(model, tok, NAMES, MSGCoOpConfig(ctx_init="", n_ctx=2, n_prompts=3, descriptions=DESC))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = F.normalize(model.encode_image(x), dim=-1)
        per = [m.logits(f, m.text(m.ctx[p])) for p in range(3)]
        torch.testing.assert_close(m(x), torch.stack(per).mean(0), atol=1e-5, rtol=1e-5)
    assert m.teacher.features.shape == (4, model.text_projection.shape[1])


def test_official_quirk_identical_contexts_stay_identical(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok, n_prompts=3)
    ctx = strategy.model.ctx
    assert ctx.shape == (3, 4, ctx.shape[-1]) and all(torch.equal(ctx[0], ctx[i]) for i in (1, 2))
    before = ctx.detach().clone()
    strategy.train(cc.class_incremental(train, test).train_stream[0])
    after = strategy.model.ctx.detach()
    assert not torch.equal(after, before)
    torch.testing.assert_close(after[1], after[0], atol=1e-6, rtol=0)  # same gradients: still one prompt
    with torch.no_grad():
        assert abs(float(pairwise_cos2(strategy.model.prompt_features())) - 1) < 1e-5  # orthogonality at its max


def test_switch_ctx_init_empty_gives_distinct_random_contexts(tiny):
    model, tok = tiny
    cfg = MSGCoOpConfig(ctx_init="", n_ctx=3, n_prompts=2, descriptions=DESC, init_seed=0)
    m = MSGCoOpModel(model, tok, NAMES, cfg, generator=torch.Generator().manual_seed(0))
    assert m.ctx.shape[:2] == (2, 3) and not torch.equal(m.ctx[0], m.ctx[1])
    assert 0.01 < float(m.ctx.detach().std()) < 0.03  # N(0, 0.02^2)
    with torch.no_grad():
        assert float(pairwise_cos2(m.prompt_features())) < 1
    csc = MSGCoOpModel(model, tok, NAMES, MSGCoOpConfig(ctx_init="", csc=True, descriptions=DESC))
    assert csc.ctx.shape[:3] == (4, 4, 4)  # (N, C, n, D)


def test_only_the_contexts_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok, n_prompts=2, ctx_init="", n_ctx=2)
    trainable = [n for n, p in strategy.model.named_parameters() if p.requires_grad]
    assert trainable == ["ctx"]
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed == {"ctx"}


def test_class_incremental_stream_and_tpt_handoff(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 40)
    bench = cc.class_incremental(train, test)
    keep = _Logits()
    strategy = _strategy(model, tok, plugins=[keep], n_prompts=2, ctx_init="", n_ctx=2)
    strategy.train(bench.train_stream[0])
    assert strategy.seen == [0, 1, 2, 3, 4] and strategy.model.teacher.classnames == list(DIGIT_NAMES[:5])
    strategy.eval(bench.test_stream[1])
    out = torch.cat(keep.outputs)
    assert (out[:, 5:] == MASKED_LOGIT).all() and (out[:, :5] > MASKED_LOGIT).all()
    strategy.train(bench.train_stream[1])
    assert strategy.seen == list(range(10))
    tuner = PromptTuner.from_prompted(strategy.model, TPTConfig(selection_p=0.25, episode_batch=2))
    views = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pred = tuner.predict_many(views)
    assert pred.shape[0] == 2 and torch.isfinite(pred).all()


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("msgcoop_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
