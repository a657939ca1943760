"""Test sets of TPT/DiffTPT from local folders: ImageNet, -A, -V2, -R, -Sketch and ten fine-grained sets.

Reference: azshue/TPT@63ecbace ``data/datautils.py:{build_dataset, ID_to_DIRNAME}``, ``data/fewshot_datasets.py``
(read for layout and label rules; re-implemented from the spec ``tpt-difftpt.md`` section 5, no code copied).

Layout under ``root`` (TPT's folder names; CoOp's names are accepted too):
``ImageNet/val/<wnid>/``, ``imagenet-a/<wnid>/``, ``imagenetv2-matched-frequency-format-val/<0..999>/``,
``imagenet-r/<wnid>/``, ``ImageNet-Sketch/[sketch/]<wnid>/``; fine-grained sets read CoOp's ``split_zhou_*.json``
``test`` lists (``[path, label, classname]``), FGVC-Aircraft its own ``variants.txt`` + ``images_variant_test.txt``.

Label rules: ImageNet-A/-R labels index their 200-class subsets (folder wnids must equal the shipped lists);
ImageNet-V2 labels are ``int(folder name)`` (equivalent to TPT's string-sorted ImageFolder labels remapped through
``imagenet_v_mask``); fine-grained labels come from the split files.

Deviations: images of a fine-grained split are looked up under the TPT image folder, then CoOp's, then the dataset
folder itself (the first that holds the first listed file); the DiffTPT ``difftpt_1k`` subset is drawn with a
seeded generator (the reference's is unseeded and unreleased for 14 of the 15 sets).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ctta.data.classnames import FINE_GRAINED, classnames, imagenet_subset_wnids, imagenet_wnids
from ctta.data.folder import ImageFolderDataset, load_rgb, require_dir

__all__ = [
    "TTA_DATASETS",
    "IMAGENET_FAMILY",
    "TTASet",
    "ListDataset",
    "ViewsDataset",
    "load_tta_dataset",
    "select_subset",
]

IMAGENET_FAMILY = ("imagenet", "imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch")
TTA_DATASETS = IMAGENET_FAMILY + FINE_GRAINED + ("digits",)

# dataset -> (TPT folder, CoOp folder, split file, TPT image dir, CoOp image dir)
_FINE = {
    "flower102": ("Flower102", "oxford_flowers", "split_zhou_OxfordFlowers.json", "jpg", "jpg"),
    "dtd": ("DTD", "dtd", "split_zhou_DescribableTextures.json", "images", "images"),
    "pets": ("OxfordPets", "oxford_pets", "split_zhou_OxfordPets.json", "", "images"),
    "cars": ("StanfordCars", "stanford_cars", "split_zhou_StanfordCars.json", "", ""),
    "ucf101": ("UCF101", "ucf101", "split_zhou_UCF101.json", "", "UCF-101-midframes"),
    "caltech101": ("Caltech101", "caltech-101", "split_zhou_Caltech101.json", "", "101_ObjectCategories"),
    "food101": ("Food101", "food-101", "split_zhou_Food101.json", "images", "images"),
    "sun397": ("SUN397", "sun397", "split_zhou_SUN397.json", "", "SUN397"),
    "eurosat": ("eurosat", "eurosat", "split_zhou_EuroSAT.json", "", "2750"),
}
_IMAGENET_DIRS = {
    "imagenet": "ImageNet/val",
    "imagenet_a": "imagenet-a",
    "imagenet_r": "imagenet-r",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_v2": "imagenetv2-matched-frequency-format-val",
}
_HOW = {
    "imagenet": "Put the ILSVRC-2012 validation images in one folder per wnid (ImageNet/val/<wnid>/*.JPEG).",
    "imagenet_a": "Download imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples and extract it.",
    "imagenet_r": "Download imagenet-r.tar from https://github.com/hendrycks/imagenet-r and extract it.",
    "imagenet_sketch": "Download ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch and extract it.",
    "imagenet_v2": "Download imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2.",
}
_COOP_HOW = (
    "Prepare it as in CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md), "
    "including its split_zhou_*.json file."
)


@dataclass
class TTASet:
    """A test set: ``dataset`` items are ``(PIL image or (3, H, W) tensor, label)``; ``family`` picks augmentation."""

    name: str
    dataset: Dataset
    classnames: list[str]
    family: str  # "imagenet" | "fine_grained" | "digits"

    @property
    def targets(self) -> list[int]:
        return list(self.dataset.targets)


class ListDataset(Dataset):
    """``(path, label)`` pairs read as RGB PIL images; ``paths`` and ``targets`` aligned."""

    def __init__(self, paths: Sequence[str | Path], targets: Sequence[int]) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} labels")
        self.paths, self.targets = [str(p) for p in paths], [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return load_rgb(self.paths[i]), self.targets[i]


class ViewsDataset(Dataset):
    """Wraps ``(image, label)`` items into ``(views (N, 3, H, W), label)`` with a per-sample generator.

    Sample ``i`` draws from ``numpy.random.default_rng([seed, salt, i])`` (``i`` = index in ``base``), so the views
    do not depend on worker count or stream order. ``pre`` (optional) maps ``(image, rng) -> image`` first.
    """

    def __init__(
        self, base: Dataset, views: Callable, seed: int = 0, pre: Callable | None = None, salt: int = 0
    ) -> None:
        self.base, self.views, self.seed, self.pre, self.salt = base, views, int(seed), pre, int(salt)
        self.targets = list(base.targets)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        rng = np.random.default_rng([self.seed, self.salt, i])
        if self.pre is not None:
            img = self.pre(img, rng)
        return self.views(img, rng), y


def _imagenet_like(name: str, root: Path) -> TTASet:
    folder = require_dir(root / _IMAGENET_DIRS[name], name, _HOW[name])
    if name == "imagenet_sketch" and (folder / "sketch").is_dir():
        folder = folder / "sketch"
    if name == "imagenet_v2":
        classes = [str(i) for i in range(1000)]  # label = int(folder name)
    elif name in ("imagenet_a", "imagenet_r"):
        classes = imagenet_subset_wnids(name)
        found = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if found != classes:
            raise ValueError(
                f"{name}: the class folders under {folder} are not the shipped 200 wnids "
                f"(extra: {sorted(set(found) - set(classes))[:5]}, "
                f"missing: {sorted(set(classes) - set(found))[:5]})"
            )
    else:
        classes = imagenet_wnids()
    ds = ImageFolderDataset(folder, classes=classes, dataset_name=name, how_to_get=_HOW[name])
    return TTASet(name, ds, classnames(name), "imagenet")


def _find_split(name: str, base: Path, split_file: str) -> Path:
    fname = _FINE[name][2]
    cands = [Path(split_file)] if split_file else [base / fname, base.parent / "splits" / fname]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{name}: split file {fname} not found (looked at {[str(c) for c in cands]}). "
        f"Get it from CoOp (https://github.com/KaiyangZhou/CoOp, DATASETS.md) and put it in "
        f"{base} or pass scenario.split_file=/path/to/{fname}."
    )


def _fine_grained(name: str, root: Path, split_file: str = "") -> TTASet:
    tpt_dir, coop_dir, _, tpt_img, coop_img = _FINE[name]
    base = root / coop_dir if (root / coop_dir).is_dir() else root / tpt_dir
    base = require_dir(base, name, f"{_COOP_HOW} (CoOp's folder name {coop_dir!r} is accepted too.)")
    entries = json.loads(_find_split(name, base, split_file).read_text())["test"]
    if not entries:
        raise ValueError(f"{name}: the split file has an empty test list")
    first = entries[0][0]
    prefixes = [base / tpt_img, base / coop_img, base]
    prefix = next((p for p in prefixes if (p / first).is_file()), None)
    if prefix is None:
        raise FileNotFoundError(
            f"{name}: image {first} (first of the test split) not found under {[str(p) for p in prefixes]}. {_COOP_HOW}"
        )
    names = classnames(name)
    labels = [int(e[1]) for e in entries]
    if max(labels) >= len(names) or min(labels) < 0:
        raise ValueError(f"{name}: split labels outside [0, {len(names)}) - wrong split file?")
    return TTASet(name, ListDataset([prefix / e[0] for e in entries], labels), names, "fine_grained")


def _aircraft(root: Path) -> TTASet:
    how = "Download FGVC-Aircraft (fgvc-aircraft-2013b) and put its data/ folder at <root>/fgvc_aircraft."
    base = require_dir(root / "fgvc_aircraft", "aircraft", how)
    variants = [v.strip() for v in (base / "variants.txt").read_text().splitlines() if v.strip()]
    if variants != classnames("aircraft"):
        raise ValueError(f"{base / 'variants.txt'} does not list the 100 FGVC-Aircraft variants in reference order")
    paths, labels = [], []
    for line in (base / "images_variant_test.txt").read_text().splitlines():
        if line.strip():
            img, _, variant = line.strip().partition(" ")
            paths.append(base / "images" / f"{img}.jpg")
            labels.append(variants.index(variant))
    return TTASet("aircraft", ListDataset(paths, labels), variants, "fine_grained")


def load_tta_dataset(name: str, root: str | Path = "data", split_file: str = "", img_size: int = 32) -> TTASet:
    """Load a TPT test set by name (``TTA_DATASETS``) from ``root``; ``digits`` is bundled (offline, ``img_size``)."""
    root = Path(root).expanduser()
    if name == "digits":
        from ctta.data.digits import DIGIT_NAMES, load_digits

        return TTASet(name, load_digits(img_size=img_size)[1], list(DIGIT_NAMES), "digits")
    if name in IMAGENET_FAMILY:
        return _imagenet_like(name, root)
    if name == "aircraft":
        return _aircraft(root)
    if name in _FINE:
        return _fine_grained(name, root, split_file)
    raise KeyError(f"unknown test-time dataset {name!r}; valid: {list(TTA_DATASETS)}")


def select_subset(tta: TTASet, subset: str, seed: int) -> list[int]:
    """Indices of ``subset``: ``full`` (all), ``difftpt_1k`` (ImageNet-R: 5 per class; else 1,000 uniform, seeded)
    or a path to a text file of image paths (relative to the dataset folder or absolute), one per line."""
    n = len(tta.dataset)
    if subset == "full":
        return list(range(n))
    rng = np.random.default_rng(seed)
    if subset == "difftpt_1k":
        if tta.name != "imagenet_r":
            return sorted(rng.permutation(n)[: min(1000, n)].tolist())
        targets = np.asarray(tta.targets)
        return sorted(i for c in range(len(tta.classnames)) for i in rng.permutation(np.flatnonzero(targets == c))[:5])
    listed = [ln.strip() for ln in Path(subset).read_text().splitlines() if ln.strip()]
    paths = getattr(tta.dataset, "paths", None) or [p for p, _ in getattr(tta.dataset, "samples", [])]
    tails: dict[int, dict] = {}
    index = []
    for item in listed:
        k = len(Path(item).parts)
        table = tails.setdefault(k, {Path(q).parts[-k:]: i for i, q in enumerate(paths)})
        i = table.get(Path(item).parts)
        if i is None:
            raise ValueError(f"subset file {subset}: {item!r} is not an image of {tta.name}")
        index.append(i)
    return index
