"""The shared LLM-in-the-loop optimiser (ctta/clip_prompting/llm_search.py) on a scripted LLM and hand-made scores."""

import pytest
import torch
import torch.nn.functional as F

from ctta.clip_prompting.llm_search import PromptOptimizer, Scored, fill_slot, template_scorer, texts_for_prompt


class ScriptedLLM:
    """Answers each call with the next completions of a fixed list and records every request."""

    name = "scripted-test"

    def __init__(self, responses):
        self.responses = list(responses)
        self.calls = []

    def generate(self, messages, **sampling):
        self.calls.append((messages, dict(sampling)))
        n = sampling.get("n", 1)
        out, self.responses = self.responses[:n], self.responses[n:]
        assert len(out) == n, "the script ran out of responses"
        return out


def _lines(text):
    return [line[2:] for line in text.splitlines() if line.startswith("- ")]


def _length_score(prompt):
    return float(len(prompt)), 100.0 / len(prompt)


def _messages(scored, step):
    return [{"role": "user", "content": f"step {step}: " + " | ".join(s.prompt for s in scored)}]


def _optimizer(llm, **kw):
    args = dict(build_messages=_messages, parse=_lines, evaluate=_length_score, steps=2, per_step=1,
                sampling={"temperature": 1.0})
    args.update(kw)
    return PromptOptimizer(llm, **args)


def test_loop_scores_initial_then_each_step_in_order():
    llm = ScriptedLLM(["- a {} photo", "- the {} here"])
    opt = _optimizer(llm)
    rows = opt.run(["a {}."])
    assert rows == [Scored("a {}.", 5.0, 20.0, -1), Scored("a {} photo", 10.0, 10.0, 0),
                    Scored("the {} here", 11.0, 100.0 / 11, 1)]
    # each request is built from the prompts scored so far, with the sampling settings and n = 1
    assert llm.calls[0] == ([{"role": "user", "content": "step 0: a {}."}], {"n": 1, "temperature": 1.0})
    assert llm.calls[1][0][0]["content"] == "step 1: a {}. | a {} photo"
    assert opt.best().prompt == "the {} here"


def test_duplicates_and_prompts_without_slot_are_skipped_not_retried():
    llm = ScriptedLLM(["- a {}.\n- no slot\n- new {} one\n- new {} one"])
    opt = _optimizer(llm, steps=1)
    rows = opt.run(["a {}."])
    assert [r.prompt for r in rows] == ["a {}.", "new {} one"]
    skipped = [(e["skipped"], e["reason"]) for e in opt.events if "skipped" in e]
    assert skipped == [("a {}.", "duplicate"), ("no slot", "no class slot '{}'"), ("new {} one", "duplicate")]
    assert len(llm.calls) == 1


def test_invalid_completion_is_asked_again_up_to_max_retries():
    llm = ScriptedLLM(["nothing", "still nothing", "- good {}", "junk", "junk", "junk"])
    opt = _optimizer(llm, steps=2, max_retries=2)
    rows = opt.run(["a {}."])
    # step 0: two invalid answers retried, the third is valid; step 1: retries exhausted after three calls
    assert [r.prompt for r in rows] == ["a {}.", "good {}"]
    assert len(llm.calls) == 6
    assert [e["parsed"] for e in opt.events if e["step"] == 1] == [[], [], []]


def test_per_step_with_n_per_call_asks_for_the_remainder_only():
    llm = ScriptedLLM(["- p1 {}", "- p2 {}", "- p3 {}"])
    opt = _optimizer(llm, steps=1, per_step=3, sampling={"n": 2, "temperature": 0.7})
    opt.run([])
    assert [c[1]["n"] for c in llm.calls] == [2, 1]
    assert [s.prompt for s in opt.scored] == ["p1 {}", "p2 {}", "p3 {}"]


def test_valid_hook_and_no_slot_check():
    llm = ScriptedLLM(["- short", "- far too long {}"])
    opt = _optimizer(llm, class_slot=None, valid=lambda p: "too long" if len(p) > 10 else None)
    rows = opt.run([])
    assert [r.prompt for r in rows] == ["short"]
    assert {"step": 1, "skipped": "far too long {}", "reason": "too long"} in opt.events


def test_history_receives_every_scored_prompt():
    class History:
        def __init__(self):
            self.rows = []

        def append(self, step, candidate, scores, **extra):
            self.rows.append((step, candidate, scores))

    history = History()
    _optimizer(ScriptedLLM(["- x {}", "- y {}"]), history=history).run(["a {}."])
    assert history.rows == [(-1, "a {}.", {"score": 5.0, "loss": 20.0}), (0, "x {}", {"score": 4.0, "loss": 25.0}),
                            (1, "y {}", {"score": 4.0, "loss": 25.0})]


def test_best_breaks_ties_by_lower_loss_then_order():
    opt = _optimizer(ScriptedLLM([]))
    opt.scored = [Scored("a", 50.0, 1.0, -1), Scored("b", 60.0, 2.0, 0), Scored("c", 60.0, 1.5, 0),
                  Scored("d", 60.0, 1.5, 1)]
    assert opt.best().prompt == "c"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="per_step >= 1"):
        _optimizer(ScriptedLLM([]), per_step=0)


class _Feats:
    def __init__(self, features, labels, logit_scale):
        self.features, self.labels, self.logit_scale = features, labels, logit_scale


def test_template_scorer_equals_direct_computation():
    torch.manual_seed(0)
    names = ["cat", "sea_lion", "dog"]
    table = {n: F.normalize(torch.randn(4), dim=0) for n in ["a cat x", "a sea lion x", "a dog x"]}
    seen = []

    def encode(texts):
        seen.append(texts)
        return torch.stack([table[t] for t in texts])

    feats = _Feats(F.normalize(torch.randn(6, 4), dim=1), torch.tensor([0, 1, 2, 0, 1, 2]), 10.0)
    acc, ce = template_scorer(feats, names, encode, class_slot="<CLASS>")("a <CLASS> x")
    assert seen == [["a cat x", "a sea lion x", "a dog x"]]
    logits = 10.0 * feats.features @ torch.stack(list(table.values())).t()
    expected_acc = 100 * sum(int(logits[i].argmax() == feats.labels[i]) for i in range(6)) / 6
    assert acc == expected_acc
    assert ce == pytest.approx(F.cross_entropy(logits, feats.labels).item())


def test_fill_slot_and_texts_for_prompt():
    assert fill_slot("a {} of {}", "red_fox") == "a red fox of red fox"
    assert texts_for_prompt("<CLASS>!", "<CLASS>")(["a", "b_c"]) == [["a!"], ["b c!"]]
