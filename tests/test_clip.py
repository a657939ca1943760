"""ctta.backbones.clip: create_clip (tiny configs, local files, QuickGELU guard, offline error) and the prompted
text encoder (parity with open_clip's encode_text, exact truncation and bucketing, stacked contexts)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from ctta.backbones.clip import (
    CLIPBackbone,
    CLIPConfig,
    PromptedTextEncoder,
    _resolve_activation,
    bucket_plan,
    build_clip,
    create_clip,
)
from ctta.registry import BACKBONES

NAMES = [
    "dog",
    "cat",
    "great white shark",
    "golden retriever puppy with a hat",
    "Annual_Crop Land",
    "tree",
    "2012 Rolls-Royce Phantom Drophead Coupe Convertible",
]


def _reference(model, tok, names, prefix="a photo of a"):
    return model.encode_text(tok([f"{prefix} {n.replace('_', ' ')}." for n in names]))


@pytest.mark.parametrize(
    "truncate,bucket,shared", [(False, False, False), (True, False, False), (True, True, False), (True, True, True)]
)
def test_prompted_encoder_equals_encode_text(tiny, truncate, bucket, shared):
    model, tok = tiny
    enc = PromptedTextEncoder(model, tok, NAMES, truncate=truncate, bucket=bucket, shared_prefix=shared)
    assert enc.shared_prefix == shared
    with torch.no_grad():
        assert torch.allclose(enc(), _reference(model, tok, NAMES), atol=1e-5, rtol=0)
    if truncate:
        assert max(length for _, length in enc.plan) == int(enc.eot.max()) + 1 < 77
    else:
        assert [length for _, length in enc.plan] == [77]


def test_initial_context_is_the_phrase_embedding(tiny):
    model, tok = tiny
    enc = PromptedTextEncoder(model, tok, NAMES, ctx_init="a_photo of  a")
    emb = model.token_embedding(tok(["a photo of a"]))[0, 1:5]
    assert enc.n_ctx == 4 and torch.equal(enc.ctx.detach(), emb) and torch.equal(enc.ctx0, emb)
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["ctx"]
    rnd = PromptedTextEncoder(model, tok, NAMES, n_ctx=3, ctx_init="", generator=torch.Generator().manual_seed(0))
    assert rnd.ctx.shape == (3, model.token_embedding.embedding_dim) and rnd.prompt_prefix == "X X X"


def test_truncation_and_buckets_are_exact_for_gradients(tiny):
    model, tok = tiny
    full = PromptedTextEncoder(model, tok, NAMES, truncate=False)
    fast = PromptedTextEncoder(model, tok, NAMES, bucket=True, n_buckets=3)
    shared = PromptedTextEncoder(model, tok, NAMES, bucket=True, n_buckets=3, shared_prefix=True)
    w = torch.randn(len(NAMES), full().shape[-1])
    grads = []
    for enc in (full, fast, shared):
        ctx = enc.ctx0 + 0.01 * torch.randn(enc.ctx0.shape, generator=torch.Generator().manual_seed(1))
        ctx = ctx.requires_grad_(True)
        (enc(ctx, normalize=True) * w).sum().backward()
        grads.append(ctx.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert torch.allclose(grads[0], grads[2], atol=1e-5, rtol=1e-4)
    assert fast.tokens_encoded < full.tokens_encoded


def test_stacked_and_per_class_contexts(tiny):
    model, tok = tiny
    enc = PromptedTextEncoder(model, tok, NAMES)
    shared = PromptedTextEncoder(model, tok, NAMES, shared_prefix=True)
    ctxs = enc.ctx0 + 0.05 * torch.randn(3, *enc.ctx0.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stacked = enc(ctxs)  # (S, C, E)
        assert stacked.shape == (3, len(NAMES), enc().shape[-1])
        assert torch.allclose(shared(ctxs), stacked, atol=1e-5, rtol=0)
        for s in range(3):
            assert torch.allclose(stacked[s], enc(ctxs[s]), atol=1e-5, rtol=0)
        per_class = enc(ctxs[:1].expand(len(NAMES), -1, -1), per_class=True)
        assert torch.allclose(per_class, stacked[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="ctx must end with shape"):
        enc(torch.zeros(2, 5, 7))


def test_bucket_plan_covers_every_class_once_and_minimises_tokens():
    eot = [8] * 50 + [9] * 30 + [12] * 10 + [17] * 10 + [5]
    plan = bucket_plan(eot, 4)
    assert sorted(c for idx, _ in plan for c in idx) == list(range(len(eot)))
    assert all(length == max(eot[c] for c in idx) + 1 for idx, length in plan)
    assert len(plan) <= 4
    tokens = sum(len(idx) * length for idx, length in plan)
    assert tokens == 51 * 9 + 30 * 10 + 10 * 13 + 10 * 18  # 5 lengths into 4 buckets: the 6 joins the 9s
    assert bucket_plan(eot, 1) == [(sorted(range(len(eot)), key=lambda c: eot[c]), 18)]
    assert bucket_plan(eot, 4, context_length=77) == [(list(range(len(eot))), 77)]


def test_set_classnames_rebuilds_prompts(tiny):
    model, tok = tiny
    enc = PromptedTextEncoder(model, tok, NAMES)
    enc.set_classnames(["zero", "one", "two"])
    with torch.no_grad():
        assert torch.allclose(enc(), _reference(model, tok, ["zero", "one", "two"]), atol=1e-5, rtol=0)


def test_local_file_loads_identically(tmp_path):
    torch.manual_seed(1)
    model, _, _ = create_clip("ctta-tiny-clip", "")
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    loaded, _, _ = create_clip("ctta-tiny-clip", str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    # an open_clip-registered config goes through open_clip.create_model's own file loader
    cfg = dict(
        embed_dim=32,
        quick_gelu=True,
        vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    (tmp_path / "ctta-test-registered.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "ctta-test-registered.json")
    ref = open_clip.create_model("ctta-test-registered")
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "w.pt")
    got, preprocess, tok = create_clip("ctta-test-registered", str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), got.state_dict().values()))
    assert not any(p.requires_grad for p in got.parameters()) and not got.training
    with pytest.raises(FileNotFoundError, match="not found"):
        create_clip("ctta-test-registered", str(tmp_path / "missing.pt"))


def test_openai_weights_get_quickgelu():
    assert _resolve_activation("ViT-B-16", "openai", None, False) == ("ViT-B-16-quickgelu", False)
    assert _resolve_activation("RN50", "openai", None, False) == ("RN50-quickgelu", False)
    assert _resolve_activation("ViT-B-16-quickgelu", "openai", None, False) == ("ViT-B-16-quickgelu", False)
    assert _resolve_activation("ViT-B-16", "", None, False) == ("ViT-B-16", False)
    with pytest.raises(ValueError, match="allow_activation_mismatch"):
        _resolve_activation("ViT-B-16", "openai", False, False)
    assert _resolve_activation("ViT-B-16", "openai", False, True) == ("ViT-B-16", False)


def test_offline_error_names_the_tag(monkeypatch):
    import open_clip.factory as factory

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    monkeypatch.setattr(factory, "download_pretrained", offline)
    with pytest.raises(RuntimeError) as err:
        create_clip("ViT-B/16", "openai")
    msg = str(err.value)
    assert "'openai'" in msg and "backbone.pretrained=/path" in msg and "ViT-B-16-quickgelu" in msg
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        create_clip("ViT-B-16", "no_such_tag")


def test_registered_backbone():
    torch.manual_seed(0)
    bb = BACKBONES.get("clip").builder(CLIPConfig(model="ctta-tiny-clip", pretrained=""))
    assert isinstance(bb, CLIPBackbone) and bb.image_size == 32
    assert bb.tokenizer(["a photo of a dog."]).shape == (1, 77)
    assert isinstance(build_clip(CLIPConfig(model="ctta-tiny-clip", pretrained="")), CLIPBackbone)
