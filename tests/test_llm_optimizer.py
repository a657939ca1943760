"""The LLM black-box optimizer (strategies/llm_optimizer.py): the request against a hand-written text, top/bottom
selection, the response parser on tricky answers, best-5 averaging, template files, the recorded smoke search and
the class-incremental pool."""

import json
import random

import pytest
from ctta.strategies.llm_optimizer import (
    best5_average,
    blackbox_message,
    load_template_file,
    parse_templates,
    top_bottom,
)

from ctta.clip_prompting.llm_search import Scored
from ctta.clip_prompting.prompt_templates import CLIP_IMAGENET_TEMPLATES
from ctta.data.digits import DIGIT_NAMES
from tests.helpers import ROOT, llm_search_on_class_incremental, run_smoke

POOL = [Scored("a {}.", 40.0, 1.0, -1), Scored("b {}.", 70.0, 1.0, -1), Scored("c {}.", 40.0, 0.5, -1),
        Scored("d {}.", 10.0, 2.0, -1), Scored("e {}.", 70.0, 0.9, 0), Scored("f {}.", 55.0, 1.0, 0)]


def test_top_and_bottom_templates_stable_order():
    good, bad = top_bottom(POOL, 3)
    assert good == ["b {}.", "e {}.", "f {}."]  # equal scores keep their order
    assert bad == ["d {}.", "c {}.", "a {}."]  # worst first: the reversed ranking
    assert top_bottom(POOL[:2], 3) == (["b {}.", "a {}."], ["a {}.", "b {}."])


def test_message_text():
    text = blackbox_message(POOL, k=2, n=1, message="n={n}\nGOOD\n{good}\nBAD\n{bad}\n")
    assert text == "n=1\nGOOD\nb {}.\ne {}.\nBAD\nd {}.\nc {}.\n"
    default = blackbox_message(POOL)
    assert "Good templates:\nb {}.\ne {}.\nf {}.\n\nBad templates:\nd {}.\nc {}.\na {}.\n" in default
    assert "fewer than 15 words" in default and "starting with '- '" in default


@pytest.mark.parametrize("response, expected", [
    ("- a blurry photo of a {}.", ["a blurry photo of a {}."]),
    ("Sure! Here is a better template:\n- itap of a {}.\nHope this helps.", ["itap of a {}."]),
    ("- a {} in the wild.\n- a {} at night.", ["a {} in the wild.", "a {} at night."]),
    ("-a {} without the space.", []),  # no '- ' line: invalid
    ("  - an indented {}.", []),  # must start the line
    ("- a photo of a {}.\n- a photo without slot.", []),  # one line without {} spoils the response
    ("- a photo of {} and {1}.", []),  # str.format refuses it
    ("- a {name} photo {}.", []),  # named field: refused
    ("- {}", ["{}"]),
    ("", []),
])
def test_parse_templates(response, expected):
    assert parse_templates(response) == expected


def test_best5_average():
    assert best5_average(POOL) == pytest.approx((70 + 70 + 55 + 40 + 40) / 5)
    assert best5_average(POOL[:4]) is None


def test_template_file_and_seeded_sample(tmp_path):
    lines = [f"caption {i} of a {{}}." for i in range(20)]
    path = tmp_path / "laion.txt"
    path.write_text("\n".join(lines) + "\n")
    assert load_template_file(path) == lines
    random.seed(3)  # the reference: random.seed(seed); random.sample(templates, n)
    assert load_template_file(path, sample_size=5, seed=3) == random.sample(lines, 5)
    assert load_template_file(path, sample_size=50, seed=0) == random.Random(0).sample(lines, 20)
    with pytest.raises(FileNotFoundError, match="laion_coco_samples_size_80_seed_<seed>.txt"):
        load_template_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------- recorded search (smoke)
LOGS = ROOT / "configs" / "smoke" / "llm_logs"
LOG = LOGS / "llm_optimizer_digits.jsonl"


