"""Downstream datasets of DAM-VP with the reference splits, read from local folders (no downloads).

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138).
Reference: shikiw/DAM-VP@dec5821 ``data_utils/`` (splits and transforms re-implemented, no code copied).
Names, folders and download sources are the ``transfer`` entries of ``ctta.data.catalogue``; the ``load_*``
functions taking an entry are its loaders.

Every loader returns a ``TransferData`` with ``train``/``val``/``test`` datasets of ``(x, y)`` samples
(``x`` a PIL image, or a tensor for the bundled digits), ``targets`` and class names. Transforms are not
applied here: ``damvp_transforms`` builds the reference train/eval pipelines, attached by the scenario.

Layout under ``root`` (the reference's catalog):

- ``torchvision_dataset/``: ``cifar-10-batches-py``, ``cifar-100-python``, ``food-101``, ``train_32x32.mat`` +
  ``test_32x32.mat`` (SVHN), ``gtsrb/GTSRB/...`` + ``gtsrb/GT-final_test.csv``, ``dtd/dtd/{images,labels}``.
- ``FGVC/<dir>/{train,val,test}.json`` (VPT's split files, image path -> class id) for CUB-200, NABirds,
  Oxford Flowers, Stanford Dogs, Stanford Cars; ``FGVC/fgvc-aircraft-2013b/data/`` (official variant split).
- ``vtab-1k/<task>/{train800,val200,test}.txt`` (lines ``relative/path label``; the common image export of
  VPT's ``vtab_prep.py`` TFDS splits), images relative to the task folder.
- ``imagefolder:<dir>``: ``root/<dir>/{train,val,test}/<class>/<image>`` for any other dataset.

Deviations from the reference code: (1) the reference shuffles Food-101 and GTSRB with Python's global RNG
independently for the train and the val split before the 80/20 cut, so the two can overlap; here one fixed
permutation (``random.Random(0)``) is cut once (disjoint and deterministic). CIFAR and SVHN keep the native
order (first 80 % / last 20 %) exactly as the reference. (2) FGVC class ids are made contiguous from the
TRAIN split's ids (the reference does it per split, identical when every split has every class; a class
missing from train raises). (3) Class names come from ``classes.txt`` (CUB, NABirds) or an optional
``classnames.txt`` (one name per line) in the dataset folder, else the class ids.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ctta.data import catalogue
from ctta.data.catalogue import DatasetEntry
from ctta.data.folder import ImageFolderDataset, load_rgb

__all__ = [
    "NORMALIZATION",
    "TRANSFER_DATASETS",
    "ListDataset",
    "Relabel",
    "TransferData",
    "damvp_transforms",
    "load_transfer_dataset",
]

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # vit-b-22k
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
TRANSFER_DATASETS = tuple(
    e.name for e in catalogue.entries("transfer") if not e.bundled and "<" not in e.name
)  # the fixed names (catalogue order); families: vtab-<task>, imagefolder:<dir>, digits/<k>/<n>
_VTAB_SPLITS = {"train": "train800", "val": "val200", "test": "test"}
_TINTS = ((1.0, 0.35, 0.35), (0.35, 1.0, 0.35), (0.35, 0.35, 1.0), (1.0, 1.0, 0.35), (0.35, 1.0, 1.0))


@dataclass
class TransferData:
    """One downstream dataset: its three splits and class names (labels ``0..len(classnames)-1``)."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classnames: list[str]


class ListDataset(Dataset):
    """Samples ``[(ref, label)]`` read with ``loader(ref)`` (default: an RGB image file); ``.targets``."""

    def __init__(self, samples: Sequence[tuple], loader: Callable = load_rgb) -> None:
        self.samples = list(samples)
        self.targets = [int(y) for _, y in self.samples]
        self.loader = loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        ref, y = self.samples[i]
        return self.loader(ref), int(y)


