"""Transfer stream: a sequence of downstream datasets, one experience each (DAM-VP's setting for k = 1).

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138), §4; reference
shikiw/DAM-VP@dec5821 ``data_utils/`` (datasets and splits: the ``transfer`` entries of ``ctta.data.catalogue``,
loaders in ``ctta.data.transfer_datasets``).

The benchmark has three streams with one experience per dataset, in config order: ``train_stream``,
``valid_stream`` and ``test_stream``. Datasets occupy disjoint, consecutive blocks of global class ids (dataset
d's local class c is ``offset_d + c``) and every sample carries the dataset index as its task label, so a
strategy can keep per-dataset prompts/heads and still evaluate every earlier dataset. Transforms are Avalanche
transform groups: ``train`` (reference augmentation) and ``eval``.

Synthetic datasets for smoke tests (offline, tiny): ``digits`` (sklearn's bundled digits, 10 classes) and
``digits/<k>/<n>``: the k-th of n "datasets" obtained by splitting the 10 digit classes into n contiguous
groups, each with its own colour tint (so the datasets differ in classes and in appearance). Digits splits:
train = first 80 % / val = last 20 % of the bundled train part, test = the bundled test part.
"""

from __future__ import annotations

from dataclasses import dataclass

from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.benchmarks.utils.transform_groups import TransformGroups
from torch.utils.data import Dataset

from ctta.data import catalogue
from ctta.data.transfer_datasets import NORMALIZATION, Relabel, damvp_transforms
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info


@dataclass(frozen=True)
class TransferConfig:
    datasets: tuple[str, ...] = ("cifar100",)  # catalogue transfer names (vtab-<task>, digits/<k>/<n>, ...)
    root: str = "data"  # holds torchvision_dataset/, FGVC/, vtab-1k/
    img_size: int = 224
    normalization: str = "imagenet"  # imagenet | half (vit-b-22k) | clip
    max_per_split: int = 0  # keep the first N samples of each split (0: all); for quick runs
    task_labels: bool = True  # samples (x, y, dataset index)


def _transforms(entry, cfg: TransferConfig) -> dict:
    if entry.bundled:  # the digits: tensors already at img_size: normalise only, no augmentation
        from torchvision.transforms import Normalize

        mean, std = NORMALIZATION[cfg.normalization]
        return {"train": Normalize(mean, std), "eval": Normalize(mean, std)}
    return {s: damvp_transforms(s, cfg.img_size, cfg.normalization) for s in ("train", "eval")}


def _avl(ds: Dataset, d: int, cfg: TransferConfig, tf: dict) -> ClassificationDataset:
    attrs = [DataAttribute(list(ds.targets), "targets")]
    if cfg.task_labels:
        attrs.append(TaskLabels([d] * len(ds)))
    return ClassificationDataset([ds], data_attributes=attrs, transform_groups=TransformGroups(tf))


def _limit(ds: Dataset, n: int) -> Dataset:
    if n <= 0 or len(ds) <= n:
        return ds
    return Relabel(ds, range(n), ds.targets, {int(t): int(t) for t in set(ds.targets)}, 0)


@SCENARIOS.register("transfer", config=TransferConfig)
def build_transfer(cfg: TransferConfig, *, seed: int = 0) -> CLScenario:
    """A stream of downstream datasets (one experience each) with train/valid/test streams (``seed`` unused:
    the splits are fixed by the reference protocol)."""
    if not cfg.datasets:
        raise ValueError("scenario.datasets is empty: name at least one dataset")
    if cfg.normalization not in NORMALIZATION:
        raise ValueError(f"normalization={cfg.normalization!r}; valid: {sorted(NORMALIZATION)}")
    streams: dict[str, list] = {"train": [], "valid": [], "test": []}
    names, classes, cnames, offset = [], [], [], 0
    for d, name in enumerate(cfg.datasets):
        entry = catalogue.entry(name, "transfer")
        data = entry.load("transfer", cfg.root, img_size=cfg.img_size)
        tf, n_cls = _transforms(entry, cfg), len(data.classnames)
        for stream, split in (("train", data.train), ("valid", data.val), ("test", data.test)):
            split = _limit(split, cfg.max_per_split)
            relabeled = Relabel(split, range(len(split)), split.targets, {c: c for c in range(n_cls)}, offset)
            streams[stream].append(_avl(relabeled, d, cfg, tf))
        names.append(name)
        classes.append(list(range(offset, offset + n_cls)))
        cnames.append(list(data.classnames))
        offset += n_cls
    exps = {
        s: [DatasetExperience(dataset=ds, current_experience=i) for i, ds in enumerate(v)] for s, v in streams.items()
    }
    bench = with_classes_timeline(CLScenario([EagerCLStream(s, e) for s, e in exps.items()]))
    test_all = streams["test"][0]
    for ds in streams["test"][1:]:
        test_all = test_all.concat(ds)
    flat = [f"{c}" if len(names) == 1 else f"{n}: {c}" for n, cs in zip(names, cnames) for c in cs]
    info = BenchmarkInfo(
        n_classes=offset, classnames=flat, test_dataset=test_all, dataset_names=names,
        task_classes=classes, experience_classnames=cnames, normalization=NORMALIZATION[cfg.normalization],
    )  # fmt: skip
    return with_info(bench, info)
