"""IPO (strategies/ipo.py): the meta-prompt against hand-written texts, the parser on tricky completions, the
reference's candidate checks, the image-description files."""

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
