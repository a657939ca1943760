"""Wave 2's shared core pieces: description files in each official format, the description banks (per-index and
mean), the adapters / calibrators and their residual mix, the cosine consistency loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ctta.clip_prompting.adapters import BottleneckAdapter, FeatureCalibrator, ResidualMix
from ctta.clip_prompting.descriptions import DescriptionBank, description_file, load_descriptions, match_classnames
from ctta.losses import cosine_consistency

COPROMPT = {"Sea lion": ["a marine mammal.", "it barks."], "cat": ["a small pet.", "it purrs."]}
MSGCOOP = {"sea lion": ["lives on rocks", "has flippers", "is grey", "swims"], "cat": ["has whiskers", "is small"]}


def _write(path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def test_coprompt_file_found_in_the_official_layout_and_by_path(tmp_path):
    f = _write(tmp_path / "gpt_file" / "fgvc_prompt.json", COPROMPT)
    assert load_descriptions(tmp_path, "coprompt", "fgvc_aircraft") == COPROMPT  # folder: gpt_file/<stem>_prompt.json
    assert load_descriptions(f, "coprompt") == COPROMPT  # the file itself
    assert description_file(tmp_path, "coprompt", "fgvc_aircraft").name == "fgvc_prompt.json"


def test_msgcoop_file_found_in_the_official_layout(tmp_path):
    _write(tmp_path / "MSGCoOp" / "desc" / "gpt-4.1" / "descriptions_top4" / "DescribableTextures.json", MSGCOOP)
    assert load_descriptions(tmp_path, "msgcoop", "dtd") == MSGCOOP
    _write(tmp_path / "flat" / "EuroSAT.json", MSGCOOP)
    assert load_descriptions(tmp_path / "flat", "msgcoop", "eurosat") == MSGCOOP


def test_missing_file_names_it_and_the_official_location(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"caltech_prompt\.json.*ShuvenduRoy/CoPrompt@a2a6c12.*gpt_file/"):
        load_descriptions(tmp_path, "coprompt", "caltech101")
    with pytest.raises(FileNotFoundError, match=r"Rain-Bus/MSGCoOp@a298669.*descriptions_top4/UCF101\.json"):
        load_descriptions(tmp_path / "nope.json", "msgcoop", "ucf101")


@pytest.mark.parametrize(
    "bad", [["a", "b"], {"cat": "a small pet"}, {"cat": []}, {"cat": ["ok", 3]}, {}], ids=str
)
def test_a_file_in_a_wrong_format_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=r"expected a JSON object \{class name: \[non-empty description strings\]\}"):
        load_descriptions(_write(tmp_path / "bad.json", bad), "coprompt")


def test_not_json_and_unknown_format_are_refused(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_descriptions(tmp_path / "x.json", "coprompt")
    with pytest.raises(ValueError, match="description format 'kapt'"):
        load_descriptions(tmp_path / "x.json", "kapt")


def test_class_names_match_exactly_then_case_insensitively_and_a_missing_one_is_named():
    assert match_classnames(COPROMPT, ["sea_lion", "cat"]) == [COPROMPT["Sea lion"], COPROMPT["cat"]]
    with pytest.raises(KeyError, match="'dog'"):
        match_classnames(COPROMPT, ["dog"])


def _encode(model, tok, texts):
    with torch.no_grad():
        return F.normalize(model.encode_text(tok(texts)).float(), dim=-1)


def test_per_index_bank_is_description_major_normalised_rows(tiny):
    model, tok = tiny
    bank = DescriptionBank(model, tok, COPROMPT, ["cat", "sea_lion"], reduce="index")
    assert bank.features.shape == (2, 2, model.text_projection.shape[1]) and bank.n_descriptions == 2
    torch.testing.assert_close(bank.features[1, 0], _encode(model, tok, ["it purrs."])[0])  # verbatim, row-normalised
    torch.testing.assert_close(bank.features[0, 1], _encode(model, tok, ["a marine mammal."])[0])
    with pytest.raises(ValueError, match="same count for every class"):
        DescriptionBank(model, tok, MSGCOOP, ["cat", "sea lion"], reduce="index")


def test_mean_bank_msgcoop_template_fp16_and_hicropl_renormalised(tiny):
    model, tok = tiny
    names = ["sea lion", "cat"]
    tpl = "a photo of {name}, {desc}"
    bank = DescriptionBank(model, tok, MSGCOOP, names, template=tpl, reduce="mean", round_fp16=True)
    want = _encode(model, tok, [f"a photo of sea lion, {d}" for d in MSGCOOP["sea lion"]]).mean(0)
    assert torch.equal(bank.features[0], want.half().float())  # mean of normalised rows, not re-normalised
    assert bank.features[0].norm() < 1
    renorm = DescriptionBank(model, tok, MSGCOOP, names, reduce="mean", renormalize=True)
    torch.testing.assert_close(renorm.features.norm(dim=-1), torch.ones(2))
    assert renorm.features_for(["cat"]).shape[0] == 1 and renorm.classnames == ["cat"]  # lazy recompute


def test_bottleneck_adapter_and_mix_closed_form():
    torch.manual_seed(0)
    a = BottleneckAdapter(8, 4)
    assert [n for n, _ in a.named_parameters()] == ["fc.0.weight", "fc.2.weight"]
    x = torch.randn(3, 8)
    w1, w2 = a.fc[0].weight, a.fc[2].weight
    branch = torch.relu(torch.relu(x @ w1.t()) @ w2.t())
    torch.testing.assert_close(ResidualMix(a, 0.2)(x), 0.2 * branch + 0.8 * x)


def test_feature_calibrator_closed_form_and_scheduled_ratio():
    torch.manual_seed(0)
    c = FeatureCalibrator(8)
    x = torch.randn(3, 8)
    h = F.layer_norm(x, (8,), c.post_ln.weight, c.post_ln.bias) @ c.FFN[0].weight.t() + c.FFN[0].bias
    cal = x + (h * torch.sigmoid(1.702 * h)) @ c.FFN[2].weight.t() + c.FFN[2].bias
    mix = ResidualMix(c, 0.05)
    torch.testing.assert_close(mix(x), 0.05 * cal + 0.95 * x)
    mix.set_ratio(0.05 + 0.0123, dtype=torch.float32)  # RESTORE's raise, re-created in float32
    assert mix.r == float(torch.tensor(0.0623, dtype=torch.float32)) != 0.0623
    assert "ratio" in mix.state_dict() and not any(n.endswith("ratio") for n, _ in mix.named_parameters())
    mix.half()
    assert mix.ratio.dtype == torch.float64  # a precision cast never rounds the ratio


def test_cosine_consistency_closed_form():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    want = 1 - (2**-0.5 + 1.0) / 2
    torch.testing.assert_close(cosine_consistency(a, b), torch.tensor(want))
    assert cosine_consistency(a, a) == 0
