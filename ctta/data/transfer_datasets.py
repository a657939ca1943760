"""Downstream datasets of DAM-VP with the reference splits, read from local folders (no downloads).

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138).
Reference: shikiw/DAM-VP@dec5821 ``data_utils/`` (splits and transforms re-implemented from
``specs/damvp.md`` §2 and §8, no code copied).

Every loader returns a ``TransferData`` with ``train``/``val``/``test`` datasets of ``(x, y)`` samples
(``x`` a PIL image, or a tensor for the synthetic digits), ``targets`` and class names. Transforms are not
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

from ctta.data.folder import ImageFolderDataset, load_rgb, require_dir

__all__ = [
    "FGVC_DIRS",
    "NORMALIZATION",
    "TRANSFER_DATASETS",
    "ListDataset",
    "TransferData",
    "damvp_transforms",
    "load_transfer_dataset",
]

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # vit-b-22k
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
# name -> (folder under root/FGVC, image sub-folder)
FGVC_DIRS = {
    "cub200": ("CUB_200_2011", "images"),
    "nabirds": ("nabirds", "images"),
    "oxford-flowers": ("OxfordFlower", ""),
    "stanford-dogs": ("Stanford-dogs", "Images"),
    "stanford-cars": ("Stanford-cars", ""),
}
_TORCHVISION = ("cifar10", "cifar100", "food101", "svhn", "gtsrb", "dtd")
TRANSFER_DATASETS = (*_TORCHVISION, *FGVC_DIRS, "fgvc-aircraft")
_VTAB_SPLITS = {"train": "train800", "val": "val200", "test": "test"}


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
    """Reference pipelines (spec §2): train = Resize(256) -> RandomCrop(224) -> HFlip -> ToTensor -> Normalize;
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


