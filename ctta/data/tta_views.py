"""Test-time views for TPT/DiffTPT: the centre crop plus random crop/flip views, with AugMix on fine-grained sets.

Paper: TPT (Shu et al., NeurIPS 2022); AugMix (Hendrycks et al., ICLR 2020). Reference: azshue/TPT@63ecbace
``data/datautils.py:{AugMixAugmenter, augmix, get_preaugment}``, ``data/augmix_ops.py`` (re-implemented; no code
copied).

Views of one image: ``[preprocess(centre_crop(x))] + (n_views - 1) x augmented(x)``. Augmented views start from the
raw image: ``RandomResizedCrop(res)`` (scale (0.08, 1), ratio (3/4, 4/3), bilinear) + horizontal flip; with AugMix,
three chains of 1-3 ops (autocontrast, equalize, posterize, rotate, solarize, shear x/y, translate x/y; severity 1)
are mixed in normalised-tensor space: ``m * pre(crop) + (1 - m) * sum_i w_i * pre(chain_i)``.

Deviations from the reference code: every random draw comes from a ``numpy.random.Generator`` passed per sample
(seeded from ``(seed, sample index)`` by the datasets), never from the global torch/numpy RNGs, so the views do not
depend on the number of DataLoader workers. Crop parameters follow torchvision's ``RandomResizedCrop.get_params``
algorithm with that generator. Affine ops use the view resolution as output size (the reference hard-codes 224).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode

from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__ = ["CLIP_MEAN", "CLIP_STD", "TPTViews", "AUGMIX_OPS", "random_resized_crop_params", "make_views"]

CLIP_MEAN, CLIP_STD = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # the views' normalisation (scenarios record it)


def _level(rng: np.random.Generator, severity: float) -> float:
    return rng.uniform(0.1, severity)


def _int_param(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_param(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _signed(rng: np.random.Generator, v: float) -> float:
    return -v if rng.uniform() > 0.5 else v


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def _autocontrast(img, rng, sev):
    return ImageOps.autocontrast(img)


def _equalize(img, rng, sev):
    return ImageOps.equalize(img)


def _posterize(img, rng, sev):
    return ImageOps.posterize(img, 4 - _int_param(_level(rng, sev), 4))


def _rotate(img, rng, sev):
    return img.rotate(_signed(rng, _int_param(_level(rng, sev), 30)), resample=Image.Resampling.BILINEAR)


def _solarize(img, rng, sev):
    return ImageOps.solarize(img, 256 - _int_param(_level(rng, sev), 256))


def _shear_x(img, rng, sev):
    return _affine(img, (1, _signed(rng, _float_param(_level(rng, sev), 0.3)), 0, 0, 1, 0))


def _shear_y(img, rng, sev):
    return _affine(img, (1, 0, 0, _signed(rng, _float_param(_level(rng, sev), 0.3)), 1, 0))


def _translate_x(img, rng, sev):
    return _affine(img, (1, 0, _signed(rng, _int_param(_level(rng, sev), img.size[0] / 3)), 0, 1, 0))


def _translate_y(img, rng, sev):
    return _affine(img, (1, 0, 0, 0, 1, _signed(rng, _int_param(_level(rng, sev), img.size[1] / 3))))


# The reference's 9 ops (the 4 ImageNet-C-overlapping colour/contrast/brightness/sharpness ops are excluded).
AUGMIX_OPS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear_x, _shear_y, _translate_x, _translate_y)


def random_resized_crop_params(
    rng: np.random.Generator, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` drawn like torchvision's ``RandomResizedCrop.get_params``, from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TPTViews:
    """Callable view generator: image -> ``(n_views, 3, res, res)`` normalised tensor, ``views[0]`` the centre crop.

    Args:
        n_views: total number of views including the original (TPT: 64).
        resolution: output side (224 for ViT-B/16).
        augmix: AugMix on the augmented views (TPT: fine-grained sets only).
        severity: AugMix severity (1 in the reference).
        mean, std: normalisation (CLIP's).
        seed: seed of the fallback generator used when ``__call__`` gets no ``rng`` (then the views depend on the
            call order; datasets pass a per-sample generator instead).
    """

    def __init__(
        self,
        n_views: int = 64,
        resolution: int = 224,
        augmix: bool = False,
        severity: float = 1.0,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        seed: int = 0,
    ) -> None:
        if n_views < 1 or resolution < 1:
            raise ValueError(f"need n_views >= 1 and resolution >= 1, got {n_views}, {resolution}")
        self.n_views, self.resolution, self.augmix, self.severity = n_views, resolution, augmix, severity
        self.mean, self.std = tuple(mean), tuple(std)
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"TPTViews(n_views={self.n_views}, resolution={self.resolution}, augmix={self.augmix})"

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """``ToTensor`` + ``Normalize``: ``(3, H, W)``."""
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)

    def base(self, img: Image.Image) -> torch.Tensor:
        """View 0: ``Resize(res, bicubic)`` + ``CenterCrop(res)`` + preprocess."""
        img = TF.resize(img, self.resolution, interpolation=InterpolationMode.BICUBIC)
        return self.preprocess(TF.center_crop(img, self.resolution))

    def augmented(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """One random view: crop + flip (+ AugMix)."""
        top, left, h, w = random_resized_crop_params(rng, img.size[0], img.size[1])
        size = [self.resolution, self.resolution]
        crop = TF.resized_crop(img, top, left, h, w, size, interpolation=InterpolationMode.BILINEAR)
        if rng.random() < 0.5:
            crop = TF.hflip(crop)
        x = self.preprocess(crop)
        if not self.augmix:
            return x
        ws = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
        m = float(np.float32(rng.beta(1.0, 1.0)))
        mix = torch.zeros_like(x)
        for i in range(3):
            chain = crop.copy()
            for _ in range(int(rng.integers(1, 4))):
                chain = AUGMIX_OPS[int(rng.integers(len(AUGMIX_OPS)))](chain, rng, self.severity)
            mix += float(ws[i]) * self.preprocess(chain)
        return m * x + (1 - m) * mix

    def __call__(self, img, rng: np.random.Generator | None = None) -> torch.Tensor:
        img = _to_pil(img)
        rng = self._rng if rng is None else rng
        views = [self.base(img)] + [self.augmented(img, rng) for _ in range(self.n_views - 1)]
        return torch.stack(views)  # (N, 3, res, res)


def _to_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, torch.Tensor):
        if img.ndim != 3:
            raise ValueError(f"expected an image tensor (C, H, W), got shape {tuple(img.shape)}")
        return TF.to_pil_image(img.clamp(0, 1)).convert("RGB")
    raise TypeError(f"expected a PIL image or a (C, H, W) tensor in [0, 1], got {type(img).__name__}")


def make_views(images, n_views: int = 64, resolution: int = 224, augmix: bool = False, seed: int = 0) -> torch.Tensor:
    """Views for a list of PIL images (or ``(C, H, W)`` tensors): ``(B, n_views, 3, res, res)``.

    Sample ``i`` uses a generator seeded from ``(seed, i)``, like the test-time datasets do. One image is refused
    with a ``TypeError`` saying to pass ``[image]`` (a ``(C, H, W)`` tensor would otherwise be read as C images).
    """
    if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.dim() == 3):
        raise TypeError("make_views takes a list of images (PIL images or (C, H, W) tensors) or a (B, C, H, W) batch; "
                        "for one image pass [image]")  # fmt: skip
    gen = TPTViews(n_views, resolution, augmix)
    return torch.stack([gen(img, np.random.default_rng([seed, i])) for i, img in enumerate(images)])
