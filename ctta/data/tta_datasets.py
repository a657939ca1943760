"""Test sets of TPT/DiffTPT from local folders: ImageNet, -A, -V2, -R, -Sketch and ten fine-grained sets.

Papers: Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models", NeurIPS 2022
(arXiv 2209.07511); Feng et al., "Diverse Data Augmentation with Diffusions for Effective Test-time Prompt Tuning",
ICCV 2023 (arXiv 2308.09942). Reference: azshue/TPT@63ecbace ``data/datautils.py:{build_dataset, ID_to_DIRNAME}``,
``data/fewshot_datasets.py`` (read for layout and label rules; re-implemented, no code copied).

Names, folders and download sources are the ``test_time`` entries of ``ctta.data.catalogue``; the
``load_*`` functions taking an entry are its loaders. Layout under ``root`` (TPT's folder names; CoOp's names are
accepted too):
``ImageNet/val/<wnid>/``, ``imagenet-a/<wnid>/``, ``imagenetv2-matched-frequency-format-val/<0..999>/``,
``imagenet-r/<wnid>/``, ``ImageNet-Sketch/[sketch/]<wnid>/``; fine-grained sets read CoOp's ``split_zhou_*.json``
``test`` lists (``[path, label, classname]``), FGVC-Aircraft its own ``variants.txt`` + ``images_variant_test.txt``.

CoOp's few-shot protocol (KaiyangZhou/CoOp@ff61507 ``datasets/{imagenet,fgvc_aircraft,imagenetv2,imagenet_sketch,
imagenet_a,imagenet_r}.py``, layout of its ``DATASETS.md``): ``load_coop_splits`` reads a ``split_zhou_*.json``;
``load_coop_imagenet`` reads ``imagenet/images/train/<wnid>/`` (train) and ``images/val/<wnid>/`` (test; ImageNet has
no validation split), labels = index of the wnid among the sorted train folders, names from ``classnames.txt``;
``load_coop_aircraft`` reads ``images_variant_{train,val,test}.txt`` (labels = line of the variant in
``variants.txt``); ``load_imagenet_test_only`` gives ImageNet-V2/-Sketch/-A/-R as test-only few-shot sets (the
domain-generalisation targets) through ``load_imagenet_family`` (CoOp's folder names are accepted: the catalogue
entries list them as second folders; CoOp's ``imagenet-sketch/images/`` sub-folder too).

Label rules: ImageNet-A/-R labels index their 200-class subsets (folder wnids must equal the shipped lists);
ImageNet-V2 labels are ``int(folder name)`` (equivalent to TPT's string-sorted ImageFolder labels remapped through
``imagenet_v_mask``); fine-grained labels come from the split files.

Deviations: images of a fine-grained split are looked up under the TPT image folder, then CoOp's, then the dataset
folder itself (the first that holds the first listed file); the DiffTPT ``difftpt_1k`` subset is drawn with a
seeded generator (the reference's is unseeded and unreleased for 14 of the 15 sets). ImageNet (CoOp layout): the
images of a class folder are taken in sorted name order (CoOp keeps ``os.listdir`` order, which depends on the file
system; so the few-shot draw equals the official one where that order is sorted), Dassl's ``preprocessed.pkl`` and
``split_fewshot/*.pkl`` caches are not read, and without ``classnames.txt`` the shipped CLIP ImageNet class names
(open_clip's list, the one CoOp's file holds) are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ctta.data import catalogue
from ctta.data.catalogue import DatasetEntry
from ctta.data.classnames import classnames, imagenet_subset_wnids, imagenet_wnids
from ctta.data.folder import ImageFolderDataset, load_rgb

__all__ = [
    "TTA_DATASETS",
    "IMAGENET_FAMILY",
    "TTASet",
    "ListDataset",
    "ViewsDataset",
    "load_aircraft",
    "coop_items",
    "load_coop_aircraft",
    "load_coop_imagenet",
    "load_coop_splits",
    "read_coop_split",
    "load_digits_tta",
    "load_fine_grained",
    "load_imagenet_c",
    "load_imagenet_family",
    "load_imagenet_test_only",
    "load_tta_dataset",
    "select_subset",
]

TTA_DATASETS = tuple(catalogue.names("test_time"))  # ImageNet family, fine-grained sets, digits (catalogue order)
IMAGENET_FAMILY = tuple(
    e.name for e in catalogue.entries("test_time") if e.loaders["test_time"].endswith(":load_imagenet_family")
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


def load_imagenet_family(entry: DatasetEntry, root: str | Path, **_) -> TTASet:
    """Catalogue loader of the ImageNet test sets (``IMAGENET_FAMILY``): an ImageFolder over the entry's folder."""
    name = entry.name
    folder = entry.require(entry.locate(root))
    if name == "imagenet_sketch":  # TPT's <folder>/sketch/<wnid>/, CoOp's imagenet-sketch/images/<wnid>/
        folder = next((folder / s for s in ("sketch", "images") if (folder / s).is_dir()), folder)
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
    ds = ImageFolderDataset(folder, classes=classes, dataset_name=name, how_to_get=entry.how_to_get())
    return TTASet(name, ds, classnames(name), "imagenet")


