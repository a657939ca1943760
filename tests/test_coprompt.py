"""CoPrompt (ShuvenduRoy/CoPrompt@a2a6c12): the per-dataset table merged last and its switch, the context init rule,
adapted logits and both consistency losses in closed form, two-view batches, what trains, a class-incremental
stream, TPT, base-to-new end to end, and the trainable-parameter counts on ViT-B/16."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.coprompt import (
    CoPrompt,
    CoPromptConfig,
    CoPromptModel,
    TwoViews,
    apply_dataset_table,
    coprompt_consistency,
)
from ctta.strategies.tpt import PromptTuner, TPTConfig

from ctta.clip_prompting.text import encode_words
from ctta.clip_prompting.vision import encode_image
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, run_smoke

ROOT = Path(__file__).resolve().parents[1]
DESC = "builtin:digits"
NAMES = list(DIGIT_NAMES[:4])


def _strategy(model, tok, plugins=(), **kw):
    return STRATEGIES.get("coprompt").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, depth=2, descriptions=DESC, evaluator=EvaluationPlugin(loggers=[]),
        plugins=list(plugins), **kw,
    )  # fmt: skip


def test_dataset_table_is_merged_last_and_can_be_switched_off():
    cfg = CoPrompt.resolve_config(None, dict(depth=3, n_ctx=2, w=1.0, epochs=8, dataset="food101"))
    assert (cfg.depth, cfg.n_ctx, cfg.w, cfg.epochs) == (9, 4, 0.5, 5)  # the table wins over explicit values
    assert apply_dataset_table(CoPromptConfig(dataset="oxford_pets")).w == 0.1
    off = CoPrompt.resolve_config(None, dict(depth=3, dataset="food101", dataset_table=False))
    assert (off.depth, off.n_ctx, off.w, off.epochs) == (3, 2, 1.0, 8)
    assert apply_dataset_table(CoPromptConfig(dataset="imagenet_a")) == CoPromptConfig(dataset="imagenet_a")


def test_context_init_rule(tiny):
    model, tok = tiny
    two = CoPromptModel(model, tok, NAMES, CoPromptConfig(depth=2, descriptions=DESC))
    assert two.text.layout == [2, "of a"]  # the text keeps the whole phrase
    torch.testing.assert_close(two.ctx.detach(), encode_words(model, tok, "a photo"))
    assert CoPromptModel(model, tok, NAMES, CoPromptConfig(depth=2, n_ctx=4, descriptions=DESC)).text.layout == [4]
    rand = CoPromptModel(model, tok, NAMES, CoPromptConfig(depth=2, n_ctx=5, descriptions=DESC))
    assert rand.text.layout == [5] and float(rand.ctx.detach().std()) < 0.05  # N(0, 0.02^2) beyond the phrase


def test_compound_prompts_start_where_maples_do(tiny):
    from ctta.strategies.maple import MaPLeConfig, MaPLeModel

    model, tok = tiny
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ours = CoPromptModel(model, tok, NAMES, CoPromptConfig(depth=2, descriptions=DESC), generator=gen())
    maple = MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2), generator=gen())
    for name, p in maple.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, dict(ours.named_parameters())[name]), name


def test_adapted_logits_closed_form(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    m = CoPromptModel(model, tok, NAMES, CoPromptConfig(depth=2, descriptions=DESC)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ctx, deep, v0, vs = m.prompts()
        g, f = m.text(ctx, deep), encode_image(model, x, v0, vs, round_prompts=True)
        g = F.normalize(0.2 * m.adapter_text.module(g) + 0.8 * g, dim=-1)
        f = F.normalize(0.1 * m.adapter_image.module(f) + 0.9 * f, dim=-1)
        torch.testing.assert_close(m(x), model.logit_scale.exp() * f @ g.t(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("distill", ["cosine", "mse"])
def test_consistency_closed_form_one_description_row_per_step(tiny, distill):
    model, tok = tiny
    m = CoPromptModel(model, tok, NAMES, CoPromptConfig(depth=2, descriptions=DESC)).train()
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    m(x1)
    random.seed(5)
    r = random.randint(0, 2)
    t_text = m.teacher.features[r]  # (C, E), normalised rows of description r for every class
    with torch.no_grad():
        t_img = F.normalize(model.encode_image(x2), dim=-1)
    g, f = m.features["text"], m.features["image"]
    if distill == "cosine":
        want = (1 - F.cosine_similarity(g, t_text).mean()) + (1 - F.cosine_similarity(f, t_img).mean())
    else:
        want = ((g - t_text) ** 2).mean() + ((f - t_img) ** 2).mean()
    random.seed(5)
    torch.testing.assert_close(coprompt_consistency(m, x2, distill), want, atol=1e-6, rtol=1e-5)


def test_two_views_run_the_transform_twice():
    calls = iter(range(10))
    inner = lambda x, y: [x + next(calls), y]  # noqa: E731 - a stand-in random transform
    x, y = torch.zeros(1, 2, 2), 3
    out = TwoViews(inner)(x, y)
    assert out[0].shape == (2, 1, 2, 2) and out[1] == 3 and out[0][0].sum() == 0 and out[0][1].sum() == 4
    assert torch.equal(TwoViews(None)(x, y)[0], torch.stack([x, x]))


class _Views:
    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def after_forward(self, strategy, **kw):
        self.seen.append((strategy.mb_x.clone(), strategy.mb_x2.clone()))


def test_training_batches_carry_a_second_augmented_view(tiny):
    model, tok = tiny
    train, test = cc.digits(16, 10)
    noisy = as_classification_dataset(train).replace_current_transform_group(lambda x: x + torch.randn_like(x))
    views = _Views()
    strategy = _strategy(model, tok, plugins=[views])
    from avalanche.benchmarks.scenarios import benchmark_from_datasets

    strategy.train(benchmark_from_datasets(train=[noisy], test=[as_classification_dataset(test)]).train_stream[0])
    x1, x2 = views.seen[0]
    assert x1.shape == x2.shape == (8, 3, 32, 32) and not torch.equal(x1, x2)  # independent draws


def test_only_prompts_couplings_and_adapters_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok)
    trainable = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    want = {"ctx", "deep_text.0", "coupling.proj.weight", "coupling.proj.bias", "coupling.deep.0.weight",
            "coupling.deep.0.bias"} | {f"adapter_{k}.module.fc.{i}.weight" for k in ("image", "text") for i in (0, 2)}
    assert trainable == want  # 3J + 4 tensors, J = 2
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    strategy.train(cc.class_incremental(train, test).train_stream[0])
    changed = {k for k, v in strategy.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == want  # every trainable moves, nothing else (frozen CLIP, the mix ratios)
    assert strategy.model.adapter_image.r == 0.1 and strategy.model.adapter_text.r == 0.2


def test_class_incremental_stream_and_tpt_handoff(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 40)
    bench = cc.class_incremental(train, test)
    strategy = _strategy(model, tok)
    strategy.train(bench.train_stream[0])
    assert strategy.seen == [0, 1, 2, 3, 4] and strategy.model.teacher.features.shape[1] == 5
    strategy.train(bench.train_stream[1])
    assert strategy.seen == list(range(10)) and strategy.model.teacher.features.shape[1] == 10
    tuner = PromptTuner.from_prompted(strategy.model, TPTConfig(selection_p=0.25, episode_batch=2))
    pred = tuner.predict_many(torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert pred.shape[0] == 2 and torch.isfinite(pred).all()


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("coprompt_digits", tmp_path))
    assert (tmp_path / "results.json").exists()


def test_trainable_parameter_counts_vitb16():
    """ViT-B/16 (random weights): MaPLe's published 3.55M (3,555,072) + two 512-128-512 adapters (262,144) at the
    yaml defaults; with a table row J 12, n_ctx 4 (ImageNet) 5.01M. MSGCoOp: 4 contexts x 4 x 512."""
    from ctta.strategies.msgcoop import MSGCoOpConfig, MSGCoOpModel

    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)

    def n(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    assert n(CoPromptModel(model, tok, NAMES, CoPromptConfig(descriptions=DESC))) == 3_555_072 + 262_144
    imagenet = apply_dataset_table(CoPromptConfig(descriptions=DESC, dataset="imagenet"))
    assert n(CoPromptModel(model, tok, NAMES, imagenet)) == 5_014_528
    assert n(MSGCoOpModel(model, tok, NAMES, MSGCoOpConfig(descriptions=DESC))) == 8_192
