"""Tiny randomly initialised diffusers image-variation pipeline for tests (no download), with call counters.

Reusable by any test: ``tiny_pipeline()`` builds the pipeline from configs (the DiffTPT diffusion module's builder,
also used by the smoke configs through ``diffusion.model: tiny-random``); ``count_calls(pipe)`` counts forwards of
its parts; ``tiny_diffusion_config(cache_dir, **overrides)`` gives fast generation settings (2 denoising steps).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ctta.strategies.difftpt.diffusion import TINY_RANDOM, DiffusionConfig, tiny_image_variation_pipeline


def tiny_pipeline(seed: int = 0, sample_size: int = 8, image_size: int = 32):
    """A tiny ``StableDiffusionImageVariationPipeline`` (outputs ``2 * sample_size`` px, CLIP input ``image_size``)."""
    pipe = tiny_image_variation_pipeline(seed=seed, sample_size=sample_size, image_size=image_size)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_calls(pipe) -> Counter:
    """Counter of forward calls of ``unet``, ``image_encoder``, ``vae_decode`` and ``feature_extractor`` (live)."""
    counts: Counter = Counter()

    def hook(name):
        def fn(*_args, **_kw):
            counts[name] += 1

        return fn

    pipe.unet.register_forward_hook(hook("unet"))
    pipe.image_encoder.register_forward_hook(hook("image_encoder"))
    vae_decode = pipe.vae.decode

    def decode(*args, **kw):
        counts["vae_decode"] += 1
        return vae_decode(*args, **kw)

    pipe.vae.decode = decode
    extractor_call = type(pipe.feature_extractor).__call__

    class CountingExtractor(type(pipe.feature_extractor)):
        def __call__(self, *args, **kw):
            counts["feature_extractor"] += 1
            return extractor_call(self, *args, **kw)

    pipe.feature_extractor.__class__ = CountingExtractor
    return counts


def tiny_diffusion_config(cache_dir, **overrides) -> DiffusionConfig:
    """Generation settings for the tiny pipeline: 2 denoising steps, cache under ``cache_dir``."""
    base = DiffusionConfig(model=TINY_RANDOM, num_inference_steps=2, chunk_size=4, cache_dir=str(cache_dir))
    return replace(base, **overrides)
