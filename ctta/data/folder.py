"""ImageFolder-style datasets, the ``folder`` catalogue source and the "dataset is missing" error of every loader.

``ImageFolderDataset`` follows torchvision's ``ImageFolder`` conventions (sorted class folders, sorted files); the
``folder`` source (``<root>/train/<class>/*``, ``<root>/test/<class>/*``) yields tensors through
``default_transform`` unless given its own transforms, so default batching stacks its samples.
"""

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


class ImageListDataset(Dataset):
    """Images given as a list of ``(path, label)`` read as RGB PIL images and passed through ``transform``."""

    def __init__(self, samples, classes, transform: Callable | None = None) -> None:
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.targets = [y for _, y in self.samples]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, y = self.samples[i]
        img = load_rgb(path)
        return (self.transform(img) if self.transform else img), y


class ImageFolderDataset(ImageListDataset):
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
        classes = list(classes) if classes is not None else found
        missing = [c for c in classes if not (self.root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"{dataset_name}: class folders missing under {self.root}: {missing[:10]}")
        samples = [
            (str(f), label)
            for label, c in enumerate(classes)
            for f in sorted((self.root / c).iterdir())
            if f.suffix in IMG_EXTENSIONS or f.suffix.lower() in IMG_EXTENSIONS
        ]
        if not samples:
            raise FileNotFoundError(f"{dataset_name}: no images found under {self.root}")
        super().__init__(samples, classes, transform)


def default_transform(img_size: int):
    """``Resize(img_size)`` (shorter side) -> ``CenterCrop(img_size)`` -> ``ToTensor()``: PIL image -> (3, S, S)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(img_size), T.CenterCrop(img_size), T.ToTensor()])


def load_folder(entry, root: str | Path, train_transform=None, test_transform=None, img_size: int = 224):
    """Catalogue loader of ``folder``: ``(train, test)`` from ``<root>/{train,test}/<class>/*`` (under the entry's
    folder, for a user's entry with this loader).

    Both splits share the train split's classes; a missing transform is ``default_transform(img_size)``.
    """
    base = entry.path(root)
    how = entry.how_to_get()
    train_tf = default_transform(img_size) if train_transform is None else train_transform
    test_tf = default_transform(img_size) if test_transform is None else test_transform
    tr = ImageFolderDataset(base / "train", transform=train_tf, dataset_name=entry.title, how_to_get=how)
    te = ImageFolderDataset(base / "test", tr.classes, test_tf, dataset_name=entry.title, how_to_get=how)
    return tr, te
