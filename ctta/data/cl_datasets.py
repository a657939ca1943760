"""Local-folder loaders for the Si-Blurry benchmarks: CIFAR-100, Tiny-ImageNet and ImageNet-R.

Splits, native orders and statistics follow ``specs/si-blurry-mvp.md`` §3 (reference: moonjunyyy/Si-Blurry@c4024ce,
``datasets/{TinyImageNet,Imagenet_R}.py`` and torchvision's CIFAR-100; re-implemented, no code copied):

- CIFAR-100: the torchvision pickle layout ``<root>/cifar-100-python/{train,test,meta}``, pickle order.
- Tiny-ImageNet: ``<root>/tiny-imagenet-200``; train = torchvision ImageFolder order over ``train/`` (sorted wnid
  folders, recursive sorted walk), labelled by the line index of the wnid in ``wnids.txt``; test = ``val/`` in
  ImageFolder order, labelled through ``val/val_annotations.txt``.
- ImageNet-R: ImageFolder over ``<root>/imagenet-r`` (sorted folders and files), ``randperm`` with a seed-0 CPU
  generator, first 80 % (sorted) = train, rest (sorted) = test; the dataset itself applies ``Resize(256)`` ->
  ``RandomCrop(224)`` to both splits (``test_center_crop=True`` uses ``CenterCrop`` for the test split).

Every dataset returns ``(transform(img), label)`` and has ``.targets`` (list[int]) and ``.classes`` (readable
names). Deviations: none in the splits; the loaders read the files directly (no download, no md5 check).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from ctta.data.folder import ImageFolderDataset, load_rgb, require_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMG_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list


@dataclass(frozen=True)
class DatasetStats:
    """Per-dataset constants of spec §3.

    Attributes:
        n_classes: number of classes C.
        mean: normalisation mean (RGB).
        std: normalisation std (RGB).
        autoaugment: torchvision ``AutoAugmentPolicy`` value ("cifar10" | "imagenet") or None.
    """

    n_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    autoaugment: str | None


DATASET_STATS = {
    "cifar100": DatasetStats(100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), "cifar10"),
    "tinyimagenet": DatasetStats(200, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), "imagenet"),
    "imagenet_r": DatasetStats(200, IMAGENET_MEAN, IMAGENET_STD, "imagenet"),
    # the bundled sklearn digits (smoke runs; not part of the reference): centred [0, 1] images
    "digits": DatasetStats(10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cifar10"),
}

_HOW = {
    "cifar100": "Download the python version https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract "
    "it so that <root>/cifar-100-python/{train,test,meta} exist.",
    "tinyimagenet": "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that "
    "<root>/tiny-imagenet-200/{wnids.txt,train,val} exist.",
    "imagenet_r": "Download https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar and extract it so that "
    "<root>/imagenet-r/<wnid>/*.jpg exist (200 class folders, 30,000 images).",
}


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


def _default(transform: Callable | None) -> Callable:
    return T.ToTensor() if transform is None else transform


# ---------------------------------------------------------------------------------------------- CIFAR-100
def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-100 file missing: {path}. {_HOW['cifar100']}")
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
    base = require_dir(Path(root) / "cifar-100-python", "CIFAR-100", _HOW["cifar100"])
    names = [n.replace("_", " ") for n in _unpickle(base / "meta")["fine_label_names"]]
    out = []
    for split, tf in (("train", train_transform), ("test", test_transform)):
        d = _unpickle(base / split)
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


def _tiny_train(base: Path, idx: dict[str, int]) -> list[tuple[Path, int]]:
    train_dir = require_dir(base / "train", "Tiny-ImageNet train split", _HOW["tinyimagenet"])
    samples = []
    for cls_dir in sorted(d for d in train_dir.iterdir() if d.is_dir()):  # ImageFolder class order
        if cls_dir.name not in idx:
            raise ValueError(f"Tiny-ImageNet: train folder {cls_dir.name!r} is not listed in wnids.txt")
        samples += [(p, idx[cls_dir.name]) for p in walk_images(cls_dir)]
    return samples


def _tiny_val(base: Path, idx: dict[str, int]) -> list[tuple[Path, int]]:
    val_dir = require_dir(base / "val", "Tiny-ImageNet val split", _HOW["tinyimagenet"])
    ann = val_dir / "val_annotations.txt"
    if not ann.is_file():
        raise FileNotFoundError(f"Tiny-ImageNet: {ann} missing. {_HOW['tinyimagenet']}")
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
    base = require_dir(Path(root) / "tiny-imagenet-200", "Tiny-ImageNet", _HOW["tinyimagenet"])
    wnid_file = base / "wnids.txt"
    if not wnid_file.is_file():
        raise FileNotFoundError(f"Tiny-ImageNet: {wnid_file} missing. {_HOW['tinyimagenet']}")
    wnids = [w.strip() for w in wnid_file.read_text().splitlines() if w.strip()]
    idx = {w: i for i, w in enumerate(wnids)}  # labels = line index in wnids.txt (reference relabelling)
    names = _tiny_names(base, wnids)
    train = ImageListDataset(_tiny_train(base, idx), names, _default(train_transform))
    test = ImageListDataset(_tiny_val(base, idx), names, _default(test_transform))
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
    base = Path(root) / "imagenet-r"
    full = ImageFolderDataset(base, dataset_name="ImageNet-R", how_to_get=_HOW["imagenet_r"])
    train_idx, test_idx = imagenet_r_split(len(full.samples))
    names = _imagenet_r_names(base, full.classes)
    crop = T.Compose([T.Resize(256), T.RandomCrop(224)])
    test_crop = T.Compose([T.Resize(256), T.CenterCrop(224)]) if test_center_crop else crop
    train = ImageListDataset([full.samples[i] for i in train_idx], names, T.Compose([crop, _default(train_transform)]))
    test = ImageListDataset(
        [full.samples[i] for i in test_idx], names, T.Compose([test_crop, _default(test_transform)])
    )
    return train, test


def load_cl_dataset(name: str, root: str | Path, train_transform=None, test_transform=None, **kwargs):
    """Dispatch to the loader of ``name`` ("cifar100" | "tinyimagenet" | "imagenet_r" | "digits").

    ``kwargs`` go to the loader (``test_center_crop`` for ImageNet-R; ``img_size``/``channels`` for digits).
    For digits the transforms act on tensors (the images are already tensors in [0, 1]).
    """
    if name == "cifar100":
        return load_cifar100(root, train_transform, test_transform, **kwargs)
    if name == "tinyimagenet":
        return load_tiny_imagenet(root, train_transform, test_transform, **kwargs)
    if name == "imagenet_r":
        return load_imagenet_r(root, train_transform, test_transform, **kwargs)
    if name == "digits":
        from ctta.data.digits import load_digits

        train, test = load_digits(**kwargs)
        train.transform, test.transform = train_transform, test_transform
        return train, test
    raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASET_STATS)}")
