"""Text-to-image generation for label-driven training images (LAPT's negative-label images), cached on disk.

LAPT (Zhang et al., ECCV 2024; YBZh/OpenOOD-VLM@804f331) trains on images synthesised from label names with a
text-to-image diffusion model; its image lists and images are not released. This module drives diffusers' own
``StableDiffusionPipeline`` (nothing forked; diffusers is the ``diffusion`` extra, imported lazily) to write
``images_per_label`` images per label to ``<cache_dir>/<settings key>/<label>/<k>.png``. The cache is resumable:
present files are kept, only missing indices are generated, files are written atomically (temporary name, then
rename). Each image is seeded by ``(seed, label, k)`` with a CPU generator, so it does not depend on the chunking, on
which other images are generated with it, or on an interrupted earlier run. DiffTPT's pipeline
(``strategies/difftpt/diffusion.py``) is an image-*variation* pipeline and is left unchanged.

Deviations: the paper's model, prompt and settings for the synthesis are not in the released code; the defaults
here (Stable Diffusion v1.5 weights ``stable-diffusion-v1-5/stable-diffusion-v1-5``, prompt ``"a photo of a {}."``,
guidance 7.5, 50 steps, 512 px) are ctta's choice. ``model="tiny-random"`` builds a tiny randomly initialised
pipeline from configs (tests, smoke runs; offline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ctta.extras import require

__all__ = ["TINY_RANDOM", "TextToImageConfig", "generate_label_images", "load_text_to_image", "settings_key",
           "tiny_text_to_image_pipeline", "tiny_unet_and_vae"]  # fmt: skip

TINY_RANDOM = "tiny-random"
#: settings that do not change the pixels (left out of the cache key)
_NOT_IN_KEY = ("images_per_label", "chunk_size", "cache_dir", "local_dir", "download")


@dataclass(frozen=True)
class TextToImageConfig:
    """Generation and cache settings.

    Attributes:
        model: hub id of a ``StableDiffusionPipeline``, or ``"tiny-random"`` (tiny random pipeline, offline).
        revision: hub revision of ``model``.
        local_dir: a local folder holding the pipeline, used instead of the hub when set.
        download: allow a hub download when the pipeline is not in the local Hugging Face cache.
        prompt: prompt template, ``{}`` = the label.
        images_per_label: images generated (and kept) per label.
        guidance_scale: classifier-free guidance weight.
        num_inference_steps: denoising steps.
        resolution: output size in px; 0 = the pipeline's default.
        seed: base seed of the per-(label, index) generators.
        chunk_size: images per pipeline call (memory bound; does not change the images).
        cache_dir: root folder of the cache.
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str = "main"
    local_dir: str = ""
    download: bool = False
    prompt: str = "a photo of a {}."
    images_per_label: int = 4
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    resolution: int = 0
    seed: int = 0
    chunk_size: int = 4
    cache_dir: str = "~/.cache/ctta/text_to_image"


def settings_key(cfg: TextToImageConfig) -> str:
    """A short hash of the settings that change the pixels (model, revision, prompt, sampling, seed)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _generator(cfg: TextToImageConfig, label: str, k: int) -> torch.Generator:
    digest = hashlib.sha256(f"{cfg.seed}|{label}|{k}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _label_dir(root: Path, label: str) -> Path:
    if not label or "/" in label or label in (".", ".."):
        raise ValueError(f"text-to-image cache: label {label!r} cannot name a folder")
    return root / label


def generate_label_images(labels: Sequence[str], cfg: TextToImageConfig, device: torch.device | str = "cpu", *,
                          pipeline: Callable[[], object] | None = None) -> Path:  # fmt: skip
    """Fill ``<cache_dir>/<settings_key>/<label>/<k>.png`` for every label and ``k < images_per_label``.

    Args:
        labels: the labels (folder names; no ``/``).
        cfg: generation and cache settings.
        device: where the pipeline runs.
        pipeline: a factory of the pipeline (default ``load_text_to_image(cfg, device)``); called only when an
            image is missing.

    Returns:
        The cache folder of these settings (one sub-folder per label).
    """
    root = Path(cfg.cache_dir).expanduser() / settings_key(cfg)
    pipe = None
    for label in labels:
        folder = _label_dir(root, label)
        todo = [k for k in range(cfg.images_per_label) if not (folder / f"{k}.png").is_file()]
        for start in range(0, len(todo), max(1, cfg.chunk_size)):
            pipe = pipe or (pipeline or (lambda: load_text_to_image(cfg, device)))()
            _generate_chunk(pipe, cfg, label, todo[start : start + max(1, cfg.chunk_size)], folder)
    return root


def _generate_chunk(pipe, cfg: TextToImageConfig, label: str, ks: list[int], folder: Path) -> None:
    """Generate images ``ks`` of ``label`` in one call and write them atomically."""
    size = {"height": cfg.resolution, "width": cfg.resolution} if cfg.resolution else {}
    with torch.no_grad():
        images = pipe(cfg.prompt.format(label), num_images_per_prompt=len(ks), guidance_scale=cfg.guidance_scale,
                      num_inference_steps=cfg.num_inference_steps, generator=[_generator(cfg, label, k) for k in ks],
                      output_type="pil", **size).images  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in zip(ks, images):
        tmp = folder / f".{k}.{os.getpid()}.tmp.png"
        image.save(tmp)
        os.replace(tmp, folder / f"{k}.png")


def load_text_to_image(cfg: TextToImageConfig, device: torch.device | str = "cpu"):
    """The ``StableDiffusionPipeline`` named by ``cfg`` on ``device`` (fp32 on CPU, fp16 on CUDA; no safety checker).

    Raises:
        RuntimeError: the pipeline is not available offline and ``download`` is false.
    """
    if cfg.model == TINY_RANDOM:
        return tiny_text_to_image_pipeline().to(device)
    diffusers = require("diffusers", "diffusion", "text-to-image generation")
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    source = cfg.local_dir or cfg.model
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            source, revision=None if cfg.local_dir else cfg.revision, torch_dtype=dtype, safety_checker=None,
            requires_safety_checker=False, local_files_only=not cfg.download,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        raise RuntimeError(f"text-to-image: cannot load {source!r} (offline? set download=true or local_dir)") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _tiny_tokenizer():
    """A byte-level ``CLIPTokenizer`` with single-character tokens only (no merges), read from a temporary folder."""
    import tempfile

    from transformers import CLIPTokenizer

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # byte-level BPE: these bytes map to themselves
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    with tempfile.TemporaryDirectory(prefix="ctta_tiny_tok_") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)


def tiny_unet_and_vae(sample_size: int = 8):
    """A tiny randomly initialised UNet (2 blocks, 8/16 channels, cross-attention dim 16) and VAE (2 blocks, scale
    factor 2), built from configs in this order from the global RNG (tiny pipelines of tests and smoke runs)."""
    require("diffusers", "diffusion", "tiny diffusion pipelines")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    return unet, vae


def tiny_text_to_image_pipeline(seed: int = 0, sample_size: int = 8):
    """A tiny randomly initialised ``StableDiffusionPipeline`` built from configs (no download): a 2-block UNet and
    VAE (``2 * sample_size`` px output), a 2-layer CLIP text model (width 16), a character-level tokenizer and a PNDM
    scheduler. Initialisation does not touch the global RNG state."""
    require("diffusers", "diffusion", "text-to-image generation")
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae = tiny_unet_and_vae(sample_size)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=32, bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
        ))  # fmt: skip
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe
