"""Local-folder loaders for the Si-Blurry benchmarks: CIFAR-100, Tiny-ImageNet and ImageNet-R.

Splits, native orders and statistics follow the Si-Blurry reference, moonjunyyy/Si-Blurry@c4024ce
(``datasets/{TinyImageNet,Imagenet_R}.py``, ``utils/data_loader.py``) and torchvision's CIFAR-100 (Moon et al.,
"Online Continual Learning on Hierarchical Label Expansion", ICCV 2023, arXiv 2308.09303; re-implemented, no code
copied). Folders, download sources and statistics are the entries of ``ctta.data.catalogue``:

- CIFAR-100: the torchvision pickle layout ``<root>/cifar-100-python/{train,test,meta}``, pickle order.
- Tiny-ImageNet: ``<root>/tiny-imagenet-200``; train = torchvision ImageFolder order over ``train/`` (sorted wnid
  folders, recursive sorted walk), labelled by the line index of the wnid in ``wnids.txt``; test = ``val/`` in
  ImageFolder order, labelled through ``val/val_annotations.txt``.
- ImageNet-R: ImageFolder over ``<root>/imagenet-r`` (sorted folders and files), ``randperm`` with a seed-0 CPU
  generator, first 80 % (sorted) = train, rest (sorted) = test; the dataset itself applies ``Resize(256)`` ->
  ``RandomCrop(224)`` to both splits (``test_center_crop=True`` uses ``CenterCrop`` for the test split).

Every dataset returns ``(transform(img), label)`` and has ``.targets`` (list[int]) and ``.classes`` (readable
names). ``load_*_entry`` are the catalogue's loaders (``loader(entry, root, **kw)``). Deviations: none in the
splits; the loaders read the files directly (no download, no md5 check).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from ctta.data import catalogue
from ctta.data.catalogue import DatasetEntry, DatasetStats
from ctta.data.folder import ImageFolderDataset, ImageListDataset

__all__ = [
    "DATASET_STATS",
    "ArrayImageDataset",
    "DatasetStats",
    "ImageListDataset",
    "imagenet_r_split",
    "load_cifar100",
    "load_cl_dataset",
    "load_imagenet_r",
    "load_tiny_imagenet",
    "walk_images",
]

_IMG_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list

# Si-Blurry's per-dataset constants: a view of the catalogue
DATASET_STATS: dict[str, DatasetStats] = {e.name: e.stats for e in catalogue.entries("cl") if e.stats is not None}


class ArrayImageDataset(Dataset):
    """In-memory uint8 images ``(N, H, W, 3)`` returned as PIL images through ``transform``."""

    def __init__(self, data: np.ndarray, targets, classes, transform: Callable | None = None) -> None:
        self.data = data
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


def _default(transform: Callable | None) -> Callable:
    return T.ToTensor() if transform is None else transform


# ---------------------------------------------------------------------------------------------- CIFAR-100
def _unpickle(path: Path, entry: DatasetEntry) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{entry.title} file missing: {path}. {entry.how_to_get()}")
    with open(path, "rb") as fh:
        d = pickle.load(fh, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def load_cifar100(root: str | Path, train_transform=None, test_transform=None):
    """CIFAR-100 train/test in pickle order (torchvision layout ``<root>/cifar-100-python``).

    Args:
        root: folder containing ``cifar-100-python``.
        train_transform: applied to train PIL images (default ``ToTensor()``, native 32 px).
        test_transform: applied to test PIL images (default ``ToTensor()``).

    Returns:
        ``(train, test)`` ``ArrayImageDataset``s with ``.targets`` and ``.classes``.
    """
    return catalogue.load("cifar100", "cl", root, train_transform=train_transform, test_transform=test_transform)


def load_cifar100_entry(entry: DatasetEntry, root: str | Path, train_transform=None, test_transform=None):
    """Catalogue loader of ``load_cifar100``."""
    base = entry.require(entry.path(root))
    names = [n.replace("_", " ") for n in _unpickle(base / "meta", entry)["fine_label_names"]]
    out = []
    for split, tf in (("train", train_transform), ("test", test_transform)):
        d = _unpickle(base / split, entry)
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out.append(ArrayImageDataset(np.ascontiguousarray(data), d["fine_labels"], names, _default(tf)))
    return out[0], out[1]


# ------------------------------------------------------------------------------------------ Tiny-ImageNet
def walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` in torchvision ``ImageFolder`` order (sorted recursive walk)."""
    files = []
    for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True)):
        files += [Path(dirpath) / f for f in sorted(fnames) if f.lower().endswith(_IMG_EXT)]
    return files


def _tiny_names(base: Path, wnids: list[str]) -> list[str]:
    words = base / "words.txt"
    if not words.is_file():
        return list(wnids)
    table = dict(line.rstrip("\n").split("\t", 1) for line in words.read_text().splitlines(True) if "\t" in line)
    return [table.get(w, w).split(",")[0].strip() for w in wnids]


def _tiny_train(base: Path, idx: dict[str, int], entry: DatasetEntry) -> list[tuple[Path, int]]:
    train_dir = entry.require(base / "train", "train split")
    samples = []
    for cls_dir in sorted(d for d in train_dir.iterdir() if d.is_dir()):  # ImageFolder class order
        if cls_dir.name not in idx:
            raise ValueError(f"Tiny-ImageNet: train folder {cls_dir.name!r} is not listed in wnids.txt")
        samples += [(p, idx[cls_dir.name]) for p in walk_images(cls_dir)]
    return samples


