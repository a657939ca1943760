"""Tests of ctta.backbones.vit: parity with timm, prompt/prefix semantics, weight loading, offline error."""

from __future__ import annotations

import huggingface_hub
import pytest
import timm
import torch

from ctta.backbones.vit import PromptedViT, ViTConfig, block_forward, build_vit, create_vit
from tests.helpers import TINY_VIT

TINY = {k: v for k, v in TINY_VIT.items() if k not in ("model", "pretrained")}


@pytest.fixture(scope="module")
def pvit() -> PromptedViT:
    torch.manual_seed(0)
    return PromptedViT(create_vit("vit_tiny_patch16_224", pretrained=False, **TINY))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_no_prompt_parity_with_timm(pvit, images):
    ref = pvit.vit.forward_features(images)
    out = pvit.forward_features(images)
    assert out.shape == (3, pvit.num_tokens, 48)
    assert (out - ref).abs().max() <= 1e-6
    assert torch.equal(pvit(images), pvit.vit.forward_head(ref, pre_logits=True))


def test_frozen_eval_and_properties(pvit):
    assert not any(p.requires_grad for p in pvit.parameters())
    pvit.train()
    assert not pvit.vit.training
    assert (pvit.embed_dim, pvit.depth, pvit.num_tokens) == (48, 6, 17)


def test_query_matches_truncated_block_loop(pvit, images):
    t = pvit.vit._pos_embed(pvit.vit.patch_embed(images))
    for blk in pvit.vit.blocks[:4]:
        t = blk(t)
    assert (pvit.query(images, n_blocks=4) - t[:, 0]).abs().max() <= 1e-5  # last block: CLS row only
    full = pvit.query(images, final_norm=True)
    assert torch.allclose(full, pvit.vit.forward_features(images)[:, 0], atol=1e-6)
    assert not pvit.query(images).requires_grad


def test_dropped_prompts_equal_append_and_truncate(pvit, images):
    g = torch.Generator().manual_seed(2)
    prompts = {0: torch.randn(5, 48, generator=g), 2: torch.randn(3, 4, 48, generator=g)}
    out = pvit.forward_features(images, prompts=prompts)
    t = pvit.embed(images)
    n = t.shape[1]
    for i, blk in enumerate(pvit.vit.blocks):
        if i in prompts:
            p = prompts[i].expand(3, -1, -1) if prompts[i].ndim == 2 else prompts[i]
            t = blk(torch.cat([t, p], dim=1))[:, :n]
        else:
            t = blk(t)
    ref = pvit.vit.norm(t)
    assert out.shape == ref.shape == (3, n, 48)
    assert (out - ref).abs().max() <= 1e-5
    assert (out - pvit.forward_features(images)).abs().max() > 1e-3  # prompts do change the output


def test_kept_prompts_stay_in_sequence(pvit, images):
    g = torch.Generator().manual_seed(3)
    prompts = {0: torch.randn(4, 48, generator=g), 3: torch.randn(2, 48, generator=g)}
    out = pvit.forward_features(images, prompts=prompts, keep_prompts=True)
    t = pvit.embed(images)
    for i, blk in enumerate(pvit.vit.blocks):
        if i in prompts:
            t = torch.cat([t, prompts[i].expand(3, -1, -1)], dim=1)
        t = blk(t)
    assert out.shape == (3, 17 + 6, 48)
    assert torch.allclose(out, pvit.vit.norm(t), atol=1e-6)


@pytest.mark.parametrize("keep", [False, True])
def test_per_sample_prompts_equal_loop(pvit, images, keep):
    g = torch.Generator().manual_seed(4)
    prompts = {1: torch.randn(3, 6, 48, generator=g), 4: torch.randn(3, 2, 48, generator=g)}
    out = pvit.forward_features(images, prompts=prompts, keep_prompts=keep)
    for b in range(3):
        single = {k: v[b] for k, v in prompts.items()}
        ref = pvit.forward_features(images[b : b + 1], prompts=single, keep_prompts=keep)
        assert (out[b : b + 1] - ref).abs().max() <= 1e-5