def damvp_transforms(split: str, img_size: int = 224, normalization: str = "imagenet"):
    """Reference pipelines (DAM-VP ``data_utils/``):
    train = Resize(256) -> RandomCrop(224) -> HFlip -> ToTensor -> Normalize;
    eval = Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize. Resize scales as 256/224 of ``img_size``."""
    from torchvision import transforms as T

    if normalization not in NORMALIZATION:
        raise ValueError(f"normalization={normalization!r}; valid: {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalization]
    resize = {224: 256, 384: 438, 448: 512}.get(img_size, round(img_size * 256 / 224))
    if split == "train":
        aug = [T.Resize(resize), T.RandomCrop(img_size), T.RandomHorizontalFlip(0.5)]
    else:
        aug = [T.Resize(resize), T.CenterCrop(img_size)]
    return T.Compose([*aug, T.ToTensor(), T.Normalize(mean, std)])


def load_transfer_dataset(name: str, root: str | Path, **kwargs) -> TransferData:
    """The train/val/test splits of downstream dataset ``name`` under ``root`` (DAM-VP's splits).

    Args:
        name: a ``transfer`` name of ``ctta.data.catalogue``: ``TRANSFER_DATASETS``, ``vtab-<task>``,
            ``imagefolder:<dir>``, ``digits`` or ``digits/<k>/<n>``.
        root: the data root holding ``torchvision_dataset/``, ``FGVC/``, ``vtab-1k/``.
        kwargs: loader options (``img_size`` for the digits).

    Raises:
        FileNotFoundError: the dataset folder or a split file is missing (says what to put where).
        KeyError: unknown dataset name (lists the valid ones).
    """
    return catalogue.load(name, "transfer", root, **kwargs)


class Relabel(Dataset):
    """``(x, y)`` of ``base`` at ``indices`` with ``y -> label_map[y] + offset`` and an optional image map."""

    def __init__(self, base, indices, targets, label_map: dict, offset: int, image_fn=None) -> None:
        self.base, self.indices, self.image_fn = base, list(indices), image_fn
        self.label_map, self.offset = label_map, offset
        self.targets = [label_map[int(targets[i])] + offset for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _ = self.base[self.indices[i]]
        return (self.image_fn(x) if self.image_fn else x), self.targets[i]


class _Tint:
    """Multiply the RGB channels of a ``(3, H, W)`` tensor image by a colour (the digits' per-dataset look)."""

    def __init__(self, tint) -> None:
        import torch

        self.tint = torch.tensor(tint).view(3, 1, 1)

    def __call__(self, x):
        return x * self.tint


def load_digits(entry: DatasetEntry, root: str | Path = "", img_size: int = 224, **_) -> TransferData:
    """Catalogue loader of ``digits`` and ``digits/<k>/<n>`` (the k-th of n groups of the 10 classes, tinted).

    Splits: train = first 80 % / val = last 20 % of the bundled train part (of the group's classes), test = the
    bundled test part; tensors at ``img_size`` px.
    """
    import torch

    from ctta.data.digits import DIGIT_NAMES
    from ctta.data.digits import load_digits as _load

    name = entry.name
    parts = name.split("/")
    try:
        k, n = (int(parts[1]), int(parts[2])) if len(parts) == 3 else (0, 1)
    except ValueError:
        k, n = -1, 0
    if len(parts) not in (1, 3) or not 0 <= k < n <= 10:
        raise ValueError(f"synthetic digits dataset {name!r}: use 'digits' or 'digits/<k>/<n>' with 0 <= k < n <= 10")
    classes = torch.arange(10).tensor_split(n)[k].tolist()
    lmap = {c: i for i, c in enumerate(classes)}
    tr, te = _load(img_size=img_size)
    tint = _Tint(_TINTS[k % len(_TINTS)]) if n > 1 else None
    pick = lambda ds: [i for i, y in enumerate(ds.targets) if y in lmap]  # noqa: E731
    tr_idx = pick(tr)
    cut = int(0.8 * len(tr_idx))
    mk = lambda ds, idx: Relabel(ds, idx, ds.targets, lmap, 0, tint)  # noqa: E731
    return TransferData(
        name, mk(tr, tr_idx[:cut]), mk(tr, tr_idx[cut:]), mk(te, pick(te)), [DIGIT_NAMES[c] for c in classes]
    )


def _split_80_20(samples: list, name: str, permute: bool) -> tuple[list, list]:
    if permute:  # class-sorted native order: cut a fixed permutation (see module docstring)
        samples = list(samples)
        random.Random(0).shuffle(samples)
    cut = int(0.8 * len(samples))
    if cut == 0 or cut == len(samples):
        raise ValueError(f"{name}: the official train split has {len(samples)} samples, too few for an 80/20 cut")
    return samples[:cut], samples[cut:]


def _three(name: str, train: list, val: list, test: list, classnames, loader=load_rgb) -> TransferData:
    for split, s in (("train", train), ("val", val), ("test", test)):
        if not s:
            raise ValueError(f"{name}: the {split} split is empty")
    mk = lambda s: ListDataset(s, loader)  # noqa: E731
    return TransferData(name, mk(train), mk(val), mk(test), [str(c) for c in classnames])


def load_cifar(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """CIFAR-10/100 (torchvision pickle layout): train/val = first 80 % / last 20 % of train, native order."""
    from torchvision.datasets import CIFAR10, CIFAR100

    name = entry.name
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    base = entry.require(entry.path(root)).parent
    tr, te = cls(str(base), train=True, download=False), cls(str(base), train=False, download=False)
    loader = _ArrayLoader({"train": tr.data, "test": te.data})
    train, val = _split_80_20([(("train", i), y) for i, y in enumerate(tr.targets)], name, permute=False)
    test = [(("test", i), y) for i, y in enumerate(te.targets)]
    return _three(name, train, val, test, tr.classes, loader)


def load_svhn(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """SVHN ``train_32x32.mat`` / ``test_32x32.mat``: train/val = first 80 % / last 20 % of train."""
    from torchvision.datasets import SVHN

    base = entry.require(entry.path(root))
    for f in ("train_32x32.mat", "test_32x32.mat"):
        if not (base / f).is_file():
            raise FileNotFoundError(f"svhn: {base / f} missing. {entry.how_to_get()}")
    tr, te = SVHN(str(base), split="train"), SVHN(str(base), split="test")
    loader = _ArrayLoader({"train": tr.data.transpose(0, 2, 3, 1), "test": te.data.transpose(0, 2, 3, 1)})
    train, val = _split_80_20([(("train", i), int(y)) for i, y in enumerate(tr.labels)], "svhn", permute=False)
    test = [(("test", i), int(y)) for i, y in enumerate(te.labels)]
    return _three("svhn", train, val, test, [str(i) for i in range(10)], loader)


class _ArrayLoader:
    """Loads ``(split, index)`` refs from in-memory uint8 ``(N, H, W, 3)`` arrays as PIL images."""

    def __init__(self, arrays: dict) -> None:
        self.arrays = arrays

    def __call__(self, ref):
        from PIL import Image

        split, i = ref
        return Image.fromarray(self.arrays[split][i])


def load_food101(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """Food-101 ``meta/{train,test}.json``; train/val cut from one fixed permutation of train."""
    base = entry.require(entry.path(root))

    def read(split):
        meta = json.loads(_need_file(base / "meta" / f"{split}.json", entry).read_text())
        classes = sorted(meta)
        return classes, [(base / "images" / f"{p}.jpg", classes.index(c)) for c in meta for p in meta[c]]

    classes, train_all = read("train")
    train, val = _split_80_20(train_all, "food101", permute=True)
    return _three("food101", train, val, read("test")[1], classes)


def load_gtsrb(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """GTSRB (torchvision layout); train/val cut from one fixed permutation of the training images."""
    import csv

    base = entry.require(entry.path(root))
    tr_dir = entry.require(base / "GTSRB" / "Training", "training images")
    classes = sorted(d.name for d in tr_dir.iterdir() if d.is_dir())
    train_all = [(f, k) for k, c in enumerate(classes) for f in sorted((tr_dir / c).glob("*.ppm"))]
    with open(_need_file(base / "GT-final_test.csv", entry)) as fh:
        rows = list(csv.DictReader(fh, delimiter=";", skipinitialspace=True))
    test = [(base / "GTSRB" / "Final_Test" / "Images" / r["Filename"], int(r["ClassId"])) for r in rows]
    train, val = _split_80_20(train_all, "gtsrb", permute=True)
    return _three("gtsrb", train, val, test, [str(int(c)) for c in classes])


def load_dtd(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """DTD, official split partition 1 (``labels/{train,val,test}1.txt``)."""
    base = entry.require(entry.path(root)) / "dtd"
    img = entry.require(base / "images", "images")
    classes = sorted(d.name for d in img.iterdir() if d.is_dir())

    def read(split):  # official split, partition 1
        lines = _need_file(base / "labels" / f"{split}1.txt", entry).read_text().split()
        return [(img / ln, classes.index(ln.split("/")[0])) for ln in lines]

    return _three("dtd", read("train"), read("val"), read("test"), [c.replace("_", " ") for c in classes])


def load_fgvc_json(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """An FGVC set with VPT's ``{train,val,test}.json`` (image path -> class id); ids made contiguous."""
    name = entry.name
    base = entry.require(entry.path(root))
    annos = {s: json.loads(_need_file(base / f"{s}.json", entry).read_text()) for s in ("train", "val", "test")}
    ids = sorted(set(annos["train"].values()))
    cont = {c: i for i, c in enumerate(ids)}

    def samples(split):
        unknown = sorted({c for c in annos[split].values() if c not in cont})
        if unknown:
            raise ValueError(f"{name}: {split}.json has class ids absent from train.json: {unknown[:10]}")
        return [(base / entry.extra["images"] / p, cont[c]) for p, c in annos[split].items()]

    names = _fgvc_classnames(base, ids)
    return _three(name, samples("train"), samples("val"), samples("test"), names)


def _fgvc_classnames(base: Path, ids: list) -> list[str]:
    if (base / "classnames.txt").is_file():
        names = [ln.strip() for ln in (base / "classnames.txt").read_text().splitlines() if ln.strip()]
        if len(names) != len(ids):
            raise ValueError(f"{base / 'classnames.txt'} has {len(names)} names for {len(ids)} classes")
        return names
    if (base / "classes.txt").is_file():  # "<id> <name>" (CUB: "1 001.Black_footed_Albatross")
        key = lambda k: str(int(k)) if str(k).isdigit() else str(k)  # noqa: E731 ("001" == "1" == 1)
        table = {}
        for ln in (base / "classes.txt").read_text().splitlines():
            if ln.strip():
                k, v = ln.strip().split(maxsplit=1)
                table[key(k)] = v.split(".", 1)[-1].replace("_", " ")
        return [table.get(key(i), str(i)) for i in ids]
    return [str(i) for i in ids]


def load_aircraft(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """FGVC-Aircraft 2013b, official variant split (``images_variant_{train,val,test}.txt``)."""
    data = entry.require(entry.path(root))
    classes = sorted(ln.strip() for ln in _need_file(data / "variants.txt", entry).read_text().splitlines())
    classes = [c for c in classes if c]

    def read(split):
        lines = _need_file(data / f"images_variant_{split}.txt", entry).read_text().splitlines()
        pairs = [ln.strip().split(" ", 1) for ln in lines if ln.strip()]
        return [(data / "images" / f"{i}.jpg", classes.index(v)) for i, v in pairs]

    return _three("fgvc-aircraft", read("train"), read("val"), read("test"), classes)


def load_vtab(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """A VTAB-1k task exported as images + ``{train800,val200,test}.txt`` (lines ``relative/path label``)."""
    base = entry.require(entry.path(root))
    splits = {}
    for split, fname in _VTAB_SPLITS.items():
        lines = _need_file(base / f"{fname}.txt", entry).read_text().splitlines()
        splits[split] = [(base / p, int(y)) for p, y in (ln.rsplit(maxsplit=1) for ln in lines if ln.strip())]
    n = 1 + max(y for s in splits.values() for _, y in s)
    return _three(entry.name, splits["train"], splits["val"], splits["test"], [str(i) for i in range(n)])


def load_imagefolder(entry: DatasetEntry, root: str | Path, **_) -> TransferData:
    """``<root>/<dir>/{train,val,test}/<class>/<image>`` (classes of the train split; the entry's ``splits`` extra
    names the three folders when they differ, e.g. Birds-525's ``valid``)."""
    name, how = entry.name, entry.how_to_get()
    base = entry.require(entry.path(root))
    train, *evals = entry.extra.get("splits", ("train", "val", "test"))
    tr = ImageFolderDataset(base / train, dataset_name=f"{name} {train}", how_to_get=how)
    va, te = (ImageFolderDataset(base / s, tr.classes, dataset_name=f"{name} {s}", how_to_get=how) for s in evals)
    return _three(name, tr.samples, va.samples, te.samples, tr.classes)


def _need_file(path: Path, entry: DatasetEntry) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{entry.name}: split/annotation file {path} not found. {entry.how_to_get()}")
    return path