def _tiny_val(base: Path, idx: dict[str, int], entry: DatasetEntry) -> list[tuple[Path, int]]:
    val_dir = entry.require(base / "val", "val split")
    ann = val_dir / "val_annotations.txt"
    if not ann.is_file():
        raise FileNotFoundError(f"{entry.title}: {ann} missing. {entry.how_to_get()}")
    rows = [ln.split("\t") for ln in ann.read_text().splitlines() if ln.strip()]
    file_label = {r[0]: idx[r[1]] for r in rows}
    samples = []
    for sub in sorted(d for d in val_dir.iterdir() if d.is_dir()):  # ImageFolder over val/ (one folder: images)
        samples += [(p, file_label[p.name]) for p in walk_images(sub)]
    return samples


def load_tiny_imagenet(root: str | Path, train_transform=None, test_transform=None):
    """Tiny-ImageNet train (ImageFolder order, wnids.txt labels) and val (relabelled via val_annotations.txt).

    Args:
        root: folder containing ``tiny-imagenet-200``.
        train_transform: applied to train PIL images (default ``ToTensor()``, native 64 px).
        test_transform: applied to val PIL images (default ``ToTensor()``).
    """
    return catalogue.load("tinyimagenet", "cl", root, train_transform=train_transform, test_transform=test_transform)


def load_tiny_imagenet_entry(entry: DatasetEntry, root: str | Path, train_transform=None, test_transform=None):
    """Catalogue loader of ``load_tiny_imagenet``."""
    base = entry.require(entry.path(root))
    wnid_file = base / "wnids.txt"
    if not wnid_file.is_file():
        raise FileNotFoundError(f"{entry.title}: {wnid_file} missing. {entry.how_to_get()}")
    wnids = [w.strip() for w in wnid_file.read_text().splitlines() if w.strip()]
    idx = {w: i for i, w in enumerate(wnids)}  # labels = line index in wnids.txt (reference relabelling)
    names = _tiny_names(base, wnids)
    train = ImageListDataset(_tiny_train(base, idx, entry), names, _default(train_transform))
    test = ImageListDataset(_tiny_val(base, idx, entry), names, _default(test_transform))
    return train, test


# ------------------------------------------------------------------------------------------------ ImageNet-R
def imagenet_r_split(n: int) -> tuple[list[int], list[int]]:
    """Sorted train/test index lists of the reference 80/20 split (``randperm`` with a seed-0 CPU generator)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_train = int(n * 0.8)
    return perm[:n_train].sort().values.tolist(), perm[n_train:].sort().values.tolist()


def _imagenet_r_names(base: Path, wnids: list[str]) -> list[str]:
    readme = base / "README.txt"
    table = {}
    if readme.is_file():
        for line in readme.read_text(errors="ignore").splitlines():
            parts = line.strip().split(" ", 1)
            if len(parts) == 2 and parts[0].startswith("n") and parts[0][1:].isdigit():
                table[parts[0]] = parts[1].strip()
    return [table.get(w, w) for w in wnids]


def load_imagenet_r(root: str | Path, train_transform=None, test_transform=None, test_center_crop: bool = False):
    """ImageNet-R with the reference split; ``Resize(256)`` -> ``RandomCrop(224)`` inside the dataset.

    Args:
        root: folder containing ``imagenet-r``.
        train_transform: applied after the dataset crop (default ``ToTensor()``).
        test_transform: applied after the dataset crop (default ``ToTensor()``).
        test_center_crop: use ``CenterCrop(224)`` for the test split (option ``imagenet_r_test_center_crop``);
            the reference crops test images at random.
    """
    return catalogue.load(
        "imagenet_r", "cl", root, train_transform=train_transform, test_transform=test_transform,
        test_center_crop=test_center_crop,
    )  # fmt: skip


def load_imagenet_r_entry(
    entry: DatasetEntry,
    root: str | Path,
    train_transform=None,
    test_transform=None,
    test_center_crop: bool = False,
    fixed_crop: bool = True,
):
    """Catalogue loader of ``load_imagenet_r``; ``fixed_crop=False`` leaves out the dataset's own 256/224 crop
    (MULTI-LANE's reference applies only its transforms, tdemin16/multi-lane@5ee982c ``continual_datasets.py``)."""
    base = entry.path(root)
    full = ImageFolderDataset(base, dataset_name=entry.title, how_to_get=entry.how_to_get())
    train_idx, test_idx = imagenet_r_split(len(full.samples))
    names = _imagenet_r_names(base, full.classes)
    if not fixed_crop:
        train = ImageListDataset([full.samples[i] for i in train_idx], names, train_transform)
        return train, ImageListDataset([full.samples[i] for i in test_idx], names, test_transform)
    crop = T.Compose([T.Resize(256), T.RandomCrop(224)])
    test_crop = T.Compose([T.Resize(256), T.CenterCrop(224)]) if test_center_crop else crop
    train = ImageListDataset([full.samples[i] for i in train_idx], names, T.Compose([crop, _default(train_transform)]))
    test = ImageListDataset(
        [full.samples[i] for i in test_idx], names, T.Compose([test_crop, _default(test_transform)])
    )
    return train, test


def load_cl_dataset(name: str, root: str | Path, train_transform=None, test_transform=None, **kwargs):
    """The ``(train, test)`` pair of catalogue dataset ``name`` (kind ``cl``: cifar100, tinyimagenet, imagenet_r,
    digits, folder, ...).

    ``kwargs`` go to the loader (``test_center_crop`` for ImageNet-R; ``img_size``/``channels`` for digits).
    For digits the transforms act on tensors (the images are already tensors in [0, 1]).
    """
    return catalogue.load(name, "cl", root, train_transform=train_transform, test_transform=test_transform, **kwargs)
