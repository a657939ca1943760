"""Multi-label class-incremental (MLCIL) benchmarks, and the single-label CIL benchmarks of MULTI-LANE.

MULTI-LANE (De Min et al., CoLLAs 2024, arXiv 2405.15633); reference tdemin16/multi-lane@5ee982c,
``datasets.py::split_single_dataset`` and ``engine.py::evaluate_till_now_multi`` (re-implemented, no code copied).

MLCIL (``SCENARIOS["multilabel"]``): classes in label-index order (``shuffle="yes"``: Python ``random`` seeded
with the run seed), split into a first task of ``base_classes`` (``0`` means ``increment``) and tasks of
``increment`` classes (B0-C10, B40-C10, B0-C4, B10-C2, ...; a smaller last task takes any remainder, nothing is
dropped). Train experience ``t`` = every training image whose label set intersects ``C_t`` (an image joins every
task owning one of its labels); test experience ``t`` = every test image with at least one class of tasks
``0..t`` (the cumulative seen-class test set evaluated after task ``t``). Images without labels never enter.
Samples are ``(x, y)`` with the FULL multi-hot ``y`` (C,); masking to ``C_t`` is the learner's job.

Avalanche 0.6 workaround: multi-hot targets crash ``DataAttribute.uniques``, so the datasets
carry no ``targets`` attribute; label sets are stored as tuples in a ``labels_multi`` attribute and the class
timeline (``classes_in_this_experience``, ``previous_classes``, ``classes_seen_so_far``, ``future_classes``,
Avalanche's names and set types) is attached by hand, with ``class_mask`` (bool ``(C,)`` of ``C_t``) and
``seen_class_mask`` (bool ``(C,)`` of the seen classes). Deviation from a plain Avalanche benchmark: no
``with_classes_timeline`` (it derives classes from ``targets``); no task labels (samples are ``(x, y)``).

CIL (``SCENARIOS["multilane_cil"]``): CIFAR-100 10x10 and ImageNet-R 10x20 (80/20 split of
``ctta.data.cl_datasets.imagenet_r_split``) with the MULTI-LANE transforms (``reference_transforms``), built by
``scenarios.class_incremental.class_incremental_benchmark`` (label order, optional Python-random shuffle).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute

from ctta.benchmark_builders import make_benchmark
from ctta.data import catalogue
from ctta.data.multilabel_datasets import reference_transforms
from ctta.fields import ranged
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

SHUFFLE = ("none", "yes")


@dataclass(frozen=True)
class MultiLabelConfig:
    dataset: str = "synthetic"  # coco (MS-COCO 2014) | voc (PASCAL VOC 2007) | synthetic (generated)
    root: str = "data"  # coco: <root>[/coco2014]/{annotations,train2014,val2014}; voc: <root>[/VOCdevkit]/VOC2007
    base_classes: int = 0  # B: classes of the first task (0 = same as increment)
    increment: int = 10  # C: classes per later task
    shuffle: str = "none"  # none (label-index order, reference) | yes (Python random seeded by shuffle_seed)
    shuffle_seed: int | None = None  # None: the run seed
    img_size: int = 224  # crop size of the reference transforms (coco, voc)
    synthetic_classes: int = 12
    synthetic_train: int = 120
    synthetic_test: int = 60
    synthetic_max_labels: int = 3


def class_order(n_classes: int, shuffle: str = "none", seed: int = 0) -> list[int]:
    """Label-index order, or a permutation by Python ``random.Random(seed).shuffle`` (reference ``--shuffle``)."""
    if shuffle not in SHUFFLE:
        raise ValueError(f"shuffle={shuffle!r}; valid: {list(SHUFFLE)}")
    order = list(range(n_classes))
    if shuffle == "yes":
        random.Random(seed).shuffle(order)
    return order


def task_classes(order: Sequence[int], base_classes: int = 0, increment: int = 10) -> list[tuple[int, ...]]:
    """Split a class order into tasks: ``base_classes`` first (0 = ``increment``), then ``increment`` each.

    Raises:
        ValueError: on a negative base, a non-positive increment or a base not smaller than the class count.
    """
    n = len(order)
    if increment < 1 or base_classes < 0 or base_classes >= n:
        raise ValueError(
            f"need increment >= 1 and 0 <= base_classes < {n} classes, got base_classes={base_classes}, "
            f"increment={increment}"
        )
    first = base_classes or increment
    cuts = [0, min(first, n)] + list(range(first + increment, n, increment)) + [n]
    cuts = sorted(set(cuts))
    return [tuple(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def label_sets_of(ds) -> list[tuple[int, ...]]:
    """Per-image label sets from ``ds.label_sets`` or from multi-hot ``ds.targets`` ``(N, C)``.

    Raises:
        ValueError: if ``targets`` is not a 2-D 0/1 (multi-hot) array.
    """
    sets = getattr(ds, "label_sets", None)
    if sets is not None:
        return [tuple(sorted(int(c) for c in s)) for s in sets]
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise ValueError(f"{type(ds).__name__} has neither .label_sets nor multi-hot .targets")
    y = torch.as_tensor(targets if isinstance(targets, torch.Tensor) else list(targets))
    if y.ndim != 2 or not torch.all((y == 0) | (y == 1)):
        raise ValueError(
            f"{type(ds).__name__}.targets is not multi-hot: expected an (N, C) array of 0/1, got shape "
            f"{tuple(y.shape)}" + ("" if y.ndim != 2 else " with values other than 0/1")
        )
    return [tuple(torch.nonzero(r).flatten().tolist()) for r in y]


def _members(sets: Sequence[tuple[int, ...]], classes: set[int]) -> list[int]:
    return [i for i, s in enumerate(sets) if classes.intersection(s)]


def _mask(classes, n_classes: int) -> torch.Tensor:
    m = torch.zeros(n_classes, dtype=torch.bool)
    m[list(classes)] = True
    return m  # (C,)


def _avl(ds, sets: Sequence[tuple[int, ...]]) -> AvalancheDataset:
    return AvalancheDataset([ds], data_attributes=[DataAttribute(list(sets), "labels_multi")])


def _add_timeline(stream, tasks: Sequence[tuple[int, ...]], n_classes: int) -> None:
    """Avalanche's class-timeline attributes plus ``class_mask`` / ``seen_class_mask`` on each experience."""
    all_cls = {c for t in tasks for c in t}
    for t, exp in enumerate(stream):
        cur, prev = set(tasks[t]), {c for k in tasks[:t] for c in k}
        exp.classes_in_this_experience = cur
        exp.previous_classes = prev
        exp.classes_seen_so_far = cur | prev
        exp.future_classes = all_cls - cur - prev
        exp.class_mask = _mask(cur, n_classes)
        exp.seen_class_mask = _mask(cur | prev, n_classes)


