"""IPO (strategies/ipo.py): the meta-prompt against hand-written texts, the parser on tricky completions, the
reference's candidate checks, the image-description files, and the recorded smoke search (replay without a call,
the committed log is the record of the current requests, a missing entry's message)."""

import json

import pytest
from ctta.strategies.ipo import (
    IPO_HEADER,
    IPO_INSTRUCTION,
    ipo_meta_prompt,
    ipo_shown,
    ipo_valid,
    load_image_descriptions,
    parse_ipo,
)

from ctta.clip_prompting.llm_search import Scored
from ctta.data.digits import DIGIT_NAMES
from tests.helpers import ROOT, assert_base_new_hm, llm_search_on_class_incremental, run_smoke

HISTORY = [
    Scored("a photo of a <CLASS>.", 50.0, 1.25, -1),
    Scored("low <CLASS>", 12.5, 3.0, 0),  # below the threshold of 20: never shown
    Scored("b <CLASS>", 62.5, 0.9, 0),
    Scored("c <CLASS>", 62.5, 1.1, 0),  # same score, higher loss: shown before "b"
    Scored("d <CLASS>", 20.0, 2.0, 1),  # exactly the threshold: shown
    Scored("e <CLASS>", 87.5, 0.5, 1),
]


def test_shown_prompts_ascending_by_score_higher_loss_first_threshold_and_cap():
    assert [s.prompt for s in ipo_shown(HISTORY)] == ["d <CLASS>", "a photo of a <CLASS>.", "c <CLASS>", "b <CLASS>",
                                                      "e <CLASS>"]
    # the cap keeps the best ones (the end of the ascending list)
    assert [s.prompt for s in ipo_shown(HISTORY, max_shown=2)] == ["b <CLASS>", "e <CLASS>"]
    assert [s.prompt for s in ipo_shown(HISTORY, score_threshold=60)] == ["c <CLASS>", "b <CLASS>", "e <CLASS>"]
    assert ipo_shown(HISTORY, max_shown=0) == []


def test_meta_prompt_text_with_buckets_and_descriptions():
    text = ipo_meta_prompt(HISTORY[:3], descriptions="Image 1: a red flower.\nImage 2: a dog.",
                           header="HEAD\n", instruction="\n\nEND")
    assert text == ("HEAD\n"
                    "\nDescriptions of the training images:\nImage 1: a red flower.\nImage 2: a dog.\n"
                    "\ntext:\na photo of a <CLASS>.\nscore:\n50\nloss:\n1.250\n"
                    "\ntext:\nb <CLASS>\nscore:\n62\nloss:\n0.900\n"  # 62.5 -> 62 (round half to even)
                    "\n\nEND")


def test_meta_prompt_buckets():
    rows = [Scored("x <CLASS>", 66.66666666666667, 0.12345, 2)]
    assert "score:\n67\nloss:\n0.123\n" in ipo_meta_prompt(rows)
    assert "score:\n13\n" in ipo_meta_prompt(rows, score_buckets=20)  # OPRO: round(0.6667 * 20)
    assert "score:\n66.66666666666667\n" in ipo_meta_prompt(rows, score_buckets=0)  # the reference's identity


def test_default_meta_prompt_asks_for_higher_score_and_lower_loss_between_tags():
    text = ipo_meta_prompt([])
    assert text == IPO_HEADER + IPO_INSTRUCTION
    assert "with a higher score and a lower loss" in text and "<INS>" in text and "</INS>" in text
    assert "<CLASS>" in text


