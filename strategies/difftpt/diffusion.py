"""Stable Diffusion image-variation views for DiffTPT (Feng et al., ICCV 2023), through diffusers' own pipeline.

Reference: chunmeifeng/DiffTPT@03f11696 ``image_generator_R.py`` (re-implemented from the spec, no code copied).
The generator drives diffusers' ``StableDiffusionImageVariationPipeline`` (``lambdalabs/sd-image-variations-diffusers``,
revision ``v2.0``); nothing of the pipeline is forked. Reference settings kept: a conditioning *tensor*
(``ToTensor`` -> ``Resize((S, S), bicubic, antialias=False)`` -> CLIP ``Normalize``, S = the image encoder's input size,
224), which bypasses the feature extractor; classifier-free guidance 3 with diffusers' zero image-embedding negative;
50 steps; the repository's scheduler; ``eta=0``; ``unet.sample_size * 8`` = 512 px; fp32; no safety checker.

Deviations from the reference code:
- ``num_images_per_prompt`` chunks (``chunk_size``) instead of 65 single calls, and each source image is encoded once
  (the pipeline's ``_encode_image`` is memoised for the duration of one source image's calls; same math).
- Seeded per (seed, source sha256, image index) with CPU generators (``seed=None`` = the unseeded reference), so an
  image does not depend on the chunking, the device or which other images are generated with it.
- ``dtype`` may be ``float16`` / ``bfloat16`` / ``auto`` (fp16 on CUDA, fp32 on CPU); the default is fp32 (reference).
- ``model="tiny-random"`` builds a tiny randomly initialised pipeline from configs (tests, smoke configs; offline).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ctta.data.tta_views import CLIP_MEAN, CLIP_STD, TPTViews
from ctta.diffusion import tiny_unet_and_vae

SD_IMAGE_VARIATIONS = "lambdalabs/sd-image-variations-diffusers"
TINY_RANDOM = "tiny-random"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DiffusionConfig:
    """Generation and cache settings of DiffTPT's diffusion views (defaults = the reference).

    Attributes:
        model: hub id of the image-variation pipeline, or ``"tiny-random"`` (tiny random pipeline, offline).
        revision: hub revision of ``model``.
        local_dir: a local folder holding the pipeline (``save_pretrained`` output or a hub snapshot); used instead
            of the hub when set.
        download: allow a hub download when the pipeline is not in the local Hugging Face cache.
        dtype: ``float32`` (reference) | ``float16`` | ``bfloat16`` | ``auto`` (fp16 on CUDA, fp32 on CPU).
        guidance_scale: classifier-free guidance weight (reference 3).
        num_inference_steps: denoising steps (reference 50; other values change the distribution).
        resolution: output size in px; 0 = ``unet.sample_size * vae_scale_factor`` (512 for the reference model).
        eta: DDIM eta (ignored by the repository's scheduler; reference 0).
        seed: base seed of the per-(image, index) generators; None = unseeded (reference).
        chunk_size: images per pipeline call (memory bound; does not change seeded results).
        tiny_seed: initialisation seed of the ``tiny-random`` pipeline.
        cache_dir: root folder of the generated-view cache.
        cache_format: ``source`` (the source file's extension; PNG for in-memory images) | ``jpeg`` | ``png``.
        jpeg_quality: JPEG quality (PIL default 75 reproduces the reference's lossy step).
        on_mismatch: ``raise`` (default: a corrupt/mismatching cached file raises naming it) | ``regenerate``.
        allow_generate: False = never run the pipeline; a cache miss raises (runs that must use pre-generated views).
        lock_timeout_s: longest wait for another process generating the same source image (cache writer lock).
        lock_stale_s: a cache lock older than this is a crashed writer's and is broken (with a warning).
    """

    model: str = SD_IMAGE_VARIATIONS
    revision: str = "v2.0"
    local_dir: str = ""
    download: bool = True
    dtype: str = "float32"
    guidance_scale: float = 3.0
    num_inference_steps: int = 50
    resolution: int = 0
    eta: float = 0.0
    seed: int | None = 0
    chunk_size: int = 16
    tiny_seed: int = 0
    cache_dir: str = "~/.cache/ctta/difftpt_views"
    cache_format: str = "source"
    jpeg_quality: int = 75
    on_mismatch: str = "raise"
    allow_generate: bool = True
    lock_timeout_s: float = 3600.0
    lock_stale_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.dtype not in (*_DTYPES, "auto"):
            raise ValueError(f"strategy.diffusion.dtype={self.dtype!r}; valid: {[*_DTYPES, 'auto']}")
        if self.cache_format not in ("source", "jpeg", "png"):
            raise ValueError(f"strategy.diffusion.cache_format={self.cache_format!r}; valid: ['source', 'jpeg', 'png']")
        if self.on_mismatch not in ("raise", "regenerate"):
            raise ValueError(f"strategy.diffusion.on_mismatch={self.on_mismatch!r}; valid: ['raise', 'regenerate']")
        if self.num_inference_steps < 1 or self.chunk_size < 1 or self.resolution < 0:
            raise ValueError("diffusion: num_inference_steps and chunk_size must be >= 1, resolution >= 0")
        if self.lock_timeout_s < 0 or self.lock_stale_s <= 0:
            raise ValueError("diffusion: lock_timeout_s must be >= 0 and lock_stale_s > 0")
        if self.resolution % 8:
            raise ValueError(f"strategy.diffusion.resolution must be a multiple of 8, got {self.resolution}")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The pipeline dtype for ``name`` on ``device`` (``auto``: fp16 on CUDA, fp32 elsewhere)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def generation_settings(cfg: DiffusionConfig, device: torch.device) -> dict:
    """The settings that determine the generated images: the cache key part shared by all source images."""
    return {
        "pipeline": cfg.model,
        "revision": cfg.revision,
        "tiny_seed": cfg.tiny_seed if cfg.model == TINY_RANDOM else None,
        "dtype": str(resolve_dtype(cfg.dtype, device)).removeprefix("torch."),
        "guidance_scale": float(cfg.guidance_scale),
        "num_inference_steps": int(cfg.num_inference_steps),
        "resolution": int(cfg.resolution),
        "eta": float(cfg.eta),
        "conditioning": "ToTensor>Resize((S,S),bicubic,antialias=False)>Normalize(CLIP)",
        "negative": "zeros",
        "seed_rule": "unseeded" if cfg.seed is None else f"sha256(seed:key:index), seed={cfg.seed}",
        "format": cfg.cache_format,
        "jpeg_quality": int(cfg.jpeg_quality),
    }


def tiny_image_variation_pipeline(seed: int = 0, sample_size: int = 8, image_size: int = 32):
    """A tiny randomly initialised ``StableDiffusionImageVariationPipeline`` built from configs (no download).

    UNet with 2 blocks (8/16 channels, cross-attention dim 16), a 2-block VAE (scale factor 2), a 2-layer
    CLIP vision tower (``image_size`` px, projection 16), a PNDM scheduler and a ``CLIPImageProcessor``; outputs
    ``2 * sample_size`` px images. Initialisation does not touch the global RNG state.
    """
    _diffusers()
    from diffusers import PNDMScheduler, StableDiffusionImageVariationPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae = tiny_unet_and_vae(sample_size)
        vision = CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=8,
        )  # fmt: skip
        encoder = CLIPVisionModelWithProjection(vision)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size)
    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None, feature_extractor=processor, requires_safety_checker=False,
    )  # fmt: skip
    return pipe


def load_pipeline(cfg: DiffusionConfig, device: torch.device | str = "cpu"):
    """Load the image-variation pipeline named by ``cfg`` onto ``device`` in the configured dtype.

    Raises:
        RuntimeError: the pipeline cannot be loaded (offline without a local copy, missing folder), naming the
            model id, the revision and the ``diffusion.local_dir`` setting to point at a local folder.
    """
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.model == TINY_RANDOM:
        pipe = tiny_image_variation_pipeline(cfg.tiny_seed)  # fp32
        pipe = pipe.to(device=device, dtype=dtype) if dtype != torch.float32 else pipe.to(device)
    else:
        pipe = _from_pretrained(cfg, dtype).to(device)  # loaded in ``dtype``
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_pretrained(cfg: DiffusionConfig, dtype: torch.dtype):
    Pipeline = _diffusers().StableDiffusionImageVariationPipeline
    from diffusers.utils import deprecation_utils

    dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"  # renamed in 0.4x
    kw = {"safety_checker": None, "requires_safety_checker": False, dtype_kw: dtype}
    hint = (
        f"download it on a connected machine (`hf download {cfg.model} --revision {cfg.revision} --local-dir DIR`) "
        f"and set strategy.diffusion.local_dir=DIR"
    )
    if cfg.local_dir:
        path = Path(cfg.local_dir).expanduser()
        if not (path / "model_index.json").is_file():
            raise RuntimeError(
                f"strategy.diffusion.local_dir={str(path)!r} holds no diffusers pipeline (model_index.json missing); "
                f"expected {cfg.model} revision {cfg.revision}: {hint}"
            )
        return Pipeline.from_pretrained(str(path), **kw)
    try:
        return Pipeline.from_pretrained(cfg.model, revision=cfg.revision, local_files_only=True, **kw)
    except (OSError, ValueError) as cached_err:
        if not cfg.download:
            raise RuntimeError(
                f"{cfg.model} revision {cfg.revision} is not in the local Hugging Face cache and "
                f"strategy.diffusion.download=false ({cached_err}); {hint}"
            ) from cached_err
    try:
        return Pipeline.from_pretrained(cfg.model, revision=cfg.revision, **kw)
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot load {cfg.model} revision {cfg.revision} (offline?): {err}; {hint}") from err


def per_image_seed(seed: int, key: str, index: int) -> int:
    """The generator seed of image ``index`` of source image ``key`` (independent of chunking and device)."""
    digest = hashlib.sha256(f"{seed}:{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class ImageVariationGenerator:
    """Runs a loaded ``StableDiffusionImageVariationPipeline`` with DiffTPT's settings.

    Args:
        pipe: the pipeline (real, local or tiny); moved to ``device`` by ``load_pipeline``.
        cfg: generation settings.

    Attributes:
        calls: number of pipeline ``__call__``s made (a cache hit makes none).
        encodes: number of conditioning-image encodings (one per source image).
    """

    def __init__(self, pipe, cfg: DiffusionConfig) -> None:
        self.pipe = pipe
        self.cfg = cfg
        self.calls = 0
        self.encodes = 0

    @property
    def cond_size(self) -> int:
        """Input size S of the pipeline's CLIP image tower (224 for the reference model)."""
        return int(self.pipe.image_encoder.config.image_size)

    def provenance(self) -> dict:
        """What was actually run (scheduler class + config hash, resolution, versions), for the cache manifest."""
        import diffusers

        sched = self.pipe.scheduler
        sched_json = sched.to_json_string() if hasattr(sched, "to_json_string") else repr(dict(sched.config))
        return {
            "scheduler": type(sched).__name__,
            "scheduler_config_sha256": hashlib.sha256(sched_json.encode()).hexdigest(),
            "resolution": self.resolution,
            "cond_size": self.cond_size,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        }

    @property
    def resolution(self) -> int:
        return self.cfg.resolution or int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def conditioning(self, image) -> torch.Tensor:
        """The reference conditioning tensor (3, S, S) of a PIL image or a (3, H, W) float tensor in [0, 1]."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        x = image if isinstance(image, torch.Tensor) else TF.to_tensor(image.convert("RGB"))  # (3, H, W)
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"conditioning image must be (3, H, W) or a PIL image, got shape {tuple(x.shape)}")
        s = self.cond_size
        x = TF.resize(x, [s, s], interpolation=InterpolationMode.BICUBIC, antialias=False)  # (3, S, S)
        return TF.normalize(x, CLIP_MEAN, CLIP_STD)

    def generate(self, cond: torch.Tensor, key: str, indices: Sequence[int]) -> list:
        """Generate images ``indices`` of one source image (conditioning ``cond`` (3, S, S)); PIL images in order."""
        if cond.ndim != 3:
            raise ValueError(f"cond must be (3, S, S), got shape {tuple(cond.shape)}")
        out, indices = [], list(indices)
        with self._encoded_once(cond):
            for start in range(0, len(indices), self.cfg.chunk_size):
                chunk = indices[start : start + self.cfg.chunk_size]
                out.extend(self._call(cond, key, chunk))
        return out

    def _call(self, cond: torch.Tensor, key: str, chunk: list[int]) -> list:
        gens = None
        if self.cfg.seed is not None:
            gens = [torch.Generator("cpu").manual_seed(per_image_seed(self.cfg.seed, key, i)) for i in chunk]
        self.calls += 1
        res = self.resolution
        result = self.pipe(
            cond[None], height=res, width=res, num_inference_steps=self.cfg.num_inference_steps,
            guidance_scale=self.cfg.guidance_scale, num_images_per_prompt=len(chunk), eta=self.cfg.eta,
            generator=gens, output_type="pil",
        )  # fmt: skip
        return list(result.images)

    @contextlib.contextmanager
    def _encoded_once(self, cond: torch.Tensor):
        """Memoise the pipeline's image encoding for one source image (the chunks reuse one CLIP forward)."""
        pipe = self.pipe
        original = getattr(pipe, "_encode_image", None)
        if original is None:  # a diffusers without the private hook: encode per call (same result)
            yield
            return
        device = pipe._execution_device
        embeds = original(cond[None], device, 1, False)  # (1, 1, D)
        self.encodes += 1

        def encode(image, device, num_images_per_prompt, do_classifier_free_guidance):
            e = embeds.repeat_interleave(num_images_per_prompt, dim=0)  # (n, 1, D), diffusers' repeat + view
            return torch.cat([torch.zeros_like(e), e]) if do_classifier_free_guidance else e

        pipe._encode_image = encode
        try:
            yield
        finally:
            del pipe._encode_image  # back to the class method


class DiffusionViews:
    """Source image -> ``n_views`` diffusion views, generated once per source image and cached on disk.

    A view is a generated image after ``Resize(view_size, bicubic)`` + ``CenterCrop(view_size)`` + ``ToTensor`` +
    CLIP ``Normalize`` (reference ``diffuData``). The pipeline is loaded on the first cache miss only, so a run over
    pre-generated views needs no diffusion weights.

    Args:
        cfg: generation and cache settings.
        n_views: images used per source image (reference 63).
        view_size: side of the views (the CLIP input size, 224).
        device: where the pipeline runs.
        pipeline: an already loaded pipeline (otherwise ``load_pipeline(cfg, device)`` on first use).
    """

    def __init__(
        self, cfg: DiffusionConfig, *, n_views: int = 63, view_size: int = 224, device="cpu", pipeline=None
    ) -> None:
        from ctta.strategies.difftpt.view_cache import ViewCache

        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.cfg, self.n_views, self.view_size = cfg, n_views, view_size
        self.device = torch.device(device)
        self.settings = generation_settings(cfg, self.device)
        self.cache = ViewCache(
            cfg.cache_dir, self.settings, fmt=cfg.cache_format, jpeg_quality=cfg.jpeg_quality,
            on_mismatch=cfg.on_mismatch, lock_timeout_s=cfg.lock_timeout_s, lock_stale_s=cfg.lock_stale_s,
        )  # fmt: skip
        self._pipeline = pipeline
        self._generator: ImageVariationGenerator | None = None
        self._view0 = TPTViews(n_views=1, resolution=view_size)
        self.generated = 0  # images generated by this object (0 on a fully cached run)

    @property
    def generator(self) -> ImageVariationGenerator:
        """The generator (loads the pipeline on first access)."""
        if self._generator is None:
            pipe = self._pipeline if self._pipeline is not None else load_pipeline(self.cfg, self.device)
            self._generator = ImageVariationGenerator(pipe, self.cfg)
        return self._generator

    def images(self, image, *, label: int | None = None) -> list:
        """The ``n_views`` generated PIL images of ``image`` (a path, a PIL image or a (3, H, W) tensor in [0, 1])."""
        from ctta.strategies.difftpt.view_cache import source_key

        key, source = source_key(image)
        found = self.cache.load(key, self.n_views)
        if found.missing:
            self._check_generate(key, source, found.missing)  # before locking: a read-only cache stays read-only
            with self.cache.writer(key):  # one writer per source image across processes (torchrun ranks)
                found = self.cache.load(key, self.n_views)  # another process may have generated them meanwhile
                if found.missing:
                    found.images.update(self._generate(image, key, source, found.missing, label))
        return [found.images[i] for i in range(self.n_views)]

    def _check_generate(self, key: str, source: str, missing: list[int]) -> None:
        if not self.cfg.allow_generate:
            raise RuntimeError(
                f"no cached diffusion views {missing[:5]}... for {source} (sha256 {key[:12]}...) in "
                f"{self.cache.dir} and strategy.diffusion.allow_generate=false; generate them first or allow generation"
            )

    def _generate(self, image, key: str, source: str, missing: list[int], label: int | None) -> dict:
        if isinstance(image, (str, Path)):
            from PIL import Image

            with Image.open(image) as im:
                image = im.convert("RGB")
        gen = self.generator
        new = gen.generate(gen.conditioning(image), key, missing)
        self.generated += len(new)
        return self.cache.store(key, dict(zip(missing, new)), source=source, label=label, provenance=gen.provenance())

    def transform(self, image) -> torch.Tensor:
        """One generated PIL image -> a normalised view (3, V, V): TPT's view-0 transform (bicubic resize, crop)."""
        return self._view0.base(image)

    def __call__(self, image, *, label: int | None = None) -> torch.Tensor:
        """The diffusion views of one source image, (n_views, 3, V, V)."""
        return torch.stack([self.transform(im) for im in self.images(image, label=label)])

    def flush(self) -> dict:
        """Write the cache manifest (rebuilt from its entry files)."""
        return self.cache.flush()


def _diffusers():
    """diffusers, or an error naming ``pip install 'ctta[diffusion]'`` when the extra is not installed."""
    from ctta.extras import require

    require("transformers", "diffusion", "DiffTPT's diffusion views")
    return require("diffusers", "diffusion", "DiffTPT's diffusion views")
