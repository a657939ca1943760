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
Products has no reader in ctta. Images go through ``default_transform(img_size)``
(resize, centre crop; no random crop / flip, no normalisation: ctta's other scenarios do the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, Dataset

from ctta.benchmark_builders import make_benchmark
from ctta.data import catalogue
from ctta.data.avl import as_avl_dataset
from ctta.data.folder import ImageFolderDataset, default_transform
from ctta.fields import ranged
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = ["RetrievalConfig", "build_retrieval", "retrieval_benchmark"]

KINDS = ("cl", "transfer")


@dataclass(frozen=True)
class RetrievalConfig:
    dataset: str = "digits"  # a cl or transfer name of ctta.data.catalogue (cub200, stanford-cars, digits, ...)
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
    else:
        data = load_pooled(cfg.dataset, cfg.root, cfg.img_size)
    return retrieval_benchmark(data, cfg.train_classes, data.classes)
