"""DiffTPT's diffusion view generator and its disk cache (spec tpt-difftpt sections 4.2, 4.6, 11.7)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from ctta.strategies.difftpt.diffusion import DiffusionConfig, DiffusionViews, ImageVariationGenerator, load_pipeline
from ctta.strategies.difftpt.view_cache import (
    CacheCorruptError,
    CacheMismatchError,
    ViewCache,
    sha256_bytes,
    source_key,
)
from PIL import Image

from tests._tiny_diffusion import count_calls, tiny_diffusion_config, tiny_pipeline

N_VIEWS = 5


def _image(seed: int, size=(20, 14)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _views(tmp_path, pipe=None, **overrides) -> DiffusionViews:
    cfg = tiny_diffusion_config(tmp_path / "cache", **overrides)
    return DiffusionViews(cfg, n_views=N_VIEWS, view_size=24, pipeline=pipe)


def _files(cache: ViewCache) -> dict[str, bytes]:
    return {str(p.relative_to(cache.dir)): p.read_bytes() for p in sorted(cache.dir.rglob("*.*")) if p.is_file()}


def test_generation_shapes_and_one_encode_per_source(tmp_path):
    pipe = tiny_pipeline()
    counts = count_calls(pipe)
    dv = _views(tmp_path, pipe, chunk_size=2)  # 5 images -> 3 pipeline calls
    views = dv(_image(0), label=3)
    assert views.shape == (N_VIEWS, 3, 24, 24) and views.dtype == torch.float32
    assert torch.isfinite(views).all()
    assert [im.size for im in dv.images(_image(0))] == [(16, 16)] * N_VIEWS
    assert dv.generator.calls == 3 and dv.generated == N_VIEWS
    assert counts["image_encoder"] == 1  # encoded once, reused by the 3 chunked calls
    assert counts["feature_extractor"] == 0  # tensor conditioning bypasses the feature extractor
    assert counts["vae_decode"] == 3


def test_zero_negative_embedding_and_guidance(tmp_path):
    pipe = tiny_pipeline()
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)
    gen = ImageVariationGenerator(pipe, tiny_diffusion_config(tmp_path))
    cond = gen.conditioning(_image(1))
    gen.generate(cond, "k", [0, 1])
    ehs = seen[0]  # (2 * n, 1, D): [negative; conditional]
    assert ehs.shape[0] == 4
    assert torch.equal(ehs[:2], torch.zeros_like(ehs[:2]))
    expected = pipe.image_encoder(cond[None]).image_embeds  # (1, D)
    torch.testing.assert_close(ehs[2:, 0], expected.expand(2, -1))


def test_conditioning_is_the_reference_tensor_recipe():
    gen = ImageVariationGenerator(tiny_pipeline(), DiffusionConfig(model="tiny-random"))
    img = _image(2, size=(40, 20))
    cond = gen.conditioning(img)
    assert cond.shape == (3, 32, 32)  # squashed to (S, S), no crop
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    x = torch.nn.functional.interpolate(x[None], size=(32, 32), mode="bicubic", align_corners=False)[0]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    torch.testing.assert_close(cond, (x - mean) / std, atol=1e-5, rtol=1e-5)


def test_seeded_per_image_independent_of_chunking(tmp_path):
    gen = ImageVariationGenerator(tiny_pipeline(), tiny_diffusion_config(tmp_path, chunk_size=4))
    cond = gen.conditioning(_image(3))
    all_four = gen.generate(cond, "key", [0, 1, 2, 3])
    alone = gen.generate(cond, "key", [2])
    diff = np.abs(np.asarray(all_four[2], dtype=int) - np.asarray(alone[0], dtype=int)).max()
    assert diff <= 1
    other_key = gen.generate(cond, "other", [2])[0]
    assert np.abs(np.asarray(other_key, dtype=int) - np.asarray(alone[0], dtype=int)).max() > 1


def test_second_run_generates_nothing_and_needs_no_pipeline(tmp_path):
    images = [_image(10), _image(11)]
    pipe = tiny_pipeline()
    counts = count_calls(pipe)
    first = _views(tmp_path, pipe)
    out1 = [first(im, label=i) for i, im in enumerate(images)]
    first.flush()
    n_unet = counts["unet"]
    assert first.generated == 2 * N_VIEWS and n_unet > 0
    second = _views(tmp_path)  # no pipeline given: it would be loaded on a miss only
    out2 = [second(im) for im in images]
    assert second.generated == 0 and second._generator is None and counts["unet"] == n_unet
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)  # first run already returns the decoded stored files
    manifest = json.loads(second.cache.manifest_path.read_text())
    assert manifest["n_entries"] == 2 and manifest["n_images"] == 2 * N_VIEWS
    assert {e["label"] for e in manifest["entries"].values()} == {0, 1}
    assert manifest["settings"]["guidance_scale"] == 3.0
    entry = next(iter(manifest["entries"].values()))
    assert entry["provenance"]["scheduler"] == "PNDMScheduler"
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_corrupted_file_detected_regenerated_nothing_else_lost(tmp_path):
    images = [_image(20), _image(21)]
    dv = _views(tmp_path, tiny_pipeline(), on_mismatch="regenerate")
    for im in images:
        dv(im)
    before = _files(dv.cache)
    key = source_key(images[0])[0]
    bad = dv.cache.image_path(key, 1, ".png")
    bad.write_bytes(bad.read_bytes()[:-7] + b"garbage")
    assert any(str(bad) in p for p in dv.cache.verify())

    dv2 = _views(tmp_path, tiny_pipeline(), on_mismatch="regenerate")
    found = dv2.cache.load(key, N_VIEWS)
    assert found.missing == [1] and str(bad) in found.problems[0]
    dv2(images[0])
    dv2(images[1])
    assert dv2.generated == 1  # only the corrupted image
    after = _files(dv2.cache)
    assert set(after) == set(before)
    changed = {k for k in before if before[k] != after[k]}  # seeded: usually restored byte for byte
    assert changed <= {str(bad.relative_to(dv.cache.dir)), f"entries/{key}.json"}
    manifest = dv2.flush()
    assert dv2.cache.verify() == []
    for k, entry in manifest["entries"].items():
        for rec in entry["files"].values():
            data = (dv2.cache.dir / "images" / k[:2] / rec["name"]).read_bytes()
            assert sha256_bytes(data) == rec["sha256"]


def test_corrupted_file_raises_by_default_naming_it(tmp_path):
    dv = _views(tmp_path, tiny_pipeline())
    img = _image(30)
    dv(img)
    key = source_key(img)[0]
    bad = dv.cache.image_path(key, 0, ".png")
    bad.unlink()
    with pytest.raises(CacheCorruptError, match=str(bad)):
        _views(tmp_path)(img)


def test_changed_settings_raise_clear_errors(tmp_path):
    dv = _views(tmp_path, tiny_pipeline())
    img = _image(40)
    dv(img)
    settings_file = dv.cache.dir / "settings.json"
    record = json.loads(settings_file.read_text())
    record["settings"]["guidance_scale"] = 7.5
    settings_file.write_text(json.dumps(record))
    with pytest.raises(CacheMismatchError, match="guidance_scale: 7.5 -> 3.0"):
        _views(tmp_path)
    moved = _views(tmp_path, on_mismatch="regenerate").cache  # the stale folder is kept aside, not reused
    aside = list(moved.dir.parent.glob(f"{moved.dir.name}.mismatch-*"))
    assert len(aside) == 1 and (aside[0] / "entries").is_dir() and moved.keys() == []
    os.replace(aside[0], moved.dir.with_name("kept"))
    shutil.rmtree(moved.dir)
    os.replace(moved.dir.with_name("kept"), moved.dir)
    record["settings"]["guidance_scale"] = 3.0
    settings_file.write_text(json.dumps(record))
    entry_file = dv.cache.entry_path(source_key(img)[0])
    entry = json.loads(entry_file.read_text())
    entry["settings_digest"] = "0" * 64
    entry_file.write_text(json.dumps(entry))
    with pytest.raises(CacheMismatchError, match=str(entry_file)):
        _views(tmp_path)(img)


def test_other_settings_use_another_cache_and_format_follows_source(tmp_path):
    a = _views(tmp_path)
    b = _views(tmp_path, guidance_scale=4.0)
    assert a.cache.dir != b.cache.dir
    c = _views(tmp_path, cache_format="source", pipe=tiny_pipeline())
    src = tmp_path / "photo.jpg"
    _image(50).save(src, quality=95)
    c(src)
    key = source_key(src)[0]
    assert c.cache.image_path(key, 0, ".jpg").is_file()  # JPEG q75 like the reference's source extension
    assert c.cache.suffix_for("<PIL image>") == ".png"


class _SlowFakeGenerator:
    """Stands in for ``ImageVariationGenerator``: deterministic images, slow, records its calls."""

    def __init__(self, calls: list):
        self.calls = calls

    def conditioning(self, image):
        return image

    def generate(self, cond, key, indices):
        self.calls.append(list(indices))
        time.sleep(0.3)  # the other writer reaches the lock meanwhile
        return [Image.new("RGB", (16, 16), (int(key[:2], 16), 40 * i, 9)) for i in indices]

    def provenance(self):
        return {"generator": "fake"}


def test_concurrent_writers_generate_a_source_once(tmp_path):
    calls, barrier, out = [], threading.Barrier(2), {}
    views = [_views(tmp_path), _views(tmp_path)]  # two processes' objects over one cache folder
    for dv in views:
        dv._generator = _SlowFakeGenerator(calls)

    def run(i):
        barrier.wait()
        out[i] = [im.tobytes() for im in views[i].images(_image(80))]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert calls == [list(range(N_VIEWS))]  # generated once, by one writer
    assert sorted(dv.generated for dv in views) == [0, N_VIEWS]
    assert out[0] == out[1]
    assert not any((views[0].cache.dir / "locks").iterdir())


def test_allow_generate_false_and_offline_errors(tmp_path):
    with pytest.raises(RuntimeError, match="allow_generate=false"):
        dv = _views(tmp_path, allow_generate=False)
        dv(_image(60))
    assert not (dv.cache.dir / "locks").exists()  # a read-only run takes no lock
    cfg = DiffusionConfig(model="ctta-test/not-a-model", revision="v9", download=False)
    with pytest.raises(RuntimeError, match=r"ctta-test/not-a-model revision v9.*diffusion.local_dir"):
        load_pipeline(cfg)
    with pytest.raises(RuntimeError, match="model_index.json missing"):
        load_pipeline(replace(cfg, local_dir=str(tmp_path)))


def test_local_folder_round_trip(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "sd")
    loaded = load_pipeline(DiffusionConfig(local_dir=str(tmp_path / "sd"), num_inference_steps=2))
    for a, b in zip(pipe.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    assert loaded.safety_checker is None


def test_reduced_precision_generation_and_settings(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, dtype="bfloat16")
    pipe = load_pipeline(cfg, "cpu")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.image_encoder.dtype == torch.bfloat16
    dv = DiffusionViews(cfg, n_views=2, view_size=24, pipeline=pipe)
    assert dv.settings["dtype"] == "bfloat16"
    assert torch.isfinite(dv(_image(70))).all()
    auto = DiffusionViews(replace(cfg, dtype="auto"), n_views=2, view_size=24, device="cpu")
    assert auto.settings["dtype"] == "float32" and auto.cache.dir != dv.cache.dir
