"""Adapters from plain torch datasets to Avalanche datasets (targets, optional constant task labels)."""

from __future__ import annotations

from collections.abc import Sequence

from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from torch.utils.data import Dataset


def as_avl_dataset(
    ds: Dataset, targets: Sequence[int] | None = None, task_label: int | None = None
) -> ClassificationDataset:
    """Wrap ``ds`` (samples ``(x, y)``) as an Avalanche ``ClassificationDataset`` with a ``targets`` attribute.

    Args:
        ds: a map-style dataset returning ``(x, y)``.
        targets: integer labels aligned with ``ds`` (default: ``ds.targets``).
        task_label: if given, a constant ``TaskLabels`` attribute is attached and samples become ``(x, y, t)``
            (needed by Avalanche's task-label-dependent metrics and strategies).
    """
    if targets is None:
        targets = getattr(ds, "targets", None)
        if targets is None:
            raise ValueError(f"{type(ds).__name__} has no .targets; pass targets= explicitly")
    targets = [int(t) for t in targets]
    if len(targets) != len(ds):
        raise ValueError(f"targets has {len(targets)} entries but the dataset has {len(ds)} samples")
    attrs = [DataAttribute(targets, "targets")]
    if task_label is not None:
        attrs.append(TaskLabels([int(task_label)] * len(targets)))
    return ClassificationDataset([ds], data_attributes=attrs)
