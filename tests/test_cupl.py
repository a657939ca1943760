"""CuPL (issue 23, C1): the three variants against a straightforward re-computation, the official article quirk of
the generation questions, generation through a recorded language model replayed with no call, and a test-time run
evaluated without a train stream."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from ctta.strategies.cupl import (
    CUPL_SAMPLING,
    CuPL,
    CuPLConfig,
    CuPLTexts,
    article,
    cupl_questions,
    generate_descriptions,
)

from ctta.clip_prompting.descriptions import load_descriptions
from ctta.clip_prompting.prompt_templates import CLIP_IMAGENET_TEMPLATES
from tests import _conformance_cases as cc

NAMES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def clip():
    return cc.tiny_clip()


def _reference(model, tok, per_class) -> torch.Tensor:
    """Per class: encode every text, normalise each row, mean, re-normalise (the official zeroshot_classifier)."""
    out = []
    with torch.no_grad():
        for texts in per_class:
            e = model.encode_text(tok(texts)).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            out.append(m / m.norm())
    return torch.stack(out)


def _cupl(clip, **kwargs) -> CuPL:
    model, tok = clip
    return CuPL(model=copy.deepcopy(model), tokenizer=tok, classnames=NAMES, device="cpu", evaluator=None, **kwargs)


@pytest.mark.parametrize("variant", ["cupl", "templates", "both"])
def test_variants_equal_a_straightforward_recomputation(clip, variant):
    model, tok = clip
    bank = load_descriptions("builtin:digits_cupl")
    templates = [[t.format(c) for t in CLIP_IMAGENET_TEMPLATES] for c in NAMES]
    per_class = {"cupl": [bank[c] for c in NAMES], "templates": templates,
                 "both": [t + bank[c] for t, c in zip(templates, NAMES)]}[variant]  # fmt: skip
    head = _cupl(clip, variant=variant, descriptions="builtin:digits_cupl").model.text_features()
    assert torch.allclose(head, _reference(model, tok, per_class), atol=1e-5)


def test_both_pools_every_text_in_one_mean(clip):
    """"both" is one mean over templates and descriptions, not the mean of the two classifiers."""
    model, tok = clip
    both = _cupl(clip, variant="both", descriptions="builtin:digits_cupl").model.text_features()
    halves = _cupl(clip, variant="cupl", descriptions="builtin:digits_cupl").model.text_features() + \
        _cupl(clip, variant="templates").model.text_features()
    assert not torch.allclose(both, halves / halves.norm(dim=-1, keepdim=True), atol=1e-4)


def test_official_article_quirk_tests_capital_vowels_only():
    assert article("apple") == "a" and article("Apple") == "an" and article("Egyptian cat") == "an"
    assert article("apple", "english") == "an" and article("tench", "english") == "a"
    assert cupl_questions("orange") == [
        "Describe what a orange looks like", "How can you identify a orange?", "What does a orange look like?",
        "Describe an image from the internet of a orange", "A caption of an image of a orange:",
    ]  # fmt: skip
    assert cupl_questions("Orange")[0] == "Describe what an Orange looks like"
    with pytest.raises(ValueError, match="article='british'"):
        CuPLConfig(article="british")


class FakeLM:
    """Records the requests; answers two completions per question."""

    def __init__(self):
        self.requests = []

    def generate(self, messages, **sampling):
        self.requests.append((messages, sampling))
        return [f"answer {len(self.requests)}\n\nmore", "short"]


def test_generation_questions_sampling_and_post_processing():
    llm = FakeLM()
    out = generate_descriptions(llm, ["apple"])
    assert [m[0]["content"] for m, _ in llm.requests] == cupl_questions("apple")
    assert all(m == [{"role": "user", "content": m[0]["content"]}] for m, _ in llm.requests)
    assert all(s == CUPL_SAMPLING for _, s in llm.requests)  # n=10, T=0.99, 50 tokens, stop "."
    assert out["apple"][:2] == ["answer 1more.", "short."] and len(out["apple"]) == 10


def test_generated_descriptions_are_recorded_and_replayed_without_a_call(clip, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([[f"text {i} {j}" for j in range(10)] for i in range(15)]))
    log = tmp_path / "log.jsonl"
    live = CuPLTexts(CuPLConfig(llm="x", llm_log=str(log)), _scripted(script, log))
    texts = live(NAMES)
    assert [len(t) for t in texts] == [50, 50, 50] and texts[1][0] == "text 5 0."
    assert len(log.read_text().splitlines()) == 15
    from ctta.llm import make_llm

    replayed = CuPLTexts(CuPLConfig(llm="replay", llm_log=str(log)), make_llm("replay", log))
    assert replayed(NAMES) == texts  # every request answered from the log (pure replay cannot call)


def _scripted(script, log):
    from ctta.llm import make_llm

    return make_llm(f"scripted:{script}", log)


def test_a_test_time_benchmark_is_evaluated_without_a_train_stream(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\ndevice: cpu\n"
                   "scenario: {name: test_time, dataset: digits, n_views: 1, resolution: 32, max_samples: 20}\n"
                   "backbone: {name: clip, model: ctta-tiny-clip-digits, pretrained: ctta}\n"
                   "strategy: {name: cupl, variant: templates, eval_batch_size: 8}\n"
                   f"log: {{out_dir: {tmp_path / 'out'}, plot: false}}\n")  # fmt: skip
    ctx = prepare(load_config(cfg))
    assert ctx.is_tta and not len(ctx.bench.train_stream)
    summary = execute(ctx, verbose=False)["summary"]
    assert 0.0 <= summary["top1"] <= 1.0 and summary["top5"] >= summary["top1"]
