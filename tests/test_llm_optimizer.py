"""The LLM black-box optimizer (strategies/llm_optimizer.py): the request against a hand-written text, top/bottom
selection, the response parser on tricky answers, best-5 averaging, template files."""

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
