"""The embedded default data: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upsampled.

Works offline (the data ships inside scikit-learn). Images are scaled to [0, 1], resized to ``img_size``
(bilinear) and replicated to ``channels``; the train/test split is stratified and fixed (random_state=0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class TensorImageDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` with integer ``targets`` and optional per-sample ``transform``."""

    def __init__(self, images: torch.Tensor, targets, classes=None, transform=None) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes) if classes is not None else sorted(set(self.targets))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.targets[i]


def load_digits(img_size: int = 32, channels: int = 3, test_fraction: float = 0.25, transform=None):
    """Train/test ``TensorImageDataset``s of sklearn's digits at ``img_size`` px with ``channels`` channels."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if img_size < 8:
        raise ValueError(f"img_size must be >= 8 (digits are 8x8), got {img_size}")
    d = _load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, channels, -1, -1).contiguous()
    idx = torch.arange(len(x)).numpy()
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=0, stratify=d.target)
    tr, te = sorted(tr), sorted(te)  # keep the native (interleaved) order
    y = d.target.tolist()
    mk = lambda ix: TensorImageDataset(x[ix], [y[i] for i in ix], DIGIT_NAMES, transform)  # noqa: E731
    return mk(tr), mk(te)


def load_digits_cl(entry, root=None, train_transform=None, test_transform=None, img_size: int = 32, channels: int = 3):
    """Catalogue loader (kind ``cl``): train/test digits at ``img_size`` px; transforms act on the tensors."""
    train, test = load_digits(img_size=img_size, channels=channels)
    train.transform, test.transform = train_transform, test_transform
    return train, test


def load_digits_splits(entry, root=None, img_size: int = 32, **_) -> dict[str, list[tuple]]:
    """Catalogue loader (kind ``few_shot``): ``{"train"|"val"|"test": [(image tensor, label, classname), ...]}``;
    val = the last fifth of the bundled train part, train = the rest."""
    train, test = load_digits(img_size=img_size)
    mk = lambda ds: [(ds.images[i], y, DIGIT_NAMES[y]) for i, y in enumerate(ds.targets)]  # noqa: E731
    tr = mk(train)
    n_val = len(tr) // 5
    return {"train": tr[:-n_val], "val": tr[-n_val:], "test": mk(test)}
