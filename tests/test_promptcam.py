"""Explicit-attention hooks (``ctta.backbones.vit_attention``) and Prompt-CAM's class-token model."""

from __future__ import annotations

import timm
import torch
from ctta.strategies.promptcam import PromptCAMConfig, PromptCAMModel, cosine_warmup_lr

from ctta.backbones.vit import PromptedViT
from ctta.backbones.vit_attention import class_token_forward, explicit_attention, explicit_block

TINY = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=3)


def _vit(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY).eval()


def test_post_softmax_mask_equals_explicit_loop():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 5, generator=g) for _ in range(3))
    mask = (torch.rand(4, 4, generator=g) > 0.4).float()
    out, probs = explicit_attention(q, k, v, 0.5, post_mask=mask)
    for b in range(2):
        for h in range(3):
            for i in range(4):
                s = torch.stack([(q[b, h, i] * k[b, h, j]).sum() * 0.5 for j in range(4)])
                p = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum() * mask[i]  # softmax, then mask
                torch.testing.assert_close(probs[b, h, i], p)
                torch.testing.assert_close(out[b, h, i], sum(p[j] * v[b, h, j] for j in range(4)))


def test_blur_makes_the_row_uniform_in_the_blurred_heads_only():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 3, 4, 5, generator=g) for _ in range(3))
    _, plain = explicit_attention(q, k, v, 1.0)
    _, probs = explicit_attention(q, k, v, 1.0, blur=([1], [2]))
    torch.testing.assert_close(probs[0, 1, 2], torch.full((4,), 0.25))
    mask = torch.ones_like(plain, dtype=torch.bool)
    mask[0, 1, 2] = False
    torch.testing.assert_close(probs[mask], plain[mask])


def test_explicit_blocks_without_prompts_equal_timm():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32)
    t = PromptedViT(vit).embed(x)
    for blk in vit.blocks:
        t, probs = explicit_block(blk, t)
    torch.testing.assert_close(vit.norm(t), vit.forward_features(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 17))


def test_class_token_logits_match_a_hand_built_forward():
    torch.manual_seed(0)
    model = PromptCAMModel(_vit(), num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    vit, prompts = model.backbone.vit, model.prompts.detach()
    t = model.backbone.embed(x)
    for i, blk in enumerate(vit.blocks):  # timm's own blocks on [prompts_i, tokens]; prompt outputs dropped
        t = blk(torch.cat([prompts[i].expand(2, -1, -1), t], dim=1))
        t = t if i == len(vit.blocks) - 1 else t[:, 4:]
    want = model.head(vit.norm(t)[:, :4]).squeeze(-1)  # (B, P)
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


def test_class_token_attention_shape_and_blur_changes_only_the_blurred_logit_path():
    torch.manual_seed(0)
    model = PromptCAMModel(_vit(), num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    logits, probs = model.forward_with_attention(x)
    assert probs.shape == (1, 3, 4 + 17, 4 + 17)
    blurred, _ = model.forward_with_attention(x, blur_heads=[0, 1, 2], blur_rows=[2])
    torch.testing.assert_close(blurred[:, [0, 1, 3]], logits[:, [0, 1, 3]])  # other class rows untouched
    assert not torch.allclose(blurred[:, 2], logits[:, 2])


def test_class_token_forward_rejects_wrong_depth():
    vit = PromptedViT(_vit())
    try:
        class_token_forward(vit, torch.randn(1, 3, 32, 32), torch.zeros(2, 4, 24))
    except ValueError as err:
        assert "3 blocks" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_schedule_is_timm_cosine_with_warmup():
    cfg = PromptCAMConfig(lr=0.01, epochs=10, warmup_epochs=2, warmup_lr_init=0.0, lr_min=1e-6)
    assert cosine_warmup_lr(0, cfg) == 0.0
    assert abs(cosine_warmup_lr(1, cfg) - 0.005) < 1e-12
    assert abs(cosine_warmup_lr(5, cfg) - (1e-6 + 0.5 * (0.01 - 1e-6))) < 1e-12  # cos(pi/2) = 0