def load_imagenet_test_only(entry: DatasetEntry, root: str | Path, **_) -> dict[str, list[tuple]]:
    """Catalogue loader (kind ``few_shot``) of ImageNet-V2/-Sketch/-A/-R: ``{"train": [], "val": [], "test": [(image
    path, label, classname), ...]}`` from ``load_imagenet_family`` (a domain-generalisation target: test only)."""
    tta = load_imagenet_family(entry, root)
    return {"train": [], "val": [], "test": [(p, int(y), tta.classnames[y]) for p, y in tta.dataset.samples]}


def _nohidden(folder: Path, dirs: bool) -> list[Path]:
    """Sorted non-hidden folders (``dirs``) or files of ``folder`` (``os.scandir``: no stat per file on ImageNet)."""
    with os.scandir(folder) as it:
        return sorted(folder / e.name for e in it if not e.name.startswith(".") and e.is_dir() == dirs)


def load_coop_imagenet(entry: DatasetEntry, root: str | Path, **_) -> dict[str, list[tuple]]:
    """Catalogue loader (kind ``few_shot``) of ImageNet in CoOp's layout (``datasets/imagenet.py``): train from
    ``images/train/<wnid>/``, test from ``images/val/<wnid>/``, no validation split; class ``i`` is the ``i``-th
    sorted train folder, named by ``classnames.txt`` (``<wnid> <name>`` lines; else the shipped CLIP names)."""
    base = entry.require(entry.locate(root))
    text = base / "classnames.txt"
    if text.is_file():
        names = {}
        for line in text.read_text().splitlines():
            wnid, _, name = line.strip().partition(" ")
            if wnid:
                names[wnid] = name
    else:
        names = dict(zip(imagenet_wnids(), classnames("imagenet"), strict=True))
    splits: dict[str, list[tuple]] = {"train": [], "val": [], "test": []}
    folders: dict[str, list[str]] = {}
    for split, sub in (("train", "train"), ("test", "val")):
        image_dir = entry.require(base / "images" / sub, f"images/{sub} folder")
        folders[split] = [d.name for d in _nohidden(image_dir, dirs=True)]
        unknown = [w for w in folders[split] if w not in names]
        if unknown:
            raise ValueError(
                f"imagenet: class folders {unknown[:5]} under {image_dir} are not in "
                f"{text if text.is_file() else 'the 1000 ImageNet wnids'}. {entry.how_to_get()}"
            )
        for label, wnid in enumerate(folders[split]):
            splits[split] += [(str(f), label, names[wnid]) for f in _nohidden(image_dir / wnid, dirs=False)]
    if folders["train"] != folders["test"]:
        diff = sorted(set(folders["train"]) ^ set(folders["test"]))
        raise ValueError(f"imagenet: images/train and images/val hold different class folders (e.g. {diff[:5]})")
    if not splits["train"]:
        raise FileNotFoundError(f"imagenet: no images under {base / 'images' / 'train'}. {entry.how_to_get()}")
    return splits


