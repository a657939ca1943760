"""The core text-to-image cache (``ctta.diffusion``, LAPT's generated negative-label images) with a tiny random
diffusers pipeline: files per label, per-image seeding independent of the chunking, resuming only missing images,
no pipeline load when the cache is complete, the settings key, and label validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from ctta.diffusion import (  # noqa: E402
    TINY_RANDOM,
    TextToImageConfig,
    generate_label_images,
    settings_key,
    tiny_text_to_image_pipeline,  # noqa: E402
)


@pytest.fixture(scope="module")
def tiny():
    return tiny_text_to_image_pipeline()


class _Factory:
    """Counts pipeline loads and pipeline calls."""

    def __init__(self, pipe) -> None:
        self.pipe, self.loads, self.calls = pipe, 0, 0

    def __call__(self):
        self.loads += 1
        factory = self

        def run(*args, **kwargs):
            factory.calls += 1
            return factory.pipe(*args, **kwargs)

        return run


def _pixels(path):
    return np.asarray(Image.open(path))


def test_generates_resumes_and_seeds_per_image(tmp_path, tiny):
    cfg = TextToImageConfig(model=TINY_RANDOM, num_inference_steps=2, images_per_label=3, chunk_size=2,
                            cache_dir=str(tmp_path / "a"))  # fmt: skip
    factory = _Factory(tiny)
    root = generate_label_images(["coat", "red"], cfg, pipeline=factory)
    assert root == tmp_path / "a" / settings_key(cfg)
    assert sorted(p.name for p in (root / "coat").iterdir()) == ["0.png", "1.png", "2.png"]
    assert factory.loads == 1 and factory.calls == 4  # 2 labels x (2 + 1) images in chunks of 2
    first = {k: _pixels(root / "coat" / f"{k}.png") for k in range(3)}
    assert not np.array_equal(first[0], first[1])  # distinct seeds per image
    (root / "coat" / "1.png").unlink()
    again = _Factory(tiny)
    generate_label_images(["coat", "red"], cfg, pipeline=again)
    assert again.calls == 1  # only the missing image
    assert all(np.array_equal(first[k], _pixels(root / "coat" / f"{k}.png")) for k in range(3))
    one_by_one = generate_label_images(["coat"], replace(cfg, chunk_size=1, cache_dir=str(tmp_path / "b")),
                                       pipeline=_Factory(tiny))  # fmt: skip
    assert all(np.array_equal(first[k], _pixels(one_by_one / "coat" / f"{k}.png")) for k in range(3))


def test_complete_cache_loads_no_pipeline(tmp_path, tiny):
    cfg = TextToImageConfig(model=TINY_RANDOM, num_inference_steps=2, images_per_label=1, cache_dir=str(tmp_path))
    generate_label_images(["coat"], cfg, pipeline=_Factory(tiny))

    def fail():
        raise AssertionError("pipeline loaded although every image is cached")

    generate_label_images(["coat"], cfg, pipeline=fail)


def test_settings_key_follows_the_pixels_only():
    cfg = TextToImageConfig()
    assert settings_key(cfg) == settings_key(replace(cfg, cache_dir="/x", chunk_size=9, images_per_label=7))
    assert settings_key(cfg) != settings_key(replace(cfg, prompt="art of the {}."))
    assert settings_key(cfg) != settings_key(replace(cfg, seed=1))


@pytest.mark.parametrize("label", ["a/b", "", ".."])
def test_labels_must_name_a_folder(tmp_path, label):
    with pytest.raises(ValueError, match="cannot name a folder"):
        generate_label_images([label], TextToImageConfig(cache_dir=str(tmp_path)))
