"""Shipped backbones (ctta/pretrained/): checksums, loading, clear errors, the recipe in reduced mode."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctta.backbones.clip import create_clip
from ctta.backbones.vit import ViTConfig, build_vit
from ctta.pretrained import (
    CLIP_NAME,
    VIT_ARCH,
    VIT_NAME,
    ChecksumError,
    MissingWeightsError,
    VocabTokenizer,
    archs,
    create_tiny_vit,
    read_manifest,
    recipe,
    verified_path,
)
from ctta.pretrained.data import load_digits_tensors, write_idx
from ctta.pretrained.store import PACKAGE_DIR, load_weights, sha256_of

NAMES = (VIT_NAME, CLIP_NAME)


def _copy_shipped(tmp_path, name):
    """The manifest and ``name``'s weight file copied into ``tmp_path`` (the shipped files are never touched)."""
    entry = read_manifest()["models"][name]
    shutil.copy(PACKAGE_DIR / "manifest.json", tmp_path / "manifest.json")
    shutil.copy(PACKAGE_DIR / entry["file"], tmp_path / entry["file"])
    return tmp_path / entry["file"]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_file_matches_manifest(name):
    entry = read_manifest()["models"][name]
    path = verified_path(name)
    assert sha256_of(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert path.stat().st_size < 3_000_000 and not entry["reduced"]
    for key in ("architecture", "recipe", "data", "epochs", "seed", "accuracy", "command"):
        assert entry[key] not in (None, "", {}), key


def test_shipped_vit_builds_frozen_and_pretrained():
    vit = build_vit(ViTConfig(model=VIT_NAME, pretrained=True))
    assert (vit.depth, vit.embed_dim) == (VIT_ARCH["depth"], VIT_ARCH["embed_dim"])
    assert not any(p.requires_grad for p in vit.parameters())
    out = vit(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, VIT_ARCH["embed_dim"]) and torch.isfinite(out).all()
    torch.manual_seed(0)
    random = build_vit(ViTConfig(model=VIT_NAME, pretrained=False))
    assert not torch.equal(random.vit.pos_embed, vit.vit.pos_embed)
    probe = recipe.digits_linear_probe(vit.vit)  # the manifest's measurement, reproduced
    assert probe == pytest.approx(read_manifest()["models"][VIT_NAME]["accuracy"]["digits_linear_probe"], abs=2e-3)
    with pytest.raises(ValueError, match="fixed architecture"):
        build_vit(ViTConfig(model=VIT_NAME, pretrained=False, embed_dim=48))


def test_shipped_clip_zero_shot_on_clean_digits():
    model, _, tokenizer = create_clip(CLIP_NAME, "ctta")
    assert not any(p.requires_grad for p in model.parameters())
    x, y = load_digits_tensors("test")
    acc = recipe.zero_shot(model, tokenizer, x, y, archs.DIGIT_NAMES)
    measured = read_manifest()["models"][CLIP_NAME]["accuracy"]["digits_test_zero_shot"]
    assert acc == pytest.approx(measured, abs=2e-3) and acc > 0.6  # chance is 0.1
    random, _, tok = create_clip(CLIP_NAME, "")  # random init of the same architecture
    assert recipe.zero_shot(random, tok, x, y, archs.DIGIT_NAMES) < 0.4


def test_random_tiny_clip_still_builds():
    model, _, tokenizer = create_clip("ctta-tiny-clip", "")
    assert tokenizer(["a photo of a cat."]).shape == (1, 77)
    assert model.encode_image(torch.rand(1, 3, 32, 32)).shape[-1] == 32


def test_vocab_tokenizer_keeps_eot_last_and_maps_unknown_words():
    tok = VocabTokenizer(archs.caption_vocabulary())
    t = tok(["a photo of a three.", "a photo of a zebra."])
    assert t.shape == (2, archs.CLIP_CONTEXT_LENGTH)
    assert (t.argmax(-1) == torch.tensor([7, 7])).all() and int(t.max()) == tok.eot_token_id
    assert t[0, 0] == tok.sot_token_id and (t[1] == tok.UNK).sum() == 1 and (t[0] == tok.UNK).sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_corrupted_file_raises_naming_it(tmp_path, name):
    path = _copy_shipped(tmp_path, name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=path.name) as err:
        load_weights(name, path)
    assert "python -m ctta.pretrained.recipe" in str(err.value)
    with pytest.raises(ChecksumError, match=path.name):
        verified_path(name, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_missing_file_raises_naming_it(tmp_path, name):
    path = _copy_shipped(tmp_path, name)
    path.unlink()
    with pytest.raises(MissingWeightsError, match=path.name) as err:
        verified_path(name, tmp_path)
    assert "recipe" in str(err.value)
    with pytest.raises(FileNotFoundError, match=path.name):  # a missing path given as backbone.pretrained
        create_tiny_vit(path) if name == VIT_NAME else create_clip(CLIP_NAME, str(path))
    with pytest.raises(FileNotFoundError, match="manifest"):
        verified_path(name, tmp_path / "nowhere")


@pytest.fixture(scope="module")
def fake_fashion_mnist(tmp_path_factory):
    """A tiny Fashion-MNIST in its IDX format (random images), so the recipe runs without the Debian package."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("t10k", 64)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("kind,name", [("vit", VIT_NAME), ("clip", CLIP_NAME)])
def test_recipe_reduced_gives_same_shapes(tmp_path, fake_fashion_mnist, kind, name):
    quiet = dict(reduced=True, fashion_root=fake_fashion_mnist, log=lambda *_: None)
    entry = recipe.make(kind, tmp_path, **quiet)
    path = tmp_path / entry["file"]
    assert entry["sha256"] == sha256_of(path) and entry["reduced"]
    assert json.loads((tmp_path / "manifest.json").read_text())["models"][name]["sha256"] == entry["sha256"]
    assert _shapes(load_file(path)) == _shapes(load_file(verified_path(name)))
    if kind == "vit":  # loads as a backbone through the manifest beside it; byte-identical from the same seed
        assert build_vit(ViTConfig(model=VIT_NAME, pretrained=str(path))).embed_dim == VIT_ARCH["embed_dim"]
        again = recipe.make(kind, tmp_path / "again", **quiet)
        assert again["sha256"] == entry["sha256"]
    else:
        model, _, tokenizer = create_clip(CLIP_NAME, str(path))
        assert tokenizer(["a photo of a one."]).max() == model.vocab_size - 1


def test_recipe_without_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        recipe.make("vit", tmp_path, reduced=True, fashion_root=tmp_path / "none", log=lambda *_: None)
