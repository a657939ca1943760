"""Multi-label datasets for MLCIL: MS-COCO 2014, PASCAL VOC 2007 and a generated set for tests and smoke runs.

Paper: MULTI-LANE (De Min et al., CoLLAs 2024, arXiv 2405.15633). Label parsing and image order follow the
reference tdemin16/multi-lane@5ee982c, ``multi_lane/continual_datasets/continual_datasets.py::COCO`` / ``VOC``
(re-implemented, no code copied, no pycocotools needed); folders and download sources are the ``multilabel``
entries of ``ctta.data.catalogue``:

* COCO-2014: ``<root>/annotations/instances_{train,val}2014.json`` and ``<root>/{train,val}2014/<file_name>``.
  Class index = position of the category name in the alphabetically sorted names; image order = order of
  ``images`` in the JSON; an image's label set = the de-duplicated categories of its annotations.
* VOC-2007: ``<root>`` (or ``<root>/VOC2007``, ``<root>/VOCdevkit/VOC2007``) with ``ImageSets/Main`` and
  ``JPEGImages``. Classes = sorted ``{class}_{split}.txt`` file names; image order = first appearance while
  reading those files in sorted order; only the value ``1`` is positive (``0`` = difficult and ``-1`` negative).

Every dataset returns ``(x, y)`` with ``y`` a float multi-hot tensor ``(C,)`` and exposes ``classes``,
``label_sets`` (sorted tuples; empty for images without labels, which MLCIL never uses) and ``targets``
(``(N, C)`` multi-hot tensor). The reference transforms (no input normalisation by default) are in
``reference_transforms``. Deviations: none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from ctta.data import catalogue
from ctta.data.catalogue import DatasetEntry
from ctta.data.folder import load_rgb


class MultiLabelDataset(Dataset):
    """Images with label sets, returned as ``(x, multi-hot y)``.

    Args:
        items: per image either a file path (read as RGB PIL) or a tensor image.
        label_sets: per image the class indices present (any iterable of ints).
        classes: class names in label-index order.
        transform: applied to the PIL image (or tensor) of each item.
    """

    def __init__(self, items: Sequence, label_sets: Sequence, classes: Sequence[str], transform=None) -> None:
        if len(items) != len(label_sets):
            raise ValueError(f"{len(items)} images but {len(label_sets)} label sets")
        self.items = list(items)
        self.classes = list(classes)
        self.label_sets = [tuple(sorted({int(c) for c in s})) for s in label_sets]
        bad = [s for s in self.label_sets if s and (s[0] < 0 or s[-1] >= len(self.classes))]
        if bad:
            raise ValueError(f"label index out of range [0, {len(self.classes)}): {bad[0]}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    @property
    def targets(self) -> torch.Tensor:
        """``(N, C)`` float multi-hot targets."""
        y = torch.zeros(len(self), len(self.classes))
        for i, s in enumerate(self.label_sets):
            y[i, list(s)] = 1.0
        return y

    def multi_hot(self, i: int) -> torch.Tensor:
        y = torch.zeros(len(self.classes))
        y[list(self.label_sets[i])] = 1.0
        return y  # (C,)

    def __getitem__(self, i: int):
        item = self.items[i]
        img = item if isinstance(item, torch.Tensor) else load_rgb(item)
        return (self.transform(img) if self.transform else img), self.multi_hot(i)


def reference_transforms(img_size: int = 224) -> tuple[Callable, Callable]:
    """(train, eval) transforms of the reference, ending with ``ToTensor()`` (no normalisation).

    Train: ``RandomResizedCrop(img_size, scale=(0.05, 1), ratio=(3/4, 4/3))``, ``RandomHorizontalFlip``.
    Eval: ``Resize(img_size * 256 / 224, bicubic)``, ``CenterCrop(img_size)``.
    """
    train = T.Compose(
        [T.RandomResizedCrop(img_size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomHorizontalFlip(), T.ToTensor()]
    )
    resize = int(round(img_size * 256 / 224))
    test = T.Compose(
        [T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(img_size), T.ToTensor()]
    )
    return train, test


# -------------------------------------------------------------------------------------------------- COCO
def parse_coco(annotation_file: str | Path) -> tuple[list[str], list[str], list[tuple[int, ...]]]:
    """(classes, file names, label sets) of a COCO instances JSON (the reference's order and classes)."""
    with open(annotation_file) as fh:
        ann = json.load(fh)
    for key in ("images", "annotations", "categories"):
        if key not in ann:
            raise ValueError(f"{annotation_file}: not a COCO instances file (no {key!r} key)")
    names = sorted(c["name"] for c in ann["categories"])
    if len(set(names)) != len(names):
        raise ValueError(f"{annotation_file}: duplicate category names")
    by_name = {n: i for i, n in enumerate(names)}
    cat_to_idx = {c["id"]: by_name[c["name"]] for c in ann["categories"]}
    labels: dict[int, set[int]] = {im["id"]: set() for im in ann["images"]}
    for a in ann["annotations"]:
        if a["image_id"] in labels:
            labels[a["image_id"]].add(cat_to_idx[a["category_id"]])
    files = [im["file_name"] for im in ann["images"]]
    return names, files, [tuple(sorted(labels[im["id"]])) for im in ann["images"]]


def load_coco2014(root: str | Path, split: str = "train", transform=None) -> MultiLabelDataset:
    """MS-COCO 2014 ``split`` ("train" | "val") as a multi-label dataset (82,783 / 40,504 images).

    ``root`` holds ``annotations/`` (or its ``coco2014``/``coco`` sub-folder does: the catalogue's folders).
    """
    return _coco_split(catalogue.entry("coco", "multilabel"), root, split, transform)


def _coco_split(entry: DatasetEntry, root: str | Path, split: str, transform) -> MultiLabelDataset:
    if split not in ("train", "val"):
        raise ValueError(f"COCO-2014 split must be 'train' or 'val', got {split!r}")
    base = entry.require(next((p for p in _folders(entry, root) if (p / "annotations").is_dir()), entry.path(root)))
    ann = base / "annotations" / f"instances_{split}2014.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{entry.title}: annotation file {ann} missing. {entry.how_to_get()}")
    img_dir = entry.require(base / f"{split}2014", f"{split} images")
    classes, files, label_sets = parse_coco(ann)
    return MultiLabelDataset([img_dir / f for f in files], label_sets, classes, transform)


