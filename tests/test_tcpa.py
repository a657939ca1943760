"""TCPA: per-token pool matching and key loss against brute force, the group mask, prompts as keys/values only."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from ctta.strategies.tcpa import TCPAConfig, TCPAModel, fourier_prompts, group_mask, token_select

from ctta.backbones.vit_attention import explicit_block
from ctta.prompts.pool import PromptPool


def _vit(depth: int = 2):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                             depth=depth, embed_dim=24, num_heads=3).eval()  # fmt: skip


def test_token_select_is_cosine_top_k_per_token():
    torch.manual_seed(0)
    pool = PromptPool(5, 8, 1, key_init="uniform", prompt_init="uniform")
    tokens = torch.randn(2, 3, 8)
    idx, dist = token_select(pool, tokens, 2)
    for b in range(2):
        for t in range(3):
            cos = [float(F.cosine_similarity(tokens[b, t], pool.keys[p].detach(), dim=0)) for p in range(5)]
            best = sorted(range(5), key=lambda p: -cos[p])[:2]
            assert idx[b, t].tolist() == best
            torch.testing.assert_close(dist[b, t], torch.tensor([1 - cos[p] for p in best]))


def test_key_loss_closed_form_on_one_layer():
    cfg = TCPAConfig(pool_size_cls=4, pool_size_image=5, top_k=2, key_weight=0.5, prompt_dropout=0.0)
    model = TCPAModel(_vit(depth=1), 3, cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    model(x)
    t = model.backbone.embed(x)  # layer-0 input

    def mean_chosen(keys, q, k):
        d = 1 - F.cosine_similarity(q.unsqueeze(-2), keys, dim=-1)  # (..., P)
        return d.sort(dim=-1).values[..., :k].mean()

    want = 0.5 * (mean_chosen(model.cls_pools[0].keys, t[:, 0], 2) + mean_chosen(model.img_pools[0].keys, t[:, 1:], 2))
    torch.testing.assert_close(model.key_loss, want)


def test_group_mask_rows():
    idx_c, idx_i = torch.tensor([[1, 3]]), torch.tensor([[[0, 2], [4, 1]]])  # B=1, N=2 patches, k=2
    m = group_mask(idx_c, idx_i, 4, 5)[0, 0]  # (1+N, 1+N+4+5)
    assert m.shape == (3, 12)
    assert m[:, :3].eq(1).all()
    assert m[0, 3:7].tolist() == [0, 1, 0, 1] and m[0, 7:].sum() == 0
    assert m[1, 3:7].sum() == 0 and m[1, 7:].tolist() == [1, 0, 1, 0, 0]
    assert m[2, 7:].tolist() == [0, 1, 0, 0, 1]


def test_masked_block_with_kv_prompts_equals_explicit_attention():
    blk = _vit(1).blocks[0]
    torch.manual_seed(1)
    x, p = torch.randn(2, 4, 24), torch.randn(3, 24)
    mask = (torch.rand(2, 1, 4, 7) > 0.3).float()
    out, probs = explicit_block(blk, x, post_mask=mask, prompt=p)
    a = blk.attn
    h = blk.norm1(torch.cat([x, p.expand(2, -1, -1)], dim=1))  # (B, 7, D)
    q, k, v = a.qkv(h).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)  # (B, H, 7, hd) each
    attn = ((q[:, :, :4] @ k.transpose(-2, -1)) * a.scale).softmax(-1) * mask  # prompt rows dropped; no renorm
    o = a.proj((attn @ v).transpose(1, 2).reshape(2, 4, 24))
    y = x + o
    y = y + blk.mlp(blk.norm2(y))
    torch.testing.assert_close(probs, attn)
    torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)


def test_fourier_prompts_is_the_real_part_of_the_2d_fft():
    p = torch.randn(6, 8)
    torch.testing.assert_close(fourier_prompts(p), torch.fft.fft2(p).real)


def test_random_picks_only_in_training():
    cfg = TCPAConfig(pool_size_cls=4, pool_size_image=4, top_k=2, prompt_dropout=0.0)
    model = TCPAModel(_vit(), 3, cfg)
    model.random_picks = True
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # eval: deterministic cosine picks
    assert model(x).shape == (1, 3)
