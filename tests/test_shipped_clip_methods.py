"""Every CLIP prompt learner runs on the shipped ``ctta-tiny-clip-digits`` and its compact ``VocabTokenizer`` (issue 21
item 1): the tokenizer gives the prompted towers what open_clip's ``SimpleTokenizer`` gives (``encode``, start/end
ids), unknown words become one unknown token per byte-pair piece (the ``X`` placeholder, attribute words), an
unknown ``ctx_init`` word is named, and a text longer than the 16-token context is refused.

Before the fix each method failed at construction with ``TypeError: VocabTokenizer: the prompted text tower needs
open_clip's SimpleTokenizer (BPE)`` (exit 1 from the CLI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin

from ctta.data.digits import DIGIT_NAMES
from ctta.pretrained import create_tiny_clip
from ctta.pretrained.archs import CLIP_CONTEXT_LENGTH
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc

ROOT = Path(__file__).resolve().parents[1]
#: small settings per method (the smoke configs'); the default ATPrompt / MaPLe+ATP lengths do not fit 16 tokens
METHODS = {
    "coop": {},
    "cocoop": {},
    "maple": dict(depth=2),
    "promptsrc": dict(depth_text=2, depth_vision=2, teacher_templates="hand", gpa_mean=1, gpa_std=1),
    "pre": {},
    "coop_atp": dict(attributes=("shape", "size")),
    "maple_atp": dict(attributes=("shape", "size"), n_att=2, n_ctx=2, depth=2),
}


@pytest.fixture(scope="module")
def shipped():
    torch.manual_seed(0)
    return create_tiny_clip()


def test_encode_is_the_ids_between_start_and_end(shipped):
    _, tok = shipped
    text = "X X a photo of a three."
    row = tok([text])[0].tolist()
    ids = tok.encode(text)
    assert row[0] == tok.sot_token_id and row[1 + len(ids)] == tok.eot_token_id and row[1 : 1 + len(ids)] == ids
    assert tok.encode("X") == [tok.UNK] and len(tok.encode("X X X X")) == 4  # one placeholder, one token
    assert tok.encode("shape") == [tok.UNK] and tok.unknown_words("a shape of a three") == ["shape"]
    assert tok.UNK not in tok.encode("a photo of a ankle boot.")


def test_unknown_words_warn_once_and_the_placeholder_never():
    import warnings

    from ctta.pretrained import VocabTokenizer
    from ctta.pretrained.archs import caption_vocabulary

    tok = VocabTokenizer(caption_vocabulary())
    with pytest.warns(UserWarning, match=r"^'shape', 'zebra' not in this CLIP's vocabulary"):
        tok(["X X shape X a zebra.", "X X shape X a zebra."])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("X X shape")  # already named; X is the soft-token placeholder
        tok(["a photo of a zebra."])


def test_text_longer_than_the_context_is_refused(shipped):
    _, tok = shipped
    with pytest.raises(ValueError, match=f"19 tokens .* holds {CLIP_CONTEXT_LENGTH}"):
        tok(["X " * 14 + "a three."])


def test_unknown_ctx_init_word_is_named(shipped):
    from ctta.strategies.coop import CoOpConfig, CoOpModel

    model, tok = shipped
    with pytest.raises(ValueError, match=r"ctx_init='a nice photo of': 'nice' not in .* photo"):
        CoOpModel(model, tok, list(DIGIT_NAMES), CoOpConfig(ctx_init="a nice photo of"))


def test_coop_initial_context_is_the_zero_shot_clip(shipped):
    from ctta.strategies.coop import CoOpConfig, CoOpModel

    model, tok = shipped
    m = CoOpModel(model, tok, list(DIGIT_NAMES), CoOpConfig())
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n}." for n in DIGIT_NAMES]))
        torch.testing.assert_close(m.text_features(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_constructs_and_steps_with_the_vocab_tokenizer(shipped, name):
    """A script: ``Method(model=..., tokenizer=tok, classnames=...)``, one epoch over 40 digits, its prompts move."""
    model, tok = shipped
    train, test = cc.digits(40, 20)
    bench = cc.class_incremental(train, test)
    strategy = STRATEGIES.get(name).builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, evaluator=EvaluationPlugin(loggers=[]), **METHODS[name],
    )  # fmt: skip
    before = {k: p.detach().clone() for k, p in strategy.model.named_parameters() if p.requires_grad}
    strategy.train(bench.train_stream[0])
    after = dict(strategy.model.named_parameters())
    assert before and any(not torch.equal(v, after[k].detach()) for k, v in before.items())
    assert torch.isfinite(strategy.loss).all()


def test_cli_coop_smoke_config_with_the_shipped_clip(tmp_path, capsys):
    from ctta.runner.cli import main

    args = ["run", str(ROOT / "configs/smoke/coop_digits.yaml"), "backbone.model=ctta-tiny-clip-digits",
            "backbone.pretrained=ctta", "device=cpu", f"log.out_dir={tmp_path}", "log.progress=false"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["hm"] > 0.6  # measured 0.91 (a random tiny CLIP: 0.15)


def test_tpt_starts_from_a_coop_context_of_the_shipped_clip(shipped, tmp_path):
    from ctta.strategies.coop import CoOpConfig, CoOpModel
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    from ctta.clip_prompting.model import save_text_context

    model, tok = shipped
    coop = CoOpModel(model, tok, list(DIGIT_NAMES), CoOpConfig())
    with torch.no_grad():
        coop.ctx.add_(0.05)
    path = save_text_context(coop, tmp_path / "coop.pth")
    tuner = PromptTuner(model, tok, list(DIGIT_NAMES), TPTConfig(init=f"coop:{path}"))
    with torch.no_grad():
        torch.testing.assert_close(tuner.model.text(), coop.text_features(), atol=1e-5, rtol=1e-5)