@pytest.mark.parametrize("completion, expected", [
    ("<INS>a bright photo of a <CLASS>.</INS>", ["A bright photo of a <CLASS>."]),
    ("Sure! Here it is: <INS> a **close-up** photo of a <CLASS> </INS> Hope it helps.",
     ["A close-up photo of a <CLASS>"]),
    ("a sharp photo of a <CLASS>, a type of flower.", ["A sharp photo of a <CLASS>, a type of flower."]),
    ("<INS>a cut-off answer of a <CLASS>", ["A cut-off answer of a <CLASS>"]),  # max_tokens reached
    ("a photo of <CLASS></INS> trailing", ["A photo of <CLASS>"]),
    ("<INS>   </INS>", []),
    ("<INS>x</INS>", ["x"]),  # one character: left as is
    ("<INS>one</INS> <INS>two</INS>", ["One"]),  # the first pair only
])
def test_parse_ipo(completion, expected):
    assert parse_ipo(completion) == expected


def test_candidate_checks_of_the_reference():
    valid = ipo_valid(count_tokens=lambda p: len(p.split()) + 2, context_length=6)
    assert valid("A photo of <CLASS>.") is None
    assert valid("Use <INS> here <CLASS>") == "contains 'INS'"
    assert valid("one two three four five <CLASS>") == "more than 6 tokens"
    assert ipo_valid(max_chars=5)("a <CLASS>") == "longer than 5 characters"


def test_image_descriptions_file_folder_and_missing(tmp_path):
    (tmp_path / "dtd_1_shot_image.txt").write_text("Image 1: stripes.\n\n")
    assert load_image_descriptions(tmp_path, "dtd") == "Image 1: stripes."
    assert load_image_descriptions(tmp_path / "dtd_1_shot_image.txt") == "Image 1: stripes."
    with pytest.raises(FileNotFoundError, match=r"desc/ucf101_1_shot_image.txt in lmsdss/IPO@ac804a9"):
        load_image_descriptions(tmp_path, "ucf101")
    with pytest.raises(ValueError, match="set dataset=NAME"):
        load_image_descriptions(tmp_path)


def test_eurosat_descriptions_warn_of_the_known_bug(tmp_path):
    path = tmp_path / "eurosat_1_shot_image.txt"
    path.write_text("a red sedan")
    with pytest.warns(UserWarning, match="describes cars"):
        assert load_image_descriptions(path) == "a red sedan"


# ------------------------------------------------------------------------------------- recorded search (smoke)
LOG = ROOT / "configs" / "smoke" / "llm_logs" / "ipo_digits.jsonl"
SCRIPT = ROOT / "configs" / "smoke" / "llm_logs" / "ipo_digits_script.json"
#: the prompts of the recorded smoke search, in order: the initial one (words the shipped tiny CLIP never saw), then
#: the parsed answers (the fourth answer repeats the first and is skipped), with their training scores (1 shot x 5)
SMOKE_PROMPTS = ["a handwritten digit <CLASS>", "A bag of the digit <CLASS>.", "A blurry photo of a <CLASS>.",
                 "A photo of the number <CLASS> written by hand."]
SMOKE_SCORES = [80.0, 60.0, 100.0, 80.0]


class RaisingLM:
    """A live backend that must never be reached."""

    name = "scripted:ipo_digits_script.json"  # the recorded model name

    def generate(self, messages, **sampling):
        raise AssertionError("the recorded search made a language-model call")


def test_recorded_smoke_search_replays_identically_and_makes_no_call(tmp_path, monkeypatch):
    import ctta.clip_prompting.llm_search as llm_search
    from ctta.llm import ReplayingLM, ReplayLog

    log = tmp_path / "log.jsonl"
    log.write_bytes(LOG.read_bytes())
    monkeypatch.setattr(llm_search, "search_llm", lambda cfg, *_: ReplayingLM(RaisingLM(), ReplayLog(cfg.llm_log)))
    summary = run_smoke("ipo_digits", tmp_path / "run", (f"strategy.llm_log={log}",))
    assert_base_new_hm(summary)
    rows = json.loads((tmp_path / "run" / "search_history.json").read_text())
    assert [r["candidate"] for r in rows] == SMOKE_PROMPTS
    assert [r["step"] for r in rows] == [-1, 0, 0, 1] and [r["score"] for r in rows] == SMOKE_SCORES
    events = json.loads((tmp_path / "run" / "llm_events.json").read_text())
    skipped = {"experience": 0, "step": 1, "skipped": "A bag of the digit <CLASS>.", "reason": "duplicate"}
    assert skipped in events
    best = max(rows, key=lambda r: (r["score"], -r["loss"]))["candidate"]  # training score, then lower loss
    assert json.loads((tmp_path / "run" / "best_prompt.json").read_text()) == best == SMOKE_PROMPTS[2]
    assert summary["base_acc"] > 0.8 and summary["new_acc"] > 0.8  # the shipped trained CLIP, not chance
    assert log.read_bytes() == LOG.read_bytes()  # nothing appended


