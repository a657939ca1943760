"""ctta.backbones.clip: create_clip (tiny configs, local files, QuickGELU guard, offline error). The prompted text
tower's tests are in tests/test_clip_prompted_text.py."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from ctta.backbones.clip import (
    CLIPBackbone,
    CLIPConfig,
    _resolve_activation,
    build_clip,
    create_clip,
)
from ctta.registry import BACKBONES


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
