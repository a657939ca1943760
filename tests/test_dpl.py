"""DPL (unofficial, from the paper arXiv 2308.10061): the decoupled attention against its closed form on hand-made
inputs, the decoupled block equal to the frozen block without prompts (and with ``keep_instance`` off), the
language-conditioned textual prompting (its key mask by hand, its text features against a hand-built 77-token
forward, its start state, the switch off), what trains, the ViT-B/16 parameter counts, base-to-new end to end."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.dpl import DPLConfig, DPLModel, decoupled_attention, decoupled_block, text_key_mask

from ctta.clip_prompting.vision import encode_image
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

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
    m = DPLModel(model, tok, NAMES, DPLConfig(n_vis=2, depth=2, keep_instance=False, textual=False))
    with torch.no_grad():
        vis = list(m.vis)
        f = encode_image(model, x, vis[0], vis[1:], round_prompts=False)  # IVLP's vision side, standard attention
        torch.testing.assert_close(m(x), m.logits(f, m.text(m.ctx)), atol=1e-5, rtol=1e-5)


def test_text_key_mask_by_hand():
    # L = 3 instance tokens, n = 1 prompt; class 0's EOT at 2, class 1's at 1; rows are queries, columns keys
    allowed = torch.isfinite(text_key_mask(torch.tensor([2, 1]), 3, 1, torch.float32, "cpu"))[:, 0]
    instance = [[1, 0, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1]]  # causal over instances, every prompt key
    assert allowed[0].tolist() == [[bool(a) for a in r] for r in [*instance, [1, 1, 1, 1]]]
    assert allowed[1].tolist() == [[bool(a) for a in r] for r in [*instance, [1, 1, 0, 1]]]  # not past the EOT


def _hand_text_features(m: DPLModel) -> torch.Tensor:
    """Each class on its own over all 77 positions; instance rows ``p_I / alpha @ v_I + p_P @ v_P`` with ``p`` the
    softmax over the allowed keys (causal instances + prompts; a prompt row: its text up to the EOT + prompts)."""
    tower, feats = m.text.tower, []
    prompts = m.text_prompts()
    for c in range(len(m.classnames)):
        tokens, eot, n = m.text.tokens[c], int(m.text.eot[c]), prompts.shape[1]
        x = tower.token_embedding(tokens).clone()
        x[m.text.soft_pos[c]] = m.ctx
        x = torch.cat([x + tower.positional_embedding, prompts[c]])  # (77 + n, D)
        length = len(tokens)
        allowed = torch.zeros(length + n, length + n, dtype=torch.bool)
        for i in range(length + n):
            allowed[i, : (i if i < length else eot) + 1] = True
            allowed[i, length:] = True
        for blk in tower.transformer.resblocks:
            attn = blk.attn
            h, width = attn.num_heads, x.shape[-1]
            q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (z.view(-1, h, width // h).transpose(0, 1) for z in (q, k, v))  # (h, T, hd)
            p = torch.softmax((q @ k.transpose(1, 2) / (width // h) ** 0.5).masked_fill(~allowed, float("-inf")), -1)
            alpha = p[:, :length, :length].sum(-1, keepdim=True)
            inst = p[:, :length, :length] / alpha @ v[:, :length] + p[:, :length, length:] @ v[:, length:]
            o = torch.cat([inst, p[:, length:] @ v], dim=1).transpose(0, 1).reshape(-1, width)
            x = x + blk.ls_1(attn.out_proj(o))
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        feats.append(tower.ln_final(x[eot]) @ tower.text_projection)
    return torch.stack(feats)


def test_textual_prompts_match_a_hand_built_forward(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    m = DPLModel(model, tok, ["zero", "one", "two", "three", "ice_cream"], DPLConfig(n_vis=2, depth=2, n_txt=3))
    p0 = m.text_prompts()
    torch.testing.assert_close(p0, m.txt_prompts.expand(5, -1, -1))  # start: the same prompts for every class
    with torch.no_grad():
        m.txt_net.linear2.weight.normal_(0, 0.5)  # condition on the class names
        m.txt_prompts.mul_(20)  # prompts large enough to matter
        prompts = m.text_prompts()
        assert not torch.allclose(prompts[0], prompts[1])
        torch.testing.assert_close(m.text_features(), _hand_text_features(m), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(m.text_features(), m.text(m.ctx), atol=1e-3)  # the prompts change the text
        m.set_classnames(["two", "zero"])  # the conditioning follows the class names
        torch.testing.assert_close(m.text_prompts(), prompts[[2, 0]])


def test_textual_off_is_the_plain_context(tiny):
    model, tok = tiny
    m = DPLModel(model, tok, NAMES, DPLConfig(n_vis=2, depth=2, textual=False))
    assert not hasattr(m, "txt_net")
    with torch.no_grad():
        torch.testing.assert_close(m.text_features(), m.text(m.ctx))


def test_only_the_prompts_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = STRATEGIES.get("dpl").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), n_vis=2, depth=2, epochs=1, batch_size=8,
        prec="fp32", warmup_epochs=0, lr=0.05, evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    trainable = [n for n, p in strategy.model.named_parameters() if p.requires_grad]
    declared = ["ctx", "vis.0", "vis.1", "txt_prompts", *(f"txt_net.linear{i}.{w}" for i in (1, 2)
                                                          for w in ("weight", "bias"))]  # fmt: skip
    assert sorted(trainable) == sorted(declared)
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed == set(declared)


def test_vit_b16_trainable_parameter_count():
    """No published count in the available text: 9 layers x 4 vision tokens x 768 + 4 text tokens x 512."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = DPLModel(model, tok, NAMES, DPLConfig(textual=False))
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 9 * 4 * 768 + 4 * 512 == 29_696
    m = DPLModel(model, tok, NAMES, DPLConfig())  # + textual prompts 4 x 512 and the meta-net 512 -> 32 -> 512
    textual = 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 29_696 + textual == 65_056


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("dpl_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
