"""Named dataset sources: ``load_dataset(name, root, **kw) -> Source(train, test, classnames)``.

Built in: ``digits`` (bundled with scikit-learn; offline) and ``folder`` (``root/train/<class>/*`` and
``root/test/<class>/*``). Loader modules register more with ``register_dataset`` (CIFAR-100, Tiny-ImageNet,
ImageNet-R, ...); ``load_dataset`` imports the built-in loader modules on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset


@dataclass
class Source:
    """A train/test pair with class names; both datasets expose integer ``targets``."""

    train: Dataset
    test: Dataset
    classnames: Sequence[str]
    info: dict[str, Any] | None = None  # e.g. normalisation statistics, augmentation policy


_LOADERS: dict[str, Callable[..., Source]] = {}
_LOADER_MODULES = ("ctta.data.cl_datasets",)  # modules that call register_dataset at import


def register_dataset(name: str) -> Callable:
    """Decorator registering ``loader(root, **kw) -> Source`` under ``name`` (duplicates raise)."""

    def deco(fn: Callable[..., Source]) -> Callable[..., Source]:
        if name in _LOADERS:
            raise KeyError(f"duplicate dataset name {name!r}")
        _LOADERS[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    _import_loaders()
    return sorted(_LOADERS)


def _import_loaders() -> None:
    for mod in _LOADER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def load_dataset(name: str, root: str | Path = "data", **kwargs: Any) -> Source:
    """Load the named dataset from ``root`` (unknown names raise listing the valid ones)."""
    _import_loaders()
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; valid datasets: {sorted(_LOADERS)}")
    return _LOADERS[name](root, **kwargs)


@register_dataset("digits")
def _digits(root: str | Path = "", img_size: int = 32, **kwargs: Any) -> Source:
    from ctta.data.digits import DIGIT_NAMES, load_digits

    tr, te = load_digits(img_size=img_size)
    return Source(tr, te, list(DIGIT_NAMES), {"mean": (0.5,) * 3, "std": (0.5,) * 3})


@register_dataset("folder")
def _folder(root: str | Path, transform=None, **kwargs: Any) -> Source:
    from ctta.data.folder import ImageFolderDataset

    how = "Expected <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg."
    tr = ImageFolderDataset(Path(root) / "train", transform=transform, dataset_name="folder dataset", how_to_get=how)
    te = ImageFolderDataset(
        Path(root) / "test", classes=tr.classes, transform=transform, dataset_name="folder dataset", how_to_get=how
    )
    return Source(tr, te, tr.classes)
