"""Si-Blurry train/test image pipelines (Moon et al., ICCV 2023, arXiv 2308.09303; reference
moonjunyyy/Si-Blurry@c4024ce, re-implemented).

Training: the dataset yields ``ToTensor()`` images at native resolution; at **every** optimiser step the whole
batch tensor goes through ×255 -> uint8 -> ``AutoAugment(policy)`` -> ÷255 -> ``Resize((S, S))`` ->
``RandomCrop(S, padding=4)`` -> ``RandomHorizontalFlip()`` -> ``Normalize(mean, std)``. Torchvision draws one set
of random parameters per call, so every image of a batch gets the same AutoAugment op, crop and flip (the
reference behaviour, reproduced by default). ``per_sample_augmentation=True`` draws them per image instead.
Test: ``Resize((S, S))`` -> ``ToTensor`` -> ``Normalize`` (tensors in [0, 1] skip ``ToTensor``).

Deviations: none (the uint8 conversion truncates, which is exact for ``ToTensor`` images).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision import transforms as T


class SiBlurryTrainAugment(nn.Module):
    """Batch-shared training augmentation of the reference (one random draw per call).

    Args:
        mean: normalisation mean per channel.
        std: normalisation std per channel.
        autoaugment: ``AutoAugmentPolicy`` value ("cifar10" | "imagenet" | "svhn") or None to skip AutoAugment.
        img_size: output size S (224 in the reference; small for tiny tests).
        padding: ``RandomCrop`` padding.
        per_sample_augmentation: draw the random parameters independently for each image.
        random_crop_flip: apply ``RandomCrop`` and ``RandomHorizontalFlip`` (False with ``autoaugment=None``
            gives the deterministic Resize + Normalize pipeline, e.g. for parity tests).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        autoaugment: str | None = "cifar10",
        img_size: int = 224,
        padding: int = 4,
        per_sample_augmentation: bool = False,
        random_crop_flip: bool = True,
    ) -> None:
        super().__init__()
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.autoaugment = T.AutoAugment(T.AutoAugmentPolicy(autoaugment)) if autoaugment else None
        geometric = [T.Resize((img_size, img_size))]
        if random_crop_flip:
            geometric += [T.RandomCrop(img_size, padding=padding), T.RandomHorizontalFlip()]
        self.geometric = T.Compose(geometric)
        self.normalize = T.Normalize(tuple(mean), tuple(std))
        self.per_sample = per_sample_augmentation

    def _pipeline(self, x: torch.Tensor) -> torch.Tensor:
        if self.autoaugment is not None:
            x8 = (x * 255).to(torch.uint8)  # (B, C, H, W) uint8
            x = self.autoaugment(x8).to(x.dtype) / 255
        return self.normalize(self.geometric(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a batch ``(B, C, H, W)`` of images in [0, 1]; returns ``(B, C, S, S)`` normalised."""
        if x.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got dtype {x.dtype}")
        if self.per_sample:
            return torch.cat([self._pipeline(xi.unsqueeze(0)) for xi in x]) if len(x) else x
        return self._pipeline(x)


def siblurry_test_transform(mean: Sequence[float], std: Sequence[float], img_size: int = 224) -> T.Compose:
    """Test pipeline ``Resize((S, S))`` -> ``ToTensor`` -> ``Normalize`` for PIL images or [0, 1] tensors."""
    return T.Compose([T.Resize((img_size, img_size)), _ToTensorIfNeeded(), T.Normalize(tuple(mean), tuple(std))])


class _ToTensorIfNeeded:
    """``ToTensor`` for PIL images; tensors pass through unchanged."""

    def __init__(self) -> None:
        self._to_tensor = T.ToTensor()

    def __call__(self, img):
        return img if isinstance(img, torch.Tensor) else self._to_tensor(img)

    def __repr__(self) -> str:
        return "ToTensorIfNeeded()"


def cutmix(x: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix of a batch with a random permutation of itself (as the reference ER trainer's ``cutmix_data``).

    ``lam ~ Beta(alpha, alpha)``; a box of side ratio ``sqrt(1 - lam)`` centred uniformly at random (clipped to
    the image) is pasted from ``x[perm]``; ``lam`` is then set to the exact kept-area fraction.

    Args:
        x: images ``(B, C, H, W)`` (not modified).
        alpha: Beta parameter (> 0).

    Returns:
        ``(mixed (B, C, H, W), perm (B,), lam)``; the loss is ``lam * CE(y) + (1 - lam) * CE(y[perm])``.
    """
    if alpha <= 0:
        raise ValueError(f"cutmix alpha must be > 0, got {alpha}")
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    h, w = x.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return mixed, perm, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