def test_committed_log_is_the_record_of_the_current_requests(tmp_path):
    """Recording again with the canned answers gives the committed log's requests and answers (re-record the log
    with the command in configs/smoke/ipo_digits.yaml when the meta-prompt changes)."""
    log = tmp_path / "log.jsonl"
    run_smoke("ipo_digits", tmp_path / "run", (f"strategy.llm=scripted:{SCRIPT}", f"strategy.llm_log={log}"))

    def records(path):
        return [{k: r[k] for k in ("key", "occurrence", "messages", "sampling", "responses")}
                for r in map(json.loads, path.read_text().splitlines())]

    assert records(log) == records(LOG)


def test_missing_replay_entry_fails_with_one_message_naming_the_request(tmp_path):
    from ctta.llm import LLMReplayMissing

    with pytest.raises(LLMReplayMissing) as err:  # a third step was never recorded
        run_smoke("ipo_digits", tmp_path / "run", (f"strategy.llm_log={LOG}", "strategy.steps=3"))
    message = str(err.value)
    assert "\n" not in message and str(LOG) in message and "occurrence 0" in message
    assert "starts 'Your task is to write an instruction <INS>" in message


# ----------------------------------------------------------------------------------------- class-incremental
def test_class_incremental_searches_each_experience_seeded_with_the_previous_best(tiny, tmp_path):
    answers = ["<INS>a <CLASS> digit</INS>", "<INS>the number <CLASS></INS>"]
    strategy, bench = llm_search_on_class_incremental("ipo", tiny, answers, tmp_path, steps=1, per_step=1)
    strategy.train(bench.train_stream[0])
    first_best = strategy.best_prompt
    assert first_best in ("a photo of a <CLASS>.", "A <CLASS> digit")
    strategy.train(bench.train_stream[1])
    rows = strategy.history.rows
    assert [(r["experience"], r["step"]) for r in rows][:2] == [(0, -1), (0, 0)]
    again = [r["candidate"] for r in rows if r["experience"] == 1 and r["step"] == -1]
    assert again == list(dict.fromkeys(["a photo of a <CLASS>.", first_best]))  # the previous best is scored again
    assert [r["candidate"] for r in rows if r["experience"] == 1 and r["step"] == 0] == ["The number <CLASS>"]
    names = list(DIGIT_NAMES)
    assert strategy.seen == list(range(10))
    assert strategy.texts_for(names) == [[strategy.best_prompt.replace("<CLASS>", n)] for n in names]


def test_evaluation_alone_needs_no_language_model(tiny):
    from avalanche.training.plugins import EvaluationPlugin

    from ctta.registry import STRATEGIES
    from tests import _conformance_cases as cc

    model, tok = tiny
    bench = cc.class_incremental(*cc.digits(20, 20))
    strategy = STRATEGIES.get("ipo").builder(model=model, tokenizer=tok, classnames=list(DIGIT_NAMES),
                                             evaluator=EvaluationPlugin(loggers=[]))  # llm: replay, no log
    strategy.eval(bench.test_stream[0])
    assert strategy._llm is None
    assert strategy.model.class_texts(["one"]) == [["a photo of a one."]]
    with pytest.raises(ValueError, match="llm=replay needs a log file"):
        strategy.llm  # noqa: B018