def load_transfer_dataset(name: str, root: str | Path) -> TransferData:
    """The train/val/test splits of downstream dataset ``name`` under ``root`` (spec §8).

    Args:
        name: one of ``TRANSFER_DATASETS``, ``vtab-<task>`` or ``imagefolder:<dir>``.
        root: the data root holding ``torchvision_dataset/``, ``FGVC/``, ``vtab-1k/``.

    Raises:
        FileNotFoundError: the dataset folder or a split file is missing (says what to put where).
        KeyError: unknown dataset name (lists the valid ones).
    """
    root = Path(root).expanduser()
    if name.startswith("vtab-"):
        return _vtab(name, root)
    if name.startswith("imagefolder:"):
        return _imagefolder(name, root)
    if name in FGVC_DIRS:
        return _fgvc_json(name, root)
    loaders = {"fgvc-aircraft": _aircraft, "dtd": _dtd, "food101": _food101, "gtsrb": _gtsrb, "svhn": _svhn}
    if name in loaders:
        return loaders[name](root)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root)
    raise KeyError(
        f"unknown transfer dataset {name!r}; valid: {list(TRANSFER_DATASETS)}, vtab-<task>, imagefolder:<dir>"
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


def _tv_root(root: Path, sub: str, name: str, how: str) -> Path:
    require_dir(root / "torchvision_dataset", name, how)
    return require_dir(root / "torchvision_dataset" / sub, name, how) if sub else root / "torchvision_dataset"


def _cifar(name: str, root: Path) -> TransferData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, sub = (CIFAR10, "cifar-10-batches-py") if name == "cifar10" else (CIFAR100, "cifar-100-python")
    how = f"Download the python version of {name.upper()} and extract it to root/torchvision_dataset/{sub}."
    base = _tv_root(root, sub, name, how).parent
    tr, te = cls(str(base), train=True, download=False), cls(str(base), train=False, download=False)
    loader = _ArrayLoader({"train": tr.data, "test": te.data})
    train, val = _split_80_20([(("train", i), y) for i, y in enumerate(tr.targets)], name, permute=False)
    test = [(("test", i), y) for i, y in enumerate(te.targets)]
    return _three(name, train, val, test, tr.classes, loader)


def _svhn(root: Path) -> TransferData:
    from torchvision.datasets import SVHN

    base = _tv_root(root, "", "svhn", "Download train_32x32.mat and test_32x32.mat into root/torchvision_dataset/.")
    for f in ("train_32x32.mat", "test_32x32.mat"):
        if not (base / f).is_file():
            raise FileNotFoundError(
                f"svhn: {base / f} missing; download it from http://ufldl.stanford.edu/housenumbers/"
            )
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


def _food101(root: Path) -> TransferData:
    how = "Download Food-101 and extract it to root/torchvision_dataset/food-101 (meta/, images/)."
    base = _tv_root(root, "food-101", "food101", how)

    def read(split):
        meta = json.loads(_need_file(base / "meta" / f"{split}.json", "food101").read_text())
        classes = sorted(meta)
        return classes, [(base / "images" / f"{p}.jpg", classes.index(c)) for c in meta for p in meta[c]]

    classes, train_all = read("train")
    train, val = _split_80_20(train_all, "food101", permute=True)
    return _three("food101", train, val, read("test")[1], classes)


def _gtsrb(root: Path) -> TransferData:
    import csv

    how = "Download GTSRB (torchvision layout) to root/torchvision_dataset/gtsrb (GTSRB/Training, GTSRB/Final_Test)."
    base = _tv_root(root, "gtsrb", "gtsrb", how)
    tr_dir = require_dir(base / "GTSRB" / "Training", "gtsrb", how)
    classes = sorted(d.name for d in tr_dir.iterdir() if d.is_dir())
    train_all = [(f, k) for k, c in enumerate(classes) for f in sorted((tr_dir / c).glob("*.ppm"))]
    with open(_need_file(base / "GT-final_test.csv", "gtsrb")) as fh:
        rows = list(csv.DictReader(fh, delimiter=";", skipinitialspace=True))
    test = [(base / "GTSRB" / "Final_Test" / "Images" / r["Filename"], int(r["ClassId"])) for r in rows]
    train, val = _split_80_20(train_all, "gtsrb", permute=True)
    return _three("gtsrb", train, val, test, [str(int(c)) for c in classes])


def _dtd(root: Path) -> TransferData:
    how = "Download DTD and extract it to root/torchvision_dataset/dtd/dtd (images/, labels/)."
    base = _tv_root(root, "dtd", "dtd", how) / "dtd"
    img = require_dir(base / "images", "dtd", how)
    classes = sorted(d.name for d in img.iterdir() if d.is_dir())

    def read(split):  # official split, partition 1
        lines = _need_file(base / "labels" / f"{split}1.txt", "dtd").read_text().split()
        return [(img / ln, classes.index(ln.split("/")[0])) for ln in lines]

    return _three("dtd", read("train"), read("val"), read("test"), [c.replace("_", " ") for c in classes])


def _fgvc_json(name: str, root: Path) -> TransferData:
    sub, img_sub = FGVC_DIRS[name]
    how = f"Put the images and VPT's train/val/test.json split files in root/FGVC/{sub}/."
    base = require_dir(root / "FGVC" / sub, name, how)
    annos = {s: json.loads(_need_file(base / f"{s}.json", name).read_text()) for s in ("train", "val", "test")}
    ids = sorted(set(annos["train"].values()))
    cont = {c: i for i, c in enumerate(ids)}

    def samples(split):
        unknown = sorted({c for c in annos[split].values() if c not in cont})
        if unknown:
            raise ValueError(f"{name}: {split}.json has class ids absent from train.json: {unknown[:10]}")
        return [(base / img_sub / p, cont[c]) for p, c in annos[split].items()]

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


def _aircraft(root: Path) -> TransferData:
    how = "Download FGVC-Aircraft 2013b and extract it to root/FGVC/fgvc-aircraft-2013b/ (data/...)."
    data = require_dir(root / "FGVC" / "fgvc-aircraft-2013b" / "data", "fgvc-aircraft", how)
    classes = sorted(ln.strip() for ln in _need_file(data / "variants.txt", "fgvc-aircraft").read_text().splitlines())
    classes = [c for c in classes if c]

    def read(split):
        lines = _need_file(data / f"images_variant_{split}.txt", "fgvc-aircraft").read_text().splitlines()
        pairs = [ln.strip().split(" ", 1) for ln in lines if ln.strip()]
        return [(data / "images" / f"{i}.jpg", classes.index(v)) for i, v in pairs]

    return _three("fgvc-aircraft", read("train"), read("val"), read("test"), classes)


def _vtab(name: str, root: Path) -> TransferData:
    task = name[len("vtab-") :]
    how = (
        f"Export the VTAB-1k task {task!r} (VPT's vtab_prep.py TFDS splits) to root/vtab-1k/{task}/ as images plus "
        "train800.txt, val200.txt, test.txt with lines 'relative/path label'."
    )
    base = require_dir(root / "vtab-1k" / task, name, how)
    splits = {}
    for split, fname in _VTAB_SPLITS.items():
        lines = _need_file(base / f"{fname}.txt", name).read_text().splitlines()
        splits[split] = [(base / p, int(y)) for p, y in (ln.rsplit(maxsplit=1) for ln in lines if ln.strip())]
    n = 1 + max(y for s in splits.values() for _, y in s)
    return _three(name, splits["train"], splits["val"], splits["test"], [str(i) for i in range(n)])


def _imagefolder(name: str, root: Path) -> TransferData:
    sub = name.split(":", 1)[1]
    how = f"Expected root/{sub}/{{train,val,test}}/<class>/<image>."
    base = require_dir(root / sub, name, how)
    tr = ImageFolderDataset(base / "train", dataset_name=f"{name} train", how_to_get=how)
    va, te = (
        ImageFolderDataset(base / s, tr.classes, dataset_name=f"{name} {s}", how_to_get=how) for s in ("val", "test")
    )
    return _three(name, tr.samples, va.samples, te.samples, tr.classes)


def _need_file(path: Path, name: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: split/annotation file {path} not found (see ctta.data.transfer_datasets)")
    return path
