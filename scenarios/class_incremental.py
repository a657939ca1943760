"""Class-incremental benchmark over any labelled dataset of the catalogue, never dropping classes.

Avalanche 0.6's ``class_incremental_benchmark(num_experiences=k)`` (ContinualAI/avalanche v0.6.0,
``benchmarks/scenarios/supervised.py``) silently drops the remainder classes when ``k`` does not divide the class
count and reseeds the global torch RNG. This builder splits the class order into ``n_experiences`` groups whose
sizes differ by at most one (earlier groups larger), or into explicit ``classes_per_exp`` sizes, shuffles with a
private generator, and keeps native sample order.

Datasets: every ``cl`` name of ``ctta.data.catalogue`` (``cifar100``, ``tinyimagenet``, ``imagenet_r``, ``digits``,
``folder``) and the train/test splits of every ``transfer`` name (``cub200``, ``food101``, ``vtab-<task>``,
``imagefolder:<dir>``, ...). Images read from files are fed through ``default_transform(img_size)`` (resize,
centre crop, to tensor); the bundled digits are tensors at ``img_size`` already.

Input pipeline options (defaults keep the images as before: [0, 1] tensors, no normalisation):

* ``normalize``: ``none`` (default), ``imagenet``, ``inception`` (mean/std 0.5, what Prompt-CAM's official code
  uses for every backbone, and ``ctta-tiny-vit``'s statistics) or ``clip`` (OpenAI CLIP); a choice other than
  ``none`` is recorded as ``benchmark.info.normalization``.
* ``transform``: ``default`` (above; the digits untouched) or ``promptcam`` (Prompt-CAM's official pipeline,
  ``data/dataset/utils.py:get_transformation`` of Imageomics/Prompt_CAM @ 7722fc2, scaled to ``img_size`` S):
  train ``Resize((240 S / 224,) * 2)`` -> ``RandomCrop(S)`` -> ``RandomHorizontalFlip``, test ``Resize((S, S))``;
  applied to the digits tensors too; or ``damvp`` (DAM-VP's pipeline, which TCPA's official scripts use too:
  ``ctta.data.transfer_datasets.damvp_transforms`` without its normalisation: train ``Resize(256 S / 224)`` ->
  ``RandomCrop(S)`` -> ``RandomHorizontalFlip``, test ``Resize(256 S / 224)`` -> ``CenterCrop(S)``).
* ``autoaugment`` (default off): torchvision's ``AutoAugment`` with the ImageNet policy on the train images only,
  after the resize / crop / flip steps and before the conversion to a tensor, as TCPA's official Stanford Cars
  pipeline (zhoujiahuan1991/ICML2025-TCPA @ dce8b3a ``data_utils/transforms.py``: ``AutoAugImageNetPolicy`` after
  ``RandomHorizontalFlip``). Tensor images (the digits, ``transform: default``) go through it as uint8 and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ctta.benchmark_builders import make_benchmark
from ctta.data import catalogue
from ctta.data.avl import as_avl_dataset
from ctta.data.folder import default_transform
from ctta.data.transfer_datasets import NORMALIZATION, damvp_transforms
from ctta.fields import ranged
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info


@dataclass(frozen=True)
class ClassIncrementalConfig:
    dataset: str = "digits"  # a cl or transfer name of ctta.data.catalogue
    root: str = "data"  # parent folder of local datasets (each in its catalogue folder)
    n_experiences: int = ranged(5, ge=1)
    classes_per_exp: tuple[int, ...] | None = None  # explicit sizes (sum = number of classes); wins over n_exp
    class_order: tuple[int, ...] | None = None  # explicit order; default label order (shuffled if shuffle)
    shuffle_classes: bool = True
    img_size: int = 32  # image side: digits are rendered at it, file images resized and centre-cropped to it
    skip_bad_images: bool = False  # folder datasets: leave unreadable images out (one warning) instead of stopping
    normalize: str = "none"  # none | imagenet | inception (mean/std 0.5) | clip (module docstring)
    transform: str = "default"  # default (resize + centre crop) | promptcam | damvp (official pipelines, docstring)
    autoaugment: bool = False  # AutoAugment (ImageNet policy) on the train images (TCPA's Stanford Cars, docstring)


#: ``normalize`` choices: (mean, std), or None for images left in [0, 1]
NORMALIZE = {"none": None, "imagenet": NORMALIZATION["imagenet"], "inception": NORMALIZATION["half"],
             "clip": NORMALIZATION["clip"]}  # fmt: skip
TRANSFORMS = ("default", "promptcam", "damvp")


def split_classes(
    n_classes: int,
    n_experiences: int | None = None,
    classes_per_exp: Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> list[list[int]]:
    """Class ids per experience. Every class appears exactly once; nothing is dropped."""
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(n_classes)):
            raise ValueError(f"class_order must be a permutation of 0..{n_classes - 1}, got {order[:20]}...")
    elif shuffle:
        order = torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        order = list(range(n_classes))
    if classes_per_exp is not None:
        sizes = [int(s) for s in classes_per_exp]
        if sum(sizes) != n_classes or min(sizes) < 1:
            raise ValueError(f"classes_per_exp {sizes} must be positive and sum to {n_classes}")
    else:
        if n_experiences is None or not 1 <= n_experiences <= n_classes:
            raise ValueError(f"n_experiences must be in [1, {n_classes}], got {n_experiences}")
        base, extra = divmod(n_classes, n_experiences)
        sizes = [base + (i < extra) for i in range(n_experiences)]
    cuts = [0]
    for s in sizes:
        cuts.append(cuts[-1] + s)
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def class_incremental_benchmark(train_ds, test_ds, groups: Sequence[Sequence[int]], classnames=None,
                                normalization=None):  # fmt: skip
    """Avalanche benchmark with one train and one test experience per class group (native sample order);
    ``normalization``: the ``(mean, std)`` the images carry (recorded in ``benchmark.info``), None if unknown."""
    tr, te = as_avl_dataset(train_ds), as_avl_dataset(test_ds)
    ytr, yte = torch.as_tensor(list(train_ds.targets)), torch.as_tensor(list(test_ds.targets))

    def parts(ds, y):
        out = []
        for g in groups:
            idx = torch.nonzero(torch.isin(y, torch.as_tensor(list(g)))).flatten().tolist()
            if not idx:
                raise ValueError(f"no samples for classes {list(g)[:10]} in a split")
            out.append(ds.subset(idx))
        return out

    n_classes = sum(len(g) for g in groups)
    bench = make_benchmark(parts(tr, ytr), parts(te, yte))
    info = BenchmarkInfo(n_classes=n_classes, classnames=classnames, test_dataset=te, task_classes=groups,
                         normalization=normalization)  # fmt: skip
    return with_info(bench, info)


KINDS = ("cl", "transfer")  # catalogue kinds this scenario reads (a cl name wins over a transfer one)


class _Transformed(Dataset):
    """``(transform(x), y)`` over a dataset of ``(x, y)``; keeps ``targets`` (and ``classes`` when present)."""

    def __init__(self, base, transform) -> None:
        self.base, self.transform = base, transform
        self.targets = list(base.targets)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return self.transform(x), y


def _autoaugmented(steps: list, pil: bool) -> list:
    """``steps`` followed by AutoAugment (ImageNet policy): before their final ``ToTensor`` for PIL images, else on
    the tensor as uint8 (AutoAugment's tensor ops need it) and back to float."""
    from torchvision import transforms as T

    aug = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)
    if pil:
        return [*steps[:-1], aug, steps[-1]]
    return [*steps, T.ConvertImageDtype(torch.uint8), aug, T.ConvertImageDtype(torch.float32)]