class RaisingLM:
    """A live backend that must never be reached."""

    name = "scripted:llm_optimizer_digits_script.json"  # the recorded model name

    def generate(self, messages, **sampling):
        raise AssertionError("the recorded search made a language-model call")


def _records(path):
    return [{k: r[k] for k in ("key", "occurrence", "messages", "sampling", "responses")}
            for r in map(json.loads, path.read_text().splitlines())]


def test_recorded_smoke_search_replays_identically_and_makes_no_call(tmp_path, monkeypatch):
    import ctta.clip_prompting.llm_search as llm_search
    from ctta.llm import ReplayingLM, ReplayLog

    log = tmp_path / "log.jsonl"
    log.write_bytes(LOG.read_bytes())
    monkeypatch.setattr(llm_search, "search_llm", lambda cfg, *_: ReplayingLM(RaisingLM(), ReplayLog(cfg.llm_log)))
    summary = run_smoke("llm_optimizer_digits", tmp_path / "run", (f"strategy.llm_log={log}",))
    assert summary["top1"] > 0.8  # the shipped trained CLIP, not chance
    out = tmp_path / "run"
    rows = json.loads((out / "search_history.json").read_text())
    pool = (LOGS / "llm_optimizer_digits_templates.txt").read_text().splitlines()
    assert [r["candidate"] for r in rows[:10]] == pool and {r["step"] for r in rows[:10]} == {-1}
    # step 2's first answer had no '- ' line and was asked again (same request, occurrence 1)
    assert [(r["step"], r["candidate"]) for r in rows[10:]] == [
        (0, "a blurry photo of a {}."), (1, "a photo of a sneaker {}."), (2, "a close-up photo of the {}."),
        (2, "a drawing of a small {}.")]
    assert max(r["score"] for r in rows[:10]) == 90.0 and [r["score"] for r in rows[10:]] == [100.0, 50.0, 90.0, 100.0]
    assert [r["occurrence"] for r in _records(log)] == [0, 0, 0, 1]
    best5 = json.loads((out / "best5.json").read_text())
    assert [b["step"] for b in best5] == [0, 1, 2, 3] and best5[-1]["best5"] > best5[0]["best5"]
    top5 = sorted((r["score"] for r in rows), reverse=True)[:5]
    assert best5[-1]["best5"] == pytest.approx(sum(top5) / 5)
    best = max(rows, key=lambda r: r["score"])["candidate"]  # the first of the highest training accuracy
    assert json.loads((out / "best_template.json").read_text()) == best == "a blurry photo of a {}."
    assert log.read_bytes() == LOG.read_bytes()


def test_committed_log_is_the_record_of_the_current_requests(tmp_path):
    log = tmp_path / "log.jsonl"
    script = LOGS / "llm_optimizer_digits_script.json"
    run_smoke("llm_optimizer_digits", tmp_path / "run", (f"strategy.llm=scripted:{script}", f"strategy.llm_log={log}"))
    assert _records(log) == _records(LOG)


# ----------------------------------------------------------------------------------------- class-incremental
def test_class_incremental_pool_keeps_the_found_templates(tiny, tmp_path):
    answers = ["- a digit {}.", "- the handwritten {}."]
    strategy, bench = llm_search_on_class_incremental("llm_optimizer", tiny, answers, tmp_path, steps=1)
    for experience in bench.train_stream:
        strategy.train(experience)
    rows = strategy.history.rows
    again = [r["candidate"] for r in rows if r["experience"] == 1 and r["step"] == -1]
    assert again == [*CLIP_IMAGENET_TEMPLATES, "a digit {}."]  # the pool plus the template found before
    assert [r["candidate"] for r in rows if r["experience"] == 1 and r["step"] == 0] == ["the handwritten {}."]
    names = list(DIGIT_NAMES)
    assert strategy.texts_for(names) == [[strategy.best_template.format(n)] for n in names]
