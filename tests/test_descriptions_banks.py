"""Description banks of issue 23 (block R2): CuPL / generic JSON banks, the class-name alignment table, template
lists and FuDD's pairwise files, on small self-written files."""

from __future__ import annotations

import json

import pytest

from ctta.clip_prompting.descriptions import (
    PairwiseBank,
    align_classnames,
    load_alignment,
    load_descriptions,
    load_pairwise,
    load_templates,
    match_classnames,
)
from ctta.clip_prompting.prompt_templates import CLIP_IMAGENET_TEMPLATES, TIP_TEMPLATES

BANK = {"Abyssinian": ["a cat with a ticked coat."], "sea lion": ["a marine mammal.", "a seal-like animal."]}
PAIRS = {
    "0_1": {"classes": [0, 1], "prompt_pairs": [{"attr_type": "shape", "prompt_pair": ["a0", "b0"]},
                                                {"attr_type": "size", "prompt_pair": ["a1", "b1"]}]},
    "1_2": {"classes": [2, 1], "prompt_pairs": [{"attr_type": "color", "prompt_pair": ["c2", "b2"]}]},
}  # fmt: skip


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_cupl_layout_and_generic_json(tmp_path):
    _write(tmp_path / "all_prompts/full_prompts/pets_prompts_full.json", BANK)
    _write(tmp_path / "imagenet_prompts/CuPL_image_prompts.json", {"tench": ["a fish."]})
    assert load_descriptions(tmp_path, "cupl", "pets") == BANK  # the repository folder
    assert load_descriptions(tmp_path, "cupl", "imagenet_v2") == {"tench": ["a fish."]}
    _write(tmp_path / "all_prompts/base_prompts/pet_prompts_base.json", {"Abyssinian": ["a cat."]})
    assert load_descriptions(tmp_path, "cupl_base", "pets") == {"Abyssinian": ["a cat."]}  # base files: "pet"
    flat = _write(tmp_path / "flat/pets_prompts_full.json", BANK)
    assert load_descriptions(flat.parent, "cupl", "oxford_pets") == BANK  # the files in one folder
    assert load_descriptions(flat, "json") == BANK
    assert load_descriptions("builtin:digits_cupl")["one"][0].startswith("A handwritten one")


def test_missing_files_name_the_official_location(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sarahpratt/CuPL@719619c.*all_prompts/full_prompts/"
                                                r"airplane_prompts_full\.json"):  # fmt: skip
        load_descriptions(tmp_path, "cupl", "aircraft")
    with pytest.raises(FileNotFoundError, match=r"nope\.json not found; expected a \{class name: \[texts\]\} JSON"):
        load_descriptions(tmp_path / "nope.json", "json")
    with pytest.raises(FileNotFoundError, match=r"BatsResearch/fudd@3226423.*differential_descriptions/"
                                                r"dtd_prompt_pairs\.json"):  # fmt: skip
        load_pairwise(tmp_path, "dtd")
    _write(tmp_path / "differential_descriptions/dtd_prompt_pairs.json", PAIRS)
    with pytest.raises(FileNotFoundError, match=r"differential_descriptions/dtd_class_names\.json"):
        load_pairwise(tmp_path, "dtd")


def test_alignment_table_and_every_unmatched_class_in_one_error(tmp_path):
    assert match_classnames(BANK, ["abyssinian", "sea_lion"]) == [BANK["Abyssinian"], BANK["sea lion"]]
    table = _write(tmp_path / "map.json", {"Abyssinian_cat": "Abyssinian", "otaria": "sea lion"})
    got = match_classnames(BANK, ["Abyssinian_cat", "otaria"], load_alignment(table))
    assert got == [BANK["Abyssinian"], BANK["sea lion"]]
    with pytest.raises(KeyError, match=r"no descriptions for classes \['dog', 'cat'\].*alignment table"):
        match_classnames(BANK, ["dog", "sea lion", "cat"])
    with pytest.raises(KeyError, match=r"\['x'\]"):
        align_classnames(["A", "a"], ["x", "b"], {"b": "A"})  # the table wins; 'x' has no key
    assert align_classnames(["A", "B"], ["a"]) == ["A"]
    with pytest.raises(ValueError, match="ctta class name: bank key"):
        load_alignment(_write(tmp_path / "bad.json", ["a", "b"]))
    with pytest.raises(FileNotFoundError, match="alignment table"):
        load_alignment(tmp_path / "none.json")


def test_template_lists(tmp_path):
    assert load_templates(_write(tmp_path / "t.json", ["a {}.", "itap of a {}."])) == ["a {}.", "itap of a {}."]
    assert load_templates("builtin:clip_imagenet") == list(CLIP_IMAGENET_TEMPLATES)
    assert len(CLIP_IMAGENET_TEMPLATES) == 80 == len(set(CLIP_IMAGENET_TEMPLATES))
    assert set(TIP_TEMPLATES) <= set(CLIP_IMAGENET_TEMPLATES)
    for bad in (["no slot"], [], {"a": "{}"}, ["{}", 3]):
        with pytest.raises(ValueError, match="template strings"):
            load_templates(_write(tmp_path / "bad.json", bad))


def test_pairwise_bank_sides_missing_pairs_and_pooling(tmp_path):
    _write(tmp_path / "differential_descriptions/pets_class_names.json", ["ant", "bee", "wild_cat"])
    pairs = _write(tmp_path / "differential_descriptions/pets_prompt_pairs.json", PAIRS)
    for bank in (load_pairwise(tmp_path, "oxford_pets"), load_pairwise(pairs)):
        assert bank.classnames == ["ant", "bee", "wild cat"]
        assert bank.pair_texts(1, 0) == (["b0", "b1"], ["a0", "a1"])
        assert bank.pair_texts(1, 2) == (["b2"], ["c2"])  # the file lists the pair as classes [2, 1]
        assert bank.pair_texts(0, 2) == (["a photo of a ant."], ["a photo of a wild cat."])  # no such pair
        assert [bank.pooled(c) for c in range(3)] == [["a0", "a1"], ["b0", "b1", "b2"], ["c2"]]
    lonely = PairwiseBank(["x", "y"], {})
    assert lonely.pooled(1) == ["a photo of a y."]
    digits = load_pairwise("builtin:digits")
    assert digits.classnames[7] == "seven" and digits.pair_texts(7, 1)[0][0].startswith("a seven")


@pytest.mark.parametrize("bad", [
    {"0_1": {"classes": [0, 5], "prompt_pairs": []}},
    {"0_1": {"classes": [0, 1], "prompt_pairs": [{"prompt_pair": ["a", "b", "c"]}]}},
    {"0_1": {"classes": [0], "prompt_pairs": []}},
    {"0_1": ["a", "b"]},
], ids=["id-out-of-range", "three-texts", "one-class", "not-an-object"])  # fmt: skip
def test_pairwise_files_in_a_wrong_shape_are_refused(tmp_path, bad):
    _write(tmp_path / "x_class_names.json", ["a", "b"])
    with pytest.raises(ValueError, match=r"pair '0_1': expected .*class ids below 2"):
        load_pairwise(_write(tmp_path / "x_prompt_pairs.json", bad))
    _write(tmp_path / "y_class_names.json", {"a": 0})
    with pytest.raises(ValueError, match="JSON list of class names"):
        load_pairwise(_write(tmp_path / "y_prompt_pairs.json", PAIRS))