def _aircraft_list(entry: DatasetEntry, base: Path, split: str, label: dict[str, int]) -> list[tuple]:
    """``images_variant_<split>.txt`` as ``(base/images/<id>.jpg, label, variant)`` items (CoOp's ``read_data``)."""
    path = base / f"images_variant_{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{entry.title}: {path} not found. {entry.how_to_get()}")
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            img, _, variant = line.strip().partition(" ")
            if variant not in label:
                raise ValueError(f"{path}: variant {variant!r} of image {img} is not in variants.txt")
            items.append((str(base / "images" / f"{img}.jpg"), label[variant], variant))
    return items


def _aircraft_variants(entry: DatasetEntry, base: Path) -> list[str]:
    path = base / "variants.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{entry.title}: {path} not found. {entry.how_to_get()}")
    return [v.strip() for v in path.read_text().splitlines() if v.strip()]


def load_coop_aircraft(entry: DatasetEntry, root: str | Path, **_) -> dict[str, list[tuple]]:
    """Catalogue loader (kind ``few_shot``) of FGVC-Aircraft in CoOp's layout (``datasets/fgvc_aircraft.py``): the
    official ``images_variant_{train,val,test}.txt`` lists, label = line of the variant in ``variants.txt``."""
    base = entry.require(entry.locate(root))
    label = {v: i for i, v in enumerate(_aircraft_variants(entry, base))}
    return {split: _aircraft_list(entry, base, split, label) for split in ("train", "val", "test")}


def _find_split(entry: DatasetEntry, base: Path, split_file: str) -> Path:
    fname = entry.extra["split_file"]
    cands = [Path(split_file)] if split_file else [base / fname, base.parent / "splits" / fname]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{entry.name}: split file {fname} not found (looked at {[str(c) for c in cands]}). "
        f"Get it from CoOp's DATASETS.md ({catalogue.COOP_DATASETS}) and put it in "
        f"{base} or pass scenario.split_file=/path/to/{fname}."
    )


def _coop_split(entry: DatasetEntry, root: str | Path, split_file: str, probe: str) -> tuple[dict, Path]:
    """CoOp's split file of ``entry`` (``{"train"|"val"|"test": [[path, label, classname], ...]}``) and the image
    folder its paths are relative to: the TPT image folder, CoOp's, or the dataset folder, whichever holds the first
    image of split ``probe``."""
    name = entry.name
    base = entry.require(entry.locate(root))
    data = json.loads(_find_split(entry, base, split_file).read_text())
    if not data.get(probe):
        raise ValueError(f"{name}: the split file has an empty {probe} list")
    first = data[probe][0][0]
    prefixes = [base / sub for sub in entry.extra["images"]] + [base]
    prefix = next((p for p in prefixes if (p / first).is_file()), None)
    if prefix is None:
        raise FileNotFoundError(
            f"{name}: image {first} (first of the {probe} split) not found under {[str(p) for p in prefixes]}. "
            f"{entry.how_to_get()}"
        )
    return data, prefix


def load_fine_grained(entry: DatasetEntry, root: str | Path, split_file: str = "", **_) -> TTASet:
    """Catalogue loader of a fine-grained test set: the ``test`` list of its CoOp split file."""
    name = entry.name
    data, prefix = _coop_split(entry, root, split_file, "test")
    entries = data["test"]
    names = classnames(name)
    labels = [int(e[1]) for e in entries]
    if max(labels) >= len(names) or min(labels) < 0:
        raise ValueError(f"{name}: split labels outside [0, {len(names)}) - wrong split file?")
    return TTASet(name, ListDataset([prefix / e[0] for e in entries], labels), names, "fine_grained")