def image_transforms(img_size: int, normalize: str = "none", transform: str = "default", bundled: bool = False,
                     autoaugment: bool = False):  # fmt: skip
    """``(train, test)`` transforms of the scenario's pipeline (module docstring); ``None`` leaves a split as it is
    (bundled tensors with ``transform=default`` and ``normalize=none``). File images come in as PIL images, bundled
    ones as tensors at ``img_size``; ``autoaugment`` adds AutoAugment to the train transform."""
    from torchvision import transforms as T

    if normalize not in NORMALIZE:
        raise ValueError(f"scenario.normalize={normalize!r}; valid: {sorted(NORMALIZE)}")
    if transform not in TRANSFORMS:
        raise ValueError(f"scenario.transform={transform!r}; valid: {list(TRANSFORMS)}")
    to_tensor = [] if bundled else [T.ToTensor()]
    norm = [] if NORMALIZE[normalize] is None else [T.Normalize(*NORMALIZE[normalize])]
    if transform == "promptcam":
        big = round(img_size * 240 / 224)
        train = [T.Resize((big, big)), T.RandomCrop(img_size), T.RandomHorizontalFlip(), *to_tensor]
        test = [T.Resize((img_size, img_size)), *to_tensor]
    elif transform == "damvp":  # the reference pipeline's resize / crop / flip steps (ToTensor, Normalize dropped)
        train, test = (list(damvp_transforms(s, img_size).transforms[:-2]) + to_tensor for s in ("train", "eval"))
    elif bundled:
        train, test = [], []
    elif not autoaugment:
        return (T.Compose([default_transform(img_size), *norm]),) * 2
    else:  # resize / crop / to-tensor in one step: AutoAugment on its tensor
        train, test = [default_transform(img_size)], [default_transform(img_size)]
    if autoaugment:
        train = _autoaugmented(train, pil=not bundled and transform != "default")
    mk = lambda steps: T.Compose(steps + norm) if steps + norm else None  # noqa: E731
    return mk(train), mk(test)


