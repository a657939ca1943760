"""PRE (re-parameterised CoOp context) and ATPrompt (attribute blocks on CoOp and MaPLe)."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.atprompt import ATPCoOpConfig, ATPMaPLeConfig, ATPModel
from ctta.strategies.pre import PREConfig, PREModel

from ctta.clip_prompting import PromptedText, encode_image

NAMES = ["cat", "dog", "sea lion", "airplane"]


def test_pre_context_passes_through_the_encoder(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    m = PREModel(model, tok, NAMES, PREConfig())
    with torch.no_grad():
        lstm_out = m.encoder.lstm(m.ctx)[0]
        torch.testing.assert_close(m.text_features(), m.text(m.ctx + lstm_out))
        assert lstm_out.shape == m.ctx.shape and m.encoder.lstm.bidirectional
    m(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"ctx", *(f"encoder.lstm.{n}" for n, _ in m.encoder.lstm.named_parameters())}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters() if p.requires_grad)
    two = PREModel(model, tok, NAMES, PREConfig(encoder="LSTM2", residual=False))
    assert two.encoder.lstm.num_layers == 2 and not two.encoder.residual
    with pytest.raises(ValueError, match="encoder"):
        PREModel(model, tok, NAMES, PREConfig(encoder="MLP1"))


def test_atprompt_text_layout(tiny):
    model, tok = tiny
    m = ATPModel(model, tok, NAMES, ATPCoOpConfig(attributes=("shape", "size"), n_att=2, n_ctx=3))
    x = tok.encode("X")[0]
    name = tok.encode("sea lion")
    shape, size = tok.encode("shape"), tok.encode("size")
    assert m.text.tokens[2, :14].tolist() == [
        tok.sot_token_id, x, x, *shape, x, x, *size, x, x, x, *name, tok.encode(".")[0], tok.eot_token_id
    ]  # fmt: skip
    assert m.text.soft_pos[2].tolist() == [1, 2, 4, 5, 7, 8, 9]
    assert m.soft_tokens().shape == (7, model.token_embedding.embedding_dim)
    assert [p.std().item() < 0.02 for p in m.att] == [True, True]  # N(0, 0.01) attribute blocks


def test_atprompt_maple_deep_prompts_replace_the_context_block_only(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    cfg = ATPMaPLeConfig(attributes=("shape",), n_att=2, n_ctx=2, depth=2)
    m = ATPModel(model, tok, NAMES, cfg, depth=2)
    assert m.text._deep_slice() == (4, 6)  # SOS, A1 A1, "shape" kept; ctx at positions 4-5
    full = PromptedText(model, tok, NAMES, m.text.layout, truncate=False, shared_prefix=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        deep = list(m.deep_text)
        g = full(m.soft_tokens(), deep)
        f = encode_image(model, x, m.coupling.proj(m.ctx), [m.coupling.deep[0](deep[0])])
        torch.testing.assert_close(m(x), m.logits(f, g), atol=1e-4, rtol=1e-4)


def test_multi_token_attribute_is_kept_whole(tiny):
    model, tok = tiny
    cfg = ATPCoOpConfig(attributes=("preparation method",), n_att=1, n_ctx=1, attribute_slicing="whole")
    m = ATPModel(model, tok, NAMES, cfg)
    n_words = len(tok.encode("preparation method"))
    assert m.text.soft_pos[0].tolist() == [1, 2 + n_words]
    official = ATPModel(model, tok, NAMES, ATPCoOpConfig(attributes=("preparation method",), n_att=1, n_ctx=1))
    assert official.text.soft_pos[0].tolist() == [1, 3]  # the default: the reference's one-token slicing
