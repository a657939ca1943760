"""DPL (unofficial, from the paper arXiv 2308.10061): the decoupled attention against its closed form on hand-made
inputs, the decoupled block equal to the frozen block without prompts (and with ``keep_instance`` off), what trains,
the ViT-B/16 parameter count, base-to-new end to end."""

from __future__ import annotations

from pathlib import Path

import torch
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.dpl import DPLConfig, DPLModel, decoupled_attention, decoupled_block

from ctta.clip_prompting.vision import encode_image
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])


def test_decoupled_attention_closed_form():
    # one head, hd = 1 (scale 1): tokens 0, 1 instances, token 2 a prompt
    q = torch.tensor([[1.0], [0.0], [2.0]]).view(1, 1, 3, 1)
    k = torch.tensor([[0.0], [1.0], [2.0]]).view(1, 1, 3, 1)
    v = torch.tensor([[1.0], [3.0], [10.0]]).view(1, 1, 3, 1)
    out = decoupled_attention(q, k, v, n=1)[0, 0, :, 0]
    e = torch.exp
    # query 0: scores (0, 1, 2); A_II = (1 + 3e) / (1 + e), A_IP = 10, alpha = (1 + e) / (1 + e + e^2)
    s = torch.tensor([0.0, 1.0, 2.0])
    a_ii, alpha = (1 + 3 * e(s[1])) / (1 + e(s[1])), (1 + e(s[1])) / (1 + e(s[1]) + e(s[2]))
    torch.testing.assert_close(out[0], a_ii + (1 - alpha) * 10)
    torch.testing.assert_close(out[1], torch.tensor(2.0 + (1 / 3) * 10))  # query 1: scores 0, 0, 0
    s2 = torch.tensor([0.0, 2.0, 4.0])  # the prompt query: standard softmax over all keys
    torch.testing.assert_close(out[2], (torch.softmax(s2, 0) * torch.tensor([1.0, 3.0, 10.0])).sum())
    standard = decoupled_attention(q, k, v, n=1, keep_instance=False)
    torch.testing.assert_close(standard, torch.softmax(q @ k.transpose(-2, -1), -1) @ v)
    torch.testing.assert_close(decoupled_attention(q, k, v, n=0), standard)


def test_decoupled_block_matches_the_frozen_block(tiny):
    model, _ = tiny
    blk = model.visual.transformer.resblocks[0]
    x = torch.randn(2, 7, model.visual.class_embedding.shape[-1])
    with torch.no_grad():
        torch.testing.assert_close(decoupled_block(blk, x, 0), blk(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(decoupled_block(blk, x, 2, keep_instance=False), blk(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(decoupled_block(blk, x, 2), blk(x), atol=1e-4)


def test_model_forward_and_keep_instance_switch(tiny):
    model, tok = tiny
    x = torch.randn(2, 3, 32, 32)
    m = DPLModel(model, tok, NAMES, DPLConfig(n_vis=2, depth=2, keep_instance=False))
    with torch.no_grad():
        vis = list(m.vis)
        f = encode_image(model, x, vis[0], vis[1:], round_prompts=False)  # IVLP's vision side, standard attention
        torch.testing.assert_close(m(x), m.logits(f, m.text(m.ctx)), atol=1e-5, rtol=1e-5)


def test_only_the_prompts_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = STRATEGIES.get("dpl").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), n_vis=2, depth=2, epochs=1, batch_size=8,
        prec="fp32", warmup_epochs=0, lr=0.05, evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    trainable = [n for n, p in strategy.model.named_parameters() if p.requires_grad]
    assert trainable == ["ctx", "vis.0", "vis.1"]
    frozen = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    strategy.train(cc.class_incremental(train, test).train_stream[0])
    changed = {k for k, v in strategy.model.state_dict().items() if not torch.equal(v, frozen[k])}
    assert changed == {"ctx", "vis.0", "vis.1"}
    assert torch.isfinite(strategy.loss)


def test_vit_b16_trainable_parameter_count():
    """No published count in the available text: 9 layers x 4 vision tokens x 768 + 4 text tokens x 512."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = DPLModel(model, tok, NAMES, DPLConfig())
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 9 * 4 * 768 + 4 * 512 == 29_696


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("dpl_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