def _folders(entry: DatasetEntry, root: str | Path) -> list[Path]:
    return [entry.path(root, f) for f in entry.folders]


def load_coco(entry: DatasetEntry, root: str | Path, img_size: int = 224, **_):
    """Catalogue loader of ``coco``: (train2014, val2014) with the reference transforms at ``img_size``."""
    train_tf, test_tf = reference_transforms(img_size)
    return _coco_split(entry, root, "train", train_tf), _coco_split(entry, root, "val", test_tf)


# --------------------------------------------------------------------------------------------------- VOC
def _voc_base(entry: DatasetEntry, root: str | Path) -> Path:
    entry.require(entry.path(root))
    for cand in _folders(entry, root):
        if (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise FileNotFoundError(f"{entry.title}: no ImageSets/Main under {entry.path(root)}. {entry.how_to_get()}")


def parse_voc(main_dir: str | Path, split: str) -> tuple[list[str], list[str], list[tuple[int, ...]]]:
    """(classes, image ids, label sets) from ``ImageSets/Main/{class}_{split}.txt`` (reference order)."""
    files = sorted(Path(main_dir).glob(f"*_{split}.txt"))
    if not files:
        voc = catalogue.entry("voc", "multilabel")
        raise FileNotFoundError(f"{voc.title}: no *_{split}.txt files in {main_dir}. {voc.how_to_get()}")
    classes = [f.name[: -len(f"_{split}.txt")] for f in files]
    labels: dict[str, set[int]] = {}  # insertion order = first appearance
    for c, f in enumerate(files):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                raise ValueError(f"{f}:{n}: expected '<image id> <1|0|-1>', got {line!r}")
            s = labels.setdefault(parts[0], set())
            if parts[1] == "1":
                s.add(c)
    ids = list(labels)
    return classes, ids, [tuple(sorted(labels[i])) for i in ids]


def load_voc2007(root: str | Path, split: str = "trainval", transform=None) -> MultiLabelDataset:
    """PASCAL VOC 2007 ``split`` ("trainval" | "test" | "train" | "val") as a multi-label dataset.

    ``root`` is the VOC2007 folder or a parent of it (``VOC2007``, ``VOCdevkit/VOC2007``: the catalogue's folders).
    """
    return _voc_split(catalogue.entry("voc", "multilabel"), root, split, transform)


def _voc_split(entry: DatasetEntry, root: str | Path, split: str, transform) -> MultiLabelDataset:
    if split not in ("trainval", "test", "train", "val"):
        raise ValueError(f"VOC-2007 split must be trainval, test, train or val, got {split!r}")
    base = _voc_base(entry, root)
    classes, ids, label_sets = parse_voc(base / "ImageSets" / "Main", split)
    img_dir = entry.require(base / "JPEGImages", "images")
    return MultiLabelDataset([img_dir / f"{i}.jpg" for i in ids], label_sets, classes, transform)


def load_voc(entry: DatasetEntry, root: str | Path, img_size: int = 224, **_):
    """Catalogue loader of ``voc``: (trainval, test) with the reference transforms at ``img_size``."""
    train_tf, test_tf = reference_transforms(img_size)
    return _voc_split(entry, root, "trainval", train_tf), _voc_split(entry, root, "test", test_tf)


# --------------------------------------------------------------------------------------------- synthetic
def make_synthetic_multilabel(
    num_classes: int = 12,
    n_train: int = 120,
    n_test: int = 60,
    img_size: int = 32,
    max_labels: int = 3,
    seed: int = 0,
) -> tuple[MultiLabelDataset, MultiLabelDataset]:
    """Generated multi-label images: each class adds its own smooth colour pattern; learnable in seconds.

    Image ``i`` always has class ``i % num_classes`` (so every class has images) plus up to ``max_labels - 1``
    random others; ``x = clamp(0.5 + 0.35 * sum of the label patterns + noise, 0, 1)``, ``(3, img_size, img_size)``.
    Deterministic in ``seed``; train and test share the class patterns.
    """
    if num_classes < 2 or max_labels < 1 or min(n_train, n_test) < num_classes:
        raise ValueError(
            f"need num_classes >= 2, max_labels >= 1 and at least num_classes images per split, got "
            f"num_classes={num_classes}, n_train={n_train}, n_test={n_test}, max_labels={max_labels}"
        )
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(num_classes, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(low, size=(img_size, img_size), mode="bilinear", align_corners=False)
    names = [f"class_{c:02d}" for c in range(num_classes)]
    out = []
    for n in (n_train, n_test):
        label_sets = []
        for i in range(n):
            k = int(torch.randint(0, max_labels, (1,), generator=g))
            extra = torch.randperm(num_classes, generator=g)[:k].tolist()
            label_sets.append(tuple(sorted({i % num_classes, *extra})))
        imgs = []
        for s in label_sets:
            x = 0.5 + 0.35 * patterns[list(s)].sum(0) + 0.05 * torch.randn(3, img_size, img_size, generator=g)
            imgs.append(x.clamp(0, 1))  # (3, H, W)
        out.append(MultiLabelDataset(imgs, label_sets, names))
    return out[0], out[1]


def load_synthetic(entry: DatasetEntry, root: str | Path = "", **options):
    """Catalogue loader of ``synthetic``: ``make_synthetic_multilabel(**options)`` (nothing is read from ``root``)."""
    return make_synthetic_multilabel(**options)
