"""ImageFolder-style datasets, the ``folder`` catalogue source and the "dataset is missing" error of every loader.

``ImageFolderDataset`` follows torchvision's ``ImageFolder`` conventions (sorted class folders, sorted files); the
``folder`` source (``<root>/train/<class>/*``, ``<root>/test/<class>/*``) yields tensors through
``default_transform`` unless given its own transforms, so default batching stacks its samples.

An image that cannot be read raises ``UnreadableImageError`` (a ``ValueError``) naming the file, for every loader
that reads through ``load_rgb``. The ``folder`` source also checks every file's header when it lists the folders (a
file PIL cannot identify stops the run before training, naming the file), or, with ``skip_bad_images=True``
(``scenario.skip_bad_images=true``), leaves such files out with one warning giving their count. A ``folder`` dataset
with fewer than two classes is refused (classification over one class scores 100 % whatever the model does).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError
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


class UnreadableImageError(ValueError):
    """An image file that PIL cannot identify or decode; the message names the file and what to do."""


SKIP_HINT = "fix or remove it (a folder dataset skips unreadable images with scenario.skip_bad_images=true)"


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as RGB; ``UnreadableImageError`` naming the file if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL: unknown format, truncated or corrupt data
        raise UnreadableImageError(f"cannot read image {path}: {_reason(e)}; {SKIP_HINT}") from e


def _reason(e: BaseException) -> str:
    return "not an image PIL can identify" if isinstance(e, UnidentifiedImageError) else str(e) or type(e).__name__


def readable_samples(samples: list, what: str, skip: bool = False) -> list:
    """``samples`` (``(path, label)``) whose files PIL identifies from their header (nothing decoded).

    An unidentifiable file raises ``UnreadableImageError`` naming it, or with ``skip`` is left out: one warning for
    ``what`` gives how many were skipped and the first one.
    """
    good, bad = [], []
    for path, label in samples:
        try:
            with Image.open(path):
                pass
            good.append((path, label))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            if not skip:
                raise UnreadableImageError(f"cannot read image {path}: {_reason(e)}; {SKIP_HINT}") from None
            bad.append((path, e))
    if bad:
        first, e = bad[0]
        warnings.warn(f"{what}: skipped {len(bad)} unreadable image(s) of {len(samples)} (first: {first}: "
                      f"{_reason(e)})", UserWarning, stacklevel=3)  # fmt: skip
    return good


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


def load_folder(
    entry, root: str | Path, train_transform=None, test_transform=None, img_size: int = 224, skip_bad_images=False
):
    """Catalogue loader of ``folder``: ``(train, test)`` from ``<root>/{train,test}/<class>/*`` (under the entry's
    folder, for a user's entry with this loader).

    Both splits share the train split's classes; a missing transform is ``default_transform(img_size)``. Every
    file's header is checked: an unreadable one raises naming it, or with ``skip_bad_images`` is left out (one
    warning with the count). Fewer than two classes raise ``ValueError``.
    """
    base = entry.path(root)
    how = entry.how_to_get()
    train_tf = default_transform(img_size) if train_transform is None else train_transform
    test_tf = default_transform(img_size) if test_transform is None else test_transform
    tr = ImageFolderDataset(base / "train", transform=train_tf, dataset_name=entry.title, how_to_get=how)
    if len(tr.classes) < 2:
        raise ValueError(
            f"{entry.title} at {base / 'train'} has {len(tr.classes)} class folder(s) {tr.classes}: classification "
            f"needs at least two (one sub-folder of images per class, the same under train/ and test/)"
        )
    te = ImageFolderDataset(base / "test", tr.classes, test_tf, dataset_name=entry.title, how_to_get=how)
    for ds, split in ((tr, "train"), (te, "test")):
        ds.samples = readable_samples(ds.samples, f"{entry.title} {base / split}", skip_bad_images)
        ds.targets = [y for _, y in ds.samples]
    return tr, te