def load_labelled(name: str, root: str, img_size: int, skip_bad_images: bool = False, normalize: str = "none",
                  transform: str = "default", autoaugment: bool = False):  # fmt: skip
    """``(train, test, classnames)`` of catalogue dataset ``name`` (kinds ``KINDS``) with tensor images, through
    ``image_transforms(img_size, normalize, transform, bundled, autoaugment)``."""
    entry = catalogue.entry(name, KINDS)
    extra = {"skip_bad_images": True} if skip_bad_images else {}  # ctta.data.folder.load_folder's option
    if extra and entry.loaders.get("cl") != "ctta.data.folder:load_folder":
        raise ValueError(f"scenario.skip_bad_images=true applies to folder datasets, not {name!r}")
    tr_tf, te_tf = image_transforms(img_size, normalize, transform, entry.bundled, autoaugment)
    if "cl" in entry.loaders:
        if entry.bundled:
            train, test = entry.load("cl", root, img_size=img_size, train_transform=tr_tf, test_transform=te_tf)
        else:
            train, test = entry.load("cl", root, train_transform=tr_tf, test_transform=te_tf, **extra)
        return train, test, list(train.classes)
    data = entry.load("transfer", root, img_size=img_size)
    wrap = lambda ds, tf: ds if tf is None else _Transformed(ds, tf)  # noqa: E731
    return wrap(data.train, tr_tf), wrap(data.test, te_tf), list(data.classnames)


@SCENARIOS.register("class_incremental", config=ClassIncrementalConfig)
def build_class_incremental(cfg: ClassIncrementalConfig, *, seed: int = 0):
    """Class-incremental stream (one experience per class group) over a named catalogue dataset."""
    train, test, names = load_labelled(
        cfg.dataset, cfg.root, cfg.img_size, cfg.skip_bad_images, cfg.normalize, cfg.transform, cfg.autoaugment
    )
    groups = split_classes(
        len(names), cfg.n_experiences, cfg.classes_per_exp, cfg.class_order, cfg.shuffle_classes, seed
    )
    return class_incremental_benchmark(train, test, groups, names, NORMALIZE[cfg.normalize])
