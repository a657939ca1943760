"""PAC-Bayes prompt bounds (strategies/pacbayes.py): closed forms on a toy prior computed by hand, the kl-inverse
against a brute-force grid, and the greedy search against a brute-force bound comparison on hand-made features."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ctta.scenarios.few_shot import FewShotConfig, build_few_shot
from ctta.strategies.pacbayes import (
    PacBayes,
    binary_kl,
    candidate_words,
    class_template,
    complexity,
    greedy_search,
    kl_inverse,
    make_prior,
    prompt_bound,
    uniform_log_prior,
)

from ctta.backbones.clip import create_clip
from ctta.clip_prompting.search import FewShotFeatures, SearchHistory, fitness_scores
from ctta.evaluation import make_evaluator
from ctta.llm.scoring import UnigramPrior
from tests.helpers import run_smoke


def test_uniform_prior_is_the_papers_baseline():
    assert uniform_log_prior() == pytest.approx(-77 * math.log(49408), rel=1e-15)
    assert uniform_log_prior() == pytest.approx(-832.206, abs=1e-3)  # 77 x 10.807868
    assert uniform_log_prior(3, 10) == pytest.approx(-3 * math.log(10), rel=1e-15)


def test_mcallester_bound_on_a_toy_prior_by_hand():
    # four prompts, prior 1/4 each; n = 100, delta = 0.1, train error 0.2:
    # KL + ln(2 sqrt(n)/delta) = ln 4 + ln 200 = ln 800 = 6.684612; sqrt(6.684612 / 200) = 0.182819
    assert complexity(100, math.log(0.25), 0.1) == pytest.approx(6.684612, abs=1e-6)
    assert prompt_bound(0.2, 100, math.log(0.25), delta=0.1) == pytest.approx(0.382819, abs=1e-6)
    # the uniform CLIP prior on CIFAR-10's 50,000 training images (delta 0.05): complexity term
    # sqrt((832.206 + ln(2 * 223.607 / 0.05)) / 100000) = sqrt(841.305 / 1e5) = 0.091723
    assert prompt_bound(0.0, 50_000, uniform_log_prior(), delta=0.05) == pytest.approx(0.091723, abs=1e-6)


def test_binary_kl_closed_forms():
    assert binary_kl(0.5, 0.25) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), rel=1e-12)
    assert binary_kl(0.0, 0.3) == pytest.approx(-math.log(0.7), rel=1e-12)
    assert binary_kl(0.3, 0.3) == 0.0 and binary_kl(0.2, 0.0) == math.inf


@pytest.mark.parametrize("q, c", [(0.0, 0.05), (0.1, 0.02), (0.37, 0.3), (0.9, 0.01), (0.5, 5.0)])
def test_kl_inverse_matches_a_brute_force_grid(q, c):
    step = 1e-5
    grid = [i * step for i in range(int(round(1 / step)) + 1)]
    brute = max(p for p in grid if p >= q and binary_kl(q, p) <= c)
    assert brute <= kl_inverse(q, c) <= brute + step
    if q == 0.0:  # kl(0 || p) = -ln(1 - p): p* = 1 - exp(-c)
        assert kl_inverse(q, c) == pytest.approx(1 - math.exp(-c), abs=1e-12)


def test_kl_bound_is_never_looser_than_mcallester():
    for r in (0.0, 0.05, 0.3, 0.6):
        for n in (50, 1000, 50_000):
            kl = prompt_bound(r, n, -20.0, kind="kl")
            assert r <= kl <= prompt_bound(r, n, -20.0, kind="mcallester") + 1e-12
    assert prompt_bound(0.5, 10, uniform_log_prior(), kind="kl") == 1.0  # vacuous: the kl form saturates at 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        prompt_bound(0.1, 10, -1.0, kind="catoni")
    with pytest.raises(ValueError, match="log_prior <= 0"):
        prompt_bound(0.1, 10, 1.0)
    with pytest.raises(ValueError, match="train_error"):
        prompt_bound(1.5, 10, -1.0)


# ---------------------------------------------------------------------------------------------- greedy search
def _hand_made():
    """Six 2-d image features (three per class) and, per candidate word, the class directions it gives."""
    # angles: class 0 at 0, 37, 53 degrees; class 1 at 90, 127, 217. A head (a, b) with b = -a predicts class 0 on
    # the half-plane of a: a at -10 deg separates all; at 30 deg it takes 90 too (1 error); at 45, 90 and 127 (2)
    feats = FewShotFeatures(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8], [-0.8, -0.6]]),
                            torch.tensor([0, 0, 0, 1, 1, 1]), 100.0)  # fmt: skip

    def head(deg):
        a = [math.cos(math.radians(deg)), math.sin(math.radians(deg))]
        return [a, [-a[0], -a[1]]]

    heads = {"": [[1.0, 0.0], [1.0, 0.1]], "good": head(45), "great": head(30), "perfect": head(-10), "bad": head(-60)}
    priors = {"": 0.0, "good": math.log(0.5), "great": math.log(0.3), "perfect": math.log(1e-6), "bad": math.log(0.2)}
    return feats, heads, priors


def _errors(feats, heads):
    def train_errors(prompts):
        return [1 - fitness_scores(feats, torch.tensor(heads[p.split()[-1] if p else ""]))["top1"] for p in prompts]

    return train_errors


@pytest.mark.parametrize("kind", ["kl", "mcallester"])
def test_greedy_step_picks_the_word_a_brute_force_bound_comparison_picks(kind):
    feats, heads, priors = _hand_made()
    words = ["good", "great", "perfect", "bad"]
    errors = dict(zip(words, _errors(feats, heads)(words)))
    assert [round(errors[w] * 6) for w in words] == [2, 1, 0, 3]
    brute = {w: prompt_bound(errors[w], 6, priors[w], 0.5, kind) for w in words}
    expected = min(words, key=brute.get)
    assert expected == "great"  # "perfect" has no train error but a prior of 1e-6: its bound is higher
    history = SearchHistory()
    best = greedy_search(_errors(feats, heads), lambda p: priors[p.split()[-1] if p else ""], words, 6,
                         max_words=1, delta=0.5, kind=kind, history=history)  # fmt: skip
    assert best.prompt == expected and best.bound == pytest.approx(brute[expected], rel=1e-12)
    assert best.train_error == pytest.approx(1 / 6) and best.log_prior == priors["great"]
    assert [r["candidate"] for r in history.rows] == ["", "good", "great", "perfect", "bad"]
    assert [r["chosen"] for r in history.rows] == [True, False, True, False, False]
    assert all(r["fitness"] == -r["bound"] for r in history.rows)


def test_greedy_search_stops_when_no_word_lowers_the_bound():
    feats, heads, priors = _hand_made()
    words = ["good", "great", "perfect", "bad"]

    def prior(prompt):  # each word costs its own prior
        return sum(priors[w] for w in prompt.split())

    best = greedy_search(_errors(feats, heads), prior, words, 6, max_words=5, delta=0.5)
    # step 1 keeps "great" (as above); step 2: the last word sets the error, the prior adds up: a second word
    # only raises the complexity of an error that cannot drop below "great"'s except with "perfect" (1e-6)
    second = {w: prompt_bound(_errors(feats, heads)([f"great {w}"])[0], 6, prior(f"great {w}"), 0.5) for w in words}
    assert best.prompt == "great" and min(second.values()) >= best.bound
    assert greedy_search(_errors(feats, heads), prior, [], 6, init_prompt="").prompt == ""  # nothing to add


def test_select_error_takes_the_lowest_train_error_whose_bound_is_not_above_the_current_one():
    feats, heads, priors = _hand_made()
    priors = {**priors, "great": math.log(0.01)}
    words = ["good", "great", "perfect", "bad"]
    errors = dict(zip(words, _errors(feats, heads)(words)))
    bounds = {w: prompt_bound(errors[w], 6, priors[w], 0.5, "mcallester") for w in words}
    start = prompt_bound(0.5, 6, 0.0, 0.5, "mcallester")
    # by hand: start 0.936; good 0.831, great 0.924, perfect 1.158, bad 1.069
    assert bounds["good"] < bounds["great"] <= start < bounds["bad"] < bounds["perfect"]

    def run(select):
        return greedy_search(_errors(feats, heads), lambda p: priors[p.split()[-1] if p else ""], words, 6,
                             max_words=1, delta=0.5, kind="mcallester", select=select).prompt  # fmt: skip

    assert run("bound") == "good" and run("error") == "great"  # "perfect" has no error but a bound above start
    with pytest.raises(ValueError, match="select must be"):
        run("loss")


def test_candidate_words_and_class_template():
    _, _, tok = create_clip("ctta-tiny-clip", "")
    words = candidate_words(["good", "a b", "x{}", "good"], clip_tokenizer=tok, clip_vocab=5)
    assert words[0] == "good" and "a b" not in words and "x{}" not in words and len(words) == 6
    assert all(w.isalpha() and len(w) > 1 for w in words[1:])
    assert class_template("{prompt} {}.", "") == "{}." and class_template("{prompt} {}.", "a photo") == "a photo {}."


def test_pacbayes_strategy_reports_the_bound_of_a_straightforward_recomputation():
    bench = build_few_shot(FewShotConfig(dataset="digits", shots=4, img_size=32, max_test=20), seed=1)
    model, _, tok = create_clip("ctta-tiny-clip", "")
    names = list(bench.info.classnames)
    strategy = PacBayes(model=model, tokenizer=tok, classnames=names, words=("small", "digit", "number"),
                        max_words=2, device="cpu", evaluator=make_evaluator())  # fmt: skip
    strategy.train(bench.train_stream[0])
    result = strategy.results[0]
    # straightforward: encode the images and the chosen prompt's texts with open_clip, count the errors
    data = bench.train_stream[0].dataset.eval()
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    texts = [f"{result['prompt']} {c.replace('_', ' ')}." for c in strategy.model.classnames]
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(texts)).float(), dim=-1)
    errors = int(((img @ txt.t()).argmax(1) != y).sum())
    prior = UnigramPrior.from_tokenizer(tok, max_length=75).log_prob(result["prompt"])
    assert result["n"] == len(y) and result["train_error"] == errors / len(y)
    assert result["log_prior"] == pytest.approx(prior, rel=1e-12)
    assert result["bound"] == pytest.approx(prompt_bound(errors / len(y), len(y), prior, 0.05, "kl"), rel=1e-9)
    assert strategy.run_artifacts()["pacbayes_bound"] == strategy.results
    assert strategy.model.class_texts(["zero"])[0] == [f"{result['prompt']} zero."]
    assert strategy.texts_for(["five"]) == [[f"{result['prompt']} five."]]  # a new class gets the found prompt


def test_smoke_run_summarises_the_bound(tmp_path):
    summary = run_smoke("pacbayes_digits", tmp_path)
    result = json.loads((tmp_path / "pacbayes_bound.json").read_text())[-1]
    assert summary["pacbayes_bound"] == result["bound"] and summary["pacbayes_train_error"] == result["train_error"]
    rows = json.loads((tmp_path / "search_history.json").read_text())
    assert [r["prompt"] for r in rows if r["chosen"]][-1] == result["prompt"]
    assert result["bound"] == min(r["bound"] for r in rows)
    assert summary["base_acc"] > 0.8 and summary["new_acc"] > 0.8 and result["bound"] < 0.9  # trained CLIP: not chance


def test_priors_by_name():
    _, _, tok = create_clip("ctta-tiny-clip", "")
    assert make_prior("uniform77", tok).log_prob("anything at all") == uniform_log_prior()
    unigram = make_prior("unigram", tok, max_length=75)
    assert unigram.log_prob("a photo") == pytest.approx(-math.log(76) - 2 * math.log(49408), rel=1e-12)
    with pytest.raises(ValueError, match="unknown prior 'gpt'"):
        make_prior("gpt", tok)
