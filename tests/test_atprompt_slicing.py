"""Issue 29: ATPrompt's official slicing of attribute words that span several BPE tokens (the default), the
whole-word switch, and identical inputs for one-token words; on a hand-made vocabulary."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.atprompt import ATTRIBUTES, ATPCoOpConfig, ATPMaPLeConfig, ATPModel

SOS, EOT = 49406, 49407
VOCAB = {"x": 100, "playfulness": (200, 201), "energy": 300, "shape": 400, "size": 401, "cat": 500, "dog": 501}
VOCAB["."] = 600


class HandTokenizer:
    """A hand-made vocabulary (ids inside the tiny CLIP's table) where "playfulness" is two tokens."""

    sot_token_id, eot_token_id = SOS, EOT

    def encode(self, text: str) -> list[int]:
        out = []
        for word in text.lower().replace(".", " . ").split():
            ids = VOCAB[word]
            out += list(ids) if isinstance(ids, tuple) else [ids]
        return out

    def __call__(self, texts) -> torch.Tensor:
        rows = torch.zeros(len(texts), 77, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [SOS, *self.encode(t), EOT]
            rows[i, : len(ids)] = torch.tensor(ids)
        return rows


def _model(tiny, attributes, slicing, cfg_cls=ATPCoOpConfig, **kw):
    model, _ = tiny
    torch.manual_seed(0)
    cfg = cfg_cls(attributes=attributes, attribute_slicing=slicing, **kw)
    return ATPModel(model, HandTokenizer(), ["cat", "dog"], cfg, depth=getattr(cfg, "depth", 0))


def _assert_encodes(tiny, m, soft_pos):
    """``m``'s text features equal the encoder run on a hand-built input: its tokens with the soft tokens at
    ``soft_pos``."""
    model, _ = tiny
    with torch.no_grad():
        soft = m.soft_tokens()
        ref = _straightforward(model, m.text.tokens.cpu(), soft_pos, soft)
        torch.testing.assert_close(m.text(soft), ref, atol=2e-5, rtol=1e-5)


def _straightforward(model, tokens, soft_pos, soft):
    """The encoder input built by hand: the token embeddings with the soft tokens written at ``soft_pos``."""
    x = model.token_embedding(tokens).clone()
    x[:, soft_pos] = soft
    x = x + model.positional_embedding
    for blk in model.transformer.resblocks:
        x = blk(x, attn_mask=model.attn_mask)
    return model.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def test_official_sequence_for_a_two_token_attribute(tiny):
    m = _model(tiny, ("playfulness", "energy"), "official", n_att=2, n_ctx=2)
    x = VOCAB["x"]
    play, ness = VOCAB["playfulness"]
    full = [SOS, x, x, play, ness, x, x, VOCAB["energy"], x, x, VOCAB["cat"], VOCAB["."], EOT]
    assert m.text.tokens[0, :13].tolist() == full  # the full text: its length and EOT position
    assert m.text.soft_pos[0].tolist() == [1, 2, 4, 5, 7, 8]  # one slot per attribute word
    # the encoder sees [SOS, A1, A1, play, A2, A2, X, ctx, ctx, X, cat, ., EOT]: "ness" and "energy" overwritten
    kept = [i for i in range(13) if i not in (1, 2, 4, 5, 7, 8)]
    assert [full[i] for i in kept] == [SOS, play, x, x, VOCAB["cat"], VOCAB["."], EOT]
    assert int(m.text.eot[0]) == 12
    _assert_encodes(tiny, m, [1, 2, 4, 5, 7, 8])


def test_whole_word_switch_keeps_the_word(tiny):
    m = _model(tiny, ("playfulness", "energy"), "whole", n_att=2, n_ctx=2)
    assert m.text.soft_pos[0].tolist() == [1, 2, 5, 6, 8, 9]  # ctx before the name: "energy" stays
    _assert_encodes(tiny, m, [1, 2, 5, 6, 8, 9])


def test_one_token_words_give_identical_inputs(tiny):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for cfg_cls, kw in ((ATPCoOpConfig, {}), (ATPMaPLeConfig, {"depth": 2})):
        a = _model(tiny, ("shape", "size"), "official", cfg_cls, **kw)
        b = _model(tiny, ("shape", "size"), "whole", cfg_cls, **kw)
        assert torch.equal(a.text.tokens, b.text.tokens) and torch.equal(a.text.soft_pos, b.text.soft_pos)
        assert a.text._deep_slice() == b.text._deep_slice() and a.text.name_start == b.text.name_start
        with torch.no_grad():
            assert torch.equal(a(images), b(images))


def test_maple_atp_deep_offset_uses_n_ctx(tiny):
    """The official deep-prompt offset is ``1 + n_attributes * (n_ctx + 1)``, also when n_att != n_ctx."""
    official = _model(tiny, ("shape", "size"), "official", ATPMaPLeConfig, n_att=1, n_ctx=2, depth=2)
    whole = _model(tiny, ("shape", "size"), "whole", ATPMaPLeConfig, n_att=1, n_ctx=2, depth=2)
    assert official.text._deep_slice() == (7, 9)  # 1 + 2 * (2 + 1)
    assert whole.text._deep_slice() == (5, 7)  # the context block itself: SOS A shape A size [ctx ctx]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = _model(tiny, ("shape", "size"), "official", ATPMaPLeConfig, n_att=1, n_ctx=2, depth=2, truncate=False)
    with torch.no_grad():  # a deep slice past the shared prefix falls back to the per-class path: still exact
        torch.testing.assert_close(official(images), full(images), atol=2e-5, rtol=1e-5)


def test_bad_slicing_and_the_attribute_table():
    with pytest.raises(ValueError, match="attribute_slicing"):
        ATPModel(None, None, ["a"], ATPCoOpConfig(attribute_slicing="tokens"))
    assert ATTRIBUTES["oxford_pets"] == ("playfulness", "energy")
