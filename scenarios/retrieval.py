"""Deep-metric-learning retrieval benchmark: train on the first classes, retrieve among the unseen rest.

The zero-shot retrieval protocol of CUB-200-2011 / Cars-196 / Stanford Online Products (Oh Song et al., "Deep
Metric Learning via Lifted Structured Feature Embedding", CVPR 2016; the protocol of
Noahsark/ParameterEfficient-DML @ c7c9416 ``datasets/cub200.py`` / ``cars196.py``): every image of a dataset (its
official train and test splits pooled) is split BY CLASS: the first half of the classes in label order trains
(CUB: 100 classes, Cars: 98), the second half is the test set, where each image queries all the others (Recall@K,
MAP@R, NMI: ``ctta.retrieval_metrics``). Digits (smoke): classes 0-4 train, 5-9 test.

The benchmark has one train experience and one test experience; labels keep their dataset ids (test labels are
``P..C-1``), so a method learns one proxy per training class ``0..P-1``. Its ``BenchmarkInfo``: ``n_classes`` = C,
``task_classes`` = the training classes, ``stream_classnames`` train / test.

Datasets: the catalogue's ``cl`` names (bundled ``digits``, ``folder``, ...) and ``transfer`` names read from
split files (``cub200``, ``stanford-cars`` with VPT's FGVC json splits: train, val and test pooled, duplicates by
path dropped), or ``image_folder``: one sub-folder of images per class, classes in sorted folder order (how the
reference reads CUB: ``CUB_200_2011/images``, whose ``NNN.name`` folders sort in class-id order). Stanford Online
Products (``sop``) follows its official split files instead of halving: the classes of ``Ebay_train.txt`` (11,318,
labels ``0..P-1`` in class-id order) train, those of ``Ebay_test.txt`` (11,316) are the test set (the reference's
``datasets/stanford_online_products.py``). In-Shop is not read: its query / gallery protocol is not the all-vs-all
retrieval ``ctta.retrieval_metrics`` scores. Images go through ``default_transform(img_size)``
(resize, centre crop; no random crop / flip, no normalisation: ctta's other scenarios do the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from ctta.benchmark_builders import make_benchmark
from ctta.data import catalogue
from ctta.data.avl import as_avl_dataset
from ctta.data.folder import ImageFolderDataset, ImageListDataset, default_transform, require_dir
from ctta.fields import ranged
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = ["RetrievalConfig", "build_retrieval", "retrieval_benchmark", "load_sop"]

KINDS = ("cl", "transfer")
SOP_NAMES = ("sop", "stanford-online-products")
SOP_FOLDER = "Stanford_Online_Products"
SOP_LAYOUT = (
    "Get Stanford_Online_Products.zip (Oh Song et al. 2016, https://cvgl.stanford.edu/projects/lifted_struct/) and "
    f"unpack it as <root>/{SOP_FOLDER}/ holding Ebay_train.txt and Ebay_test.txt (lines 'image_id class_id "
    "super_class_id path', one header line) and the image folders the paths name (bicycle_final/..., ...); the "
    "reference's layout, split files in Info_Files/ and images under images/, is read too."
)


@dataclass(frozen=True)
class RetrievalConfig:
    dataset: str = "digits"  # sop, or a cl / transfer name of ctta.data.catalogue (cub200, stanford-cars, digits, ...)
    root: str = "data"  # parent folder of local datasets
    train_classes: int | None = ranged(None, ge=1)  # classes 0..P-1 train, the rest test (None: the first half)
    img_size: int = ranged(32, ge=8)  # image side (digits rendered at it; files resized and centre-cropped)
    image_folder: str = ""  # instead of dataset: <folder>/<class>/<image>, classes in sorted order (CUB images/)


class _Labelled(Dataset):
    """``(transform(x), y)`` over ``(x, y)`` samples of several datasets; ``targets`` and ``classes``."""

    def __init__(self, parts, classes, transform=None) -> None:
        self.data, self.transform, self.classes = ConcatDataset(parts), transform, list(classes)
        self.targets = [int(y) for p in parts for y in p.targets]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i]
        return (self.transform(x) if self.transform is not None else x), int(y)


def _unique(splits) -> list:
    """The splits with samples already seen (same image path) left out: a sample counts once."""
    seen: set = set()
    out = []
    for ds in splits:
        refs = getattr(ds, "samples", None)
        if refs is None:
            out.append(ds)
            continue
        keep = [i for i, (ref, _) in enumerate(refs) if str(ref) not in seen]
        seen |= {str(ref) for ref, _ in refs}
        out.append(torch.utils.data.Subset(ds, keep) if len(keep) < len(refs) else ds)
        if len(keep) < len(refs):
            out[-1].targets = [ds.targets[i] for i in keep]
    return out


def load_pooled(name: str, root: str, img_size: int) -> _Labelled:
    """Every labelled image of catalogue dataset ``name`` (all its splits) as one dataset of tensors."""
    entry = catalogue.entry(name, KINDS)
    tf = None if entry.bundled else default_transform(img_size)
    if "cl" in entry.loaders:
        kw = {"img_size": img_size} if entry.bundled else {"train_transform": tf, "test_transform": tf}
        train, test = entry.load("cl", root, **kw)
        return _Labelled([train, test], train.classes)
    data = entry.load("transfer", root, img_size=img_size)
    return _Labelled(_unique([data.train, data.val, data.test]), data.classnames, tf)


def _sop_split(base: Path, name: str) -> list[tuple[int, str]]:
    """``(class_id, path)`` of an SOP split file (``Ebay_train.txt`` / ``Ebay_test.txt``) in ``base`` or
    ``base/Info_Files``."""
    for folder in (base, base / "Info_Files"):
        if (folder / name).is_file():
            lines = (folder / name).read_text().split("\n")[1:]  # header: image_id class_id super_class_id path
            return [(int(f[1]), f[3]) for f in (line.split() for line in lines) if len(f) == 4]
    raise FileNotFoundError(f"Stanford Online Products: {name} missing in {base} and {base / 'Info_Files'}. "
                            f"{SOP_LAYOUT}")  # fmt: skip


def load_sop(root: str, img_size: int) -> tuple[ImageListDataset, int]:
    """Stanford Online Products under ``root``: every image, the ``Ebay_train`` classes first (in class-id order)
    then the ``Ebay_test`` classes; returns the dataset and the number of training classes."""
    base = require_dir(Path(root) / SOP_FOLDER, "Stanford Online Products", SOP_LAYOUT)
    train, test = _sop_split(base, "Ebay_train.txt"), _sop_split(base, "Ebay_test.txt")
    train_ids = sorted({c for c, _ in train})
    test_ids = sorted({c for c, _ in test} - set(train_ids))
    label = {c: i for i, c in enumerate(train_ids + test_ids)}
    images = base / "images" if (base / "images").is_dir() else base
    samples = [(images / path, label[c]) for c, path in train + test]
    classes = [str(c) for c in train_ids + test_ids]  # SOP's class ids (product ids)
    return ImageListDataset(samples, classes, default_transform(img_size)), len(train_ids)


def retrieval_benchmark(dataset: Dataset, n_train_classes: int | None = None, classnames=None):
    """One train experience (labels ``< P``) and one test experience (the rest) over ``dataset`` (``targets``)."""
    targets = torch.as_tensor([int(t) for t in dataset.targets])
    n_classes = int(targets.max()) + 1
    p = n_classes // 2 if n_train_classes is None else int(n_train_classes)
    if not 1 <= p < n_classes:
        raise ValueError(f"train_classes must be in [1, {n_classes - 1}] for {n_classes} classes, got {p}")
    avl = as_avl_dataset(dataset, targets.tolist())
    train = avl.subset(torch.nonzero(targets < p).flatten().tolist())
    test = avl.subset(torch.nonzero(targets >= p).flatten().tolist())
    names = None if classnames is None else [str(c) for c in classnames]
    info = BenchmarkInfo(
        n_classes=n_classes, classnames=names, test_dataset=test, task_classes=[list(range(p))],
        stream_classnames={} if names is None else {"train": names[:p], "test": names[p:]},
    )  # fmt: skip
    return with_info(make_benchmark([train], [test]), info)


@SCENARIOS.register("retrieval", config=RetrievalConfig)
def build_retrieval(cfg: RetrievalConfig, *, seed: int = 0):
    """Deep-metric-learning retrieval: train on the first classes, retrieve among the unseen ones."""
    if cfg.image_folder:
        data = ImageFolderDataset(cfg.image_folder, transform=default_transform(cfg.img_size), dataset_name="retrieval")
    elif cfg.dataset in SOP_NAMES:
        if cfg.train_classes is not None:
            raise ValueError("Stanford Online Products trains on its Ebay_train.txt classes: leave train_classes unset")
        data, n_train = load_sop(cfg.root, cfg.img_size)
        return retrieval_benchmark(data, n_train, data.classes)
    else:
        data = load_pooled(cfg.dataset, cfg.root, cfg.img_size)
    return retrieval_benchmark(data, cfg.train_classes, data.classes)
