"""ImageFolder-style datasets and the "dataset is missing" error shared by every local-folder loader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")


def require_dir(path: str | Path, dataset_name: str, how_to_get: str) -> Path:
    """Return ``path`` as a Path if it is a directory, else raise a FileNotFoundError saying how to get it.

    Args:
        path: expected dataset folder.
        dataset_name: human-readable dataset name for the message.
        how_to_get: where to download it and what layout to put under ``path``.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"{dataset_name} not found at {p}. {how_to_get} "
            f"Then point the config at it (scenario.root=/path/to/parent) or place it at {p}."
        )
    return p


def load_rgb(path: str | Path) -> Image.Image:
    with open(path, "rb") as fh:
        return Image.open(fh).convert("RGB")


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` dataset. Class order = sorted folder names unless ``classes`` is given.

    Attributes:
        classes: class (folder) names in label order.
        samples: list of (path, label) in sorted-path order within each class, classes in label order.
        targets: labels, aligned with ``samples``.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
        dataset_name: str = "image folder",
        how_to_get: str = "Expected one sub-folder of images per class.",
    ) -> None:
        self.root = require_dir(root, dataset_name, how_to_get)
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        missing = [c for c in self.classes if not (self.root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"{dataset_name}: class folders missing under {self.root}: {missing[:10]}")
        self.samples = [
            (str(f), label)
            for label, c in enumerate(self.classes)
            for f in sorted((self.root / c).iterdir())
            if f.suffix in IMG_EXTENSIONS or f.suffix.lower() in IMG_EXTENSIONS
        ]
        if not self.samples:
            raise FileNotFoundError(f"{dataset_name}: no images found under {self.root}")
        self.targets = [lab for _, lab in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = load_rgb(path)
        return (self.transform(img) if self.transform else img), label