def multilabel_benchmark(train_ds, test_ds, tasks: Sequence[Sequence[int]], classnames: Sequence[str] | None = None):
    """MLCIL Avalanche benchmark from multi-label train/test datasets and per-task class sets.

    Args:
        train_ds: map-style dataset of ``(x, multi-hot y)`` with ``label_sets`` or multi-hot ``targets``.
        test_ds: same for the test split.
        tasks: disjoint class sets ``C_t`` covering every class (``task_classes``).
        classnames: optional names (length = number of classes).

    Raises:
        ValueError: non multi-hot targets, overlapping or incomplete class sets, or a class without
            training images.
    """
    tasks = [tuple(int(c) for c in t) for t in tasks]
    n_classes = sum(len(t) for t in tasks)
    if sorted(c for t in tasks for c in t) != list(range(n_classes)):
        raise ValueError(f"task class sets must partition 0..{n_classes - 1}, got {tasks}")
    tr_sets, te_sets = label_sets_of(train_ds), label_sets_of(test_ds)
    for name, sets in (("train", tr_sets), ("test", te_sets)):
        if any(s and s[-1] >= n_classes for s in sets):
            raise ValueError(f"{name} labels exceed the {n_classes} classes of the task split")
    counts = torch.bincount(torch.tensor([c for s in tr_sets for c in s], dtype=torch.long), minlength=n_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        names = [classnames[c] for c in empty] if classnames else empty
        raise ValueError(f"classes without training images: {names[:10]} (every class needs images)")
    tr_avl, te_avl = _avl(train_ds, tr_sets), _avl(test_ds, te_sets)
    train_parts = [tr_avl.subset(_members(tr_sets, set(t))) for t in tasks]
    test_parts = []
    for k in range(len(tasks)):
        idx = _members(te_sets, {c for t in tasks[: k + 1] for c in t})
        if not idx:
            raise ValueError(f"no test image has a class of tasks 0..{k}")
        test_parts.append(te_avl.subset(idx))
    bench = make_benchmark(train_parts, test_parts, timeline=False)
    for stream in (bench.train_stream, bench.test_stream):
        _add_timeline(stream, tasks, n_classes)
    labeled = te_avl.subset([i for i, s in enumerate(te_sets) if s])
    info = BenchmarkInfo(
        n_classes=n_classes, classnames=classnames, test_dataset=labeled,
        task_classes=tasks, multilabel=True, cumulative_test=True,
    )  # fmt: skip
    return with_info(bench, info)


def load_multilabel(cfg: MultiLabelConfig, seed: int = 0):
    """(train, test) multi-label datasets named by ``cfg.dataset`` (a ``multilabel`` name of the catalogue)."""
    synthetic = {
        "num_classes": cfg.synthetic_classes, "n_train": cfg.synthetic_train, "n_test": cfg.synthetic_test,
        "max_labels": cfg.synthetic_max_labels,
    }  # fmt: skip
    return catalogue.load(cfg.dataset, "multilabel", cfg.root, img_size=cfg.img_size, **synthetic)


@SCENARIOS.register("multilabel", config=MultiLabelConfig)
def build_multilabel(cfg: MultiLabelConfig, *, seed: int = 0):
    """MLCIL benchmark (COCO B0-C10 / B40-C10, VOC B0-C4 / B10-C2, or the synthetic set)."""
    train, test = load_multilabel(cfg, seed)
    if train.classes != test.classes:
        raise ValueError(f"{cfg.dataset}: train and test class lists differ")
    order = class_order(len(train.classes), cfg.shuffle, seed if cfg.shuffle_seed is None else cfg.shuffle_seed)
    tasks = task_classes(order, cfg.base_classes, cfg.increment)
    return multilabel_benchmark(train, test, tasks, train.classes)


# ------------------------------------------------------------------------------------------ single-label CIL
@dataclass(frozen=True)
class MultiLaneCILConfig:
    dataset: str = "cifar100"  # cifar100 | imagenet_r | digits (bundled, smoke runs)
    root: str = "data"  # parent of cifar-100-python / imagenet-r
    n_experiences: int = ranged(10, ge=1)  # CIFAR-100 10 x 10, ImageNet-R 10 x 20
    shuffle: str = "none"  # none (label order) | yes (Python random seeded by shuffle_seed)
    shuffle_seed: int | None = None  # None: the run seed
    img_size: int = 224  # reference transforms; digits are resized tensors instead


def _load_cil(cfg: MultiLaneCILConfig):
    entry = catalogue.entry(cfg.dataset, "cl")
    if entry.bundled:  # the digits: tensors at img_size, no transforms
        train, test = entry.load("cl", cfg.root, img_size=cfg.img_size)
        return train, test, list(train.classes)
    train_tf, test_tf = reference_transforms(cfg.img_size)
    kwargs = {"fixed_crop": False} if cfg.dataset == "imagenet_r" else {}  # only the reference's own transforms
    train, test = entry.load("cl", cfg.root, train_transform=train_tf, test_transform=test_tf, **kwargs)
    return train, test, list(train.classes)


@SCENARIOS.register("multilane_cil", config=MultiLaneCILConfig)
def build_multilane_cil(cfg: MultiLaneCILConfig, *, seed: int = 0):
    """CIFAR-100 10x10 / ImageNet-R 10x20 with MULTI-LANE's transforms via the class-incremental builder."""
    from ctta.scenarios.class_incremental import class_incremental_benchmark, split_classes

    train, test, names = _load_cil(cfg)
    order = class_order(len(names), cfg.shuffle, seed if cfg.shuffle_seed is None else cfg.shuffle_seed)
    groups = split_classes(len(names), cfg.n_experiences, class_order=order, shuffle=False)
    return class_incremental_benchmark(train, test, groups, names)