def load_coop_splits(entry: DatasetEntry, root: str | Path, split_file: str = "", **_) -> dict[str, list[tuple]]:
    """Catalogue loader (kind ``few_shot``): every split of the CoOp split file as ``(image path, label, classname)``
    lists (CoOp's ``read_split``, KaiyangZhou/CoOp@ff61507 ``datasets/oxford_pets.py``)."""
    data, prefix = _coop_split(entry, root, split_file, "train")
    return coop_items(data, prefix)


def coop_items(data: dict, image_dir: str | Path) -> dict[str, list[tuple]]:
    """``{"train"|"val"|"test": [(image_dir / path, label, classname), ...]}`` of a parsed CoOp split file."""
    return {
        k: [(str(Path(image_dir) / p), int(y), str(c)) for p, y, c in data.get(k, [])] for k in ("train", "val", "test")
    }


def read_coop_split(path: str | Path, image_dir: str | Path) -> dict[str, list[tuple]]:
    """A ``split_zhou_*.json`` file read with ``coop_items`` (CoOp's ``read_split``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"split file not found: {path}. The split_zhou_*.json files are linked from CoOp's DATASETS.md "
            f"({catalogue.COOP_DATASETS}); put it in the dataset folder next to the images."
        )
    return coop_items(json.loads(path.read_text()), image_dir)


def load_aircraft(entry: DatasetEntry, root: str | Path, **_) -> TTASet:
    """Catalogue loader of FGVC-Aircraft: ``variants.txt`` + ``images_variant_test.txt``."""
    base = entry.require(entry.path(root))
    variants = _aircraft_variants(entry, base)
    if variants != classnames("aircraft"):
        raise ValueError(f"{base / 'variants.txt'} does not list the 100 FGVC-Aircraft variants in reference order")
    items = _aircraft_list(entry, base, "test", {v: i for i, v in enumerate(variants)})
    return TTASet("aircraft", ListDataset([p for p, _, _ in items], [y for _, y, _ in items]), variants, "fine_grained")


def load_imagenet_c(entry: DatasetEntry, root: str | Path, label_space: str = "imagenet", **_) -> TTASet:
    """Catalogue loader of an ImageNet-C folder ``<root>/<corruption>/<severity>/<wnid>/`` labelled in the label
    space of ``label_space`` (``imagenet``, or the 200-class subsets ``imagenet_a`` / ``imagenet_r``)."""
    if label_space not in ("imagenet", "imagenet_a", "imagenet_r"):
        raise ValueError(f"ImageNet-C labels need imagenet, imagenet_a or imagenet_r, got {label_space!r}")
    wnids = imagenet_wnids() if label_space == "imagenet" else imagenet_subset_wnids(label_space)
    _, corruption, severity = entry.name.split("/")
    ds = ImageFolderDataset(entry.path(root), classes=wnids, dataset_name=entry.title, how_to_get=entry.how_to_get())
    return TTASet(f"{label_space}-{corruption}-{severity}", ds, classnames(label_space), "imagenet")


def load_digits_tta(entry: DatasetEntry, root: str | Path = "", img_size: int = 32, **_) -> TTASet:
    """Catalogue loader of the bundled digits as a test set (the digits test split at ``img_size`` px)."""
    from ctta.data.digits import DIGIT_NAMES, load_digits

    return TTASet(entry.name, load_digits(img_size=img_size)[1], list(DIGIT_NAMES), "digits")


def load_tta_dataset(name: str, root: str | Path = "data", split_file: str = "", img_size: int = 32) -> TTASet:
    """Load a TPT test set by name (``TTA_DATASETS``) from ``root``; ``digits`` is bundled (offline, ``img_size``)."""
    return catalogue.load(name, "test_time", root, split_file=split_file, img_size=img_size)


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