def _manual_prefix_block(blk, x, pk, pv):
    """Explicit softmax(q k^T / sqrt(hd)) v attention with prefix keys/values, then the MLP branch."""
    b, n, d = x.shape
    nh = blk.attn.num_heads
    hd = d // nh
    q, k, v = blk.attn.qkv(blk.norm1(x)).reshape(b, n, 3, nh, hd).permute(2, 0, 3, 1, 4)
    pk = pk.reshape(b, -1, nh, hd).transpose(1, 2)
    pv = pv.reshape(b, -1, nh, hd).transpose(1, 2)
    k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    a = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(-1)
    x = x + blk.attn.proj((a @ v).transpose(1, 2).reshape(b, n, d))
    return x + blk.mlp(blk.norm2(x))


def test_prefix_prompts_equal_manual_attention(pvit, images):
    g = torch.Generator().manual_seed(5)
    prefixes = {
        0: (torch.randn(3, 5, 48, generator=g), torch.randn(3, 5, 48, generator=g)),
        2: (torch.randn(4, 48, generator=g), torch.randn(4, 48, generator=g)),
    }
    out = pvit.forward_features(images, prefixes=prefixes)
    t = pvit.embed(images)
    for i, blk in enumerate(pvit.vit.blocks):
        if i in prefixes:
            pk, pv = (p.expand(3, -1, -1) if p.ndim == 2 else p for p in prefixes[i])
            t = _manual_prefix_block(blk, t, pk, pv)
        else:
            t = blk(t)
    assert (out - pvit.vit.norm(t)).abs().max() <= 1e-5


def test_cls_only_equals_full_cls(pvit, images):
    g = torch.Generator().manual_seed(6)
    kw = dict(
        prompts={0: torch.randn(5, 48, generator=g), 5: torch.randn(3, 2, 48, generator=g)},
        prefixes={5: (torch.randn(4, 48, generator=g), torch.randn(4, 48, generator=g))},
    )
    full = pvit.forward_features(images, **kw)
    cls = pvit.forward_features(images, cls_only=True, **kw)
    assert cls.shape == (3, 1, 48)
    assert (cls[:, 0] - full[:, 0]).abs().max() <= 1e-5
    assert (pvit.pre_logits(cls) - pvit.pre_logits(full)).abs().max() <= 1e-5


def test_cls_only_needs_token_pooling(images):
    avg = PromptedViT(create_vit("vit_tiny_patch16_224", pretrained=False, global_pool="avg", **TINY))
    with pytest.raises(ValueError, match="CLS-token pooling"):
        avg.forward_features(images, cls_only=True)


def test_block_forward_without_prompts_is_block(pvit, images):
    t = pvit.embed(images)
    blk = pvit.vit.blocks[0]
    assert torch.equal(block_forward(blk, t), blk(t))


def test_prompt_gradients_flow(pvit, images):
    p = torch.zeros(5, 48, requires_grad=True)
    pvit.forward_features(images, prompts={0: p}).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_bad_layer_raises(pvit, images):
    with pytest.raises(ValueError, match="outside"):
        pvit.forward_features(images, prompts={6: torch.zeros(1, 48)})


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_weight_file_loads_through_timm(tmp_path, images, fmt):
    torch.manual_seed(7)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY)  # with a head
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = create_vit("vit_tiny_patch16_224", pretrained=str(path), **TINY)
    assert loaded.num_classes == 0 and not loaded.training
    assert torch.equal(loaded.forward_features(images), src.eval().forward_features(images))
    cfg = ViTConfig(model="vit_tiny_patch16_224.augreg_in21k", pretrained=str(path), **TINY)
    assert torch.equal(build_vit(cfg).forward_features(images), src.forward_features(images))


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_vit("vit_tiny_patch16_224", pretrained=str(tmp_path / "nope.pth"), **TINY)


def test_offline_error_names_tag_and_setting(monkeypatch):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the hub (test)")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    with pytest.raises(RuntimeError, match="augreg_in21k") as info:
        create_vit("vit_tiny_patch16_224.augreg_in21k", pretrained=True, **TINY)
    assert "backbone.pretrained=/path/to/file" in str(info.value)


def test_untagged_pretrained_name_raises():
    with pytest.raises(ValueError, match="weight tag"):
        create_vit("vit_tiny_patch16_224", pretrained=True, **TINY)
