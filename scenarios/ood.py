"""Out-of-distribution detection benchmark: an ID train set and test set plus named near / far OOD test sets, and
covariate-shifted ID sets for full-spectrum detection.

Protocol: OpenOOD v1.5 (Zhang et al., arXiv 2306.09301; Jingkang50/OpenOOD ``configs/datasets/imagenet/``: ID
ImageNet-1k val; near-OOD SSB-hard, NINCO; far-OOD iNaturalist, Textures, OpenImage-O; full-spectrum adds
covariate-shifted ID sets such as ImageNet-V2 / -C / -R, Yang et al., "Full-Spectrum OOD Detection", 2023), as LAPT
(Zhang et al., ECCV 2024, YBZh/OpenOOD-VLM@804f331) and OGEN (Wang et al., ICLR 2024, apple/ml-ogen@ccfa0df)
evaluate. Re-implemented; no code copied.

Streams (Avalanche ``CLScenario``; every one has one experience):

* ``train``: the few-shot ID train set (``shots`` per class, the official CoOp sampler of ``scenarios/few_shot``;
  ``shots <= 0``: all), ``valid`` its validation draw; ``test``: the ID test set (its first ``id_classes`` classes);
* ``test_near_<name>`` / ``test_far_<name>``: OOD test sets (catalogue kind ``ood``: OpenOOD lists, Fashion-MNIST,
  generated noise), every label -1; ``held_out_near: true`` adds the ID dataset's classes beyond ``id_classes`` as
  ``test_near_<dataset>_held_out`` (the tiny ``digits`` benchmark: ID zero..four, near OOD five..nine);
* ``test_csid_<name>``: covariate-shifted ID sets with ID labels: a ``few_shot`` catalogue test set with the ID
  classes (``csid_datasets``, e.g. ``imagenet_v2``) or the ID test set under one of ctta's corruptions at
  ``csid_severity`` (``csid_corruptions``).

``bench.info.stream_classnames`` maps every stream to the ID class names (the text head of a CLIP detector stays on
the ID classes). The metrics (``ctta.ood_metrics.OODDetectionMetric``) read the roles from the stream names.
Deviations: ``max_test`` truncates every test set (smoke runs).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torchvision.transforms.functional as TF
from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from ctta.scenarios.few_shot import _avl, _transforms, classnames_of, generate_fewshot
from torch.utils.data import Dataset

from ctta.data import catalogue
from ctta.data.corruptions import ON_THE_FLY, corrupt
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = ["OODConfig", "build_ood"]


@dataclass(frozen=True)
class OODConfig:
    """Scenario section ``scenario: {name: ood, ...}`` (see the module docstring).

    Attributes:
        dataset: the ID dataset (a ``few_shot`` catalogue name: ``imagenet``, ``digits``, ...).
        root: parent folder of the datasets (OpenOOD's sets under ``<root>/openood``).
        shots: ID training images per class (<= 0: the whole train split).
        id_classes: keep the first N ID classes (0: all); the others are dropped or, with ``held_out_near``, near OOD.
        held_out_near: add the classes beyond ``id_classes`` as a near-OOD set.
        near, far: OOD test sets (``ood`` catalogue names).
        csid_datasets: covariate-shifted ID test sets (``few_shot`` names with the ID classes).
        csid_corruptions: covariate-shifted ID sets made from the ID test set with ctta's corruptions.
        csid_severity: their severity (1-5).
        img_size: image side.
        max_test: keep the first N items of every test set (0: all).
    """

    dataset: str = "imagenet"
    root: str = "data"
    shots: int = 16
    id_classes: int = 0
    held_out_near: bool = False
    near: tuple[str, ...] = ("ssb_hard", "ninco")
    far: tuple[str, ...] = ("inaturalist", "textures", "openimage_o")
    csid_datasets: tuple[str, ...] = ()
    csid_corruptions: tuple[str, ...] = ()
    csid_severity: int = 3
    img_size: int = 224
    max_test: int = 0

    def __post_init__(self) -> None:
        catalogue.entry(self.dataset, "few_shot")
        for name in (*self.near, *self.far):
            catalogue.entry(name, "ood")  # unknown names raise, listing the valid ones
        bad = [c for c in self.csid_corruptions if c not in ON_THE_FLY]
        if bad:
            raise ValueError(f"csid_corruptions {bad} are not generated on the fly; valid: {list(ON_THE_FLY)}")
        if not 1 <= self.csid_severity <= 5 or self.id_classes < 0 or self.max_test < 0:
            raise ValueError("need csid_severity in 1..5, id_classes >= 0 and max_test >= 0")
        if self.held_out_near and not self.id_classes:
            raise ValueError("held_out_near needs id_classes (the classes beyond it are the near-OOD set)")


class _Corrupted(Dataset):
    """Items of a test set under one corruption (drawn per item from ``(seed, index)``), labels kept."""

    def __init__(self, items, name: str, severity: int, seed: int) -> None:
        self.items, self.name, self.severity, self.seed = list(items), name, severity, seed
        self.targets = [int(it[1]) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        x, tensor = self.items[i][0], not isinstance(self.items[i][0], str)
        img = TF.to_pil_image(x.clamp(0, 1)) if tensor else Image.open(x).convert("RGB")
        out = corrupt(img, self.name, self.severity, np.random.default_rng([self.seed, i]))
        return (TF.to_tensor(out) if tensor else out), self.targets[i]


def _key(role: str, name: str) -> str:
    return f"test_{role}_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def _id_parts(cfg: OODConfig, seed: int):
    """Few-shot ID train / valid, ID test and the held-out classes' test items."""
    splits = catalogue.load(cfg.dataset, "few_shot", cfg.root, img_size=cfg.img_size)
    rng = random.Random(seed)
    train = generate_fewshot(splits["train"], cfg.shots, rng)
    val = generate_fewshot(splits["val"], min(cfg.shots, 4), rng) if splits["val"] and cfg.shots > 0 else []
    k = cfg.id_classes or len(classnames_of(splits["test"]))
    keep = lambda items: [it for it in items if int(it[1]) < k]  # noqa: E731
    held_out = [(it[0], -1) for it in splits["test"] if int(it[1]) >= k]
    return keep(train), keep(val), keep(splits["test"]), held_out


def _test_parts(cfg: OODConfig, seed: int, test, held_out, names) -> dict:
    """Test-set datasets by stream name (truncated to ``max_test``)."""
    cut = (lambda v: v[: cfg.max_test]) if cfg.max_test else (lambda v: v)
    bundled = catalogue.entry(cfg.dataset, "few_shot").bundled
    id_tf = _transforms(cfg.img_size, bundled)
    parts = {"test": _avl(cut(test), id_tf)}
    for ds in cfg.csid_datasets:
        items = catalogue.load(ds, "few_shot", cfg.root, img_size=cfg.img_size)["test"]
        if classnames_of(items)[: len(names)] != names:
            raise ValueError(f"csid_datasets: {ds!r} does not share the ID classes of {cfg.dataset!r}")
        parts[_key("csid", ds)] = _avl(cut([it for it in items if int(it[1]) < len(names)]), id_tf)
    for c in cfg.csid_corruptions:
        shifted = _Corrupted(cut(test), c, cfg.csid_severity, seed)
        parts[_key("csid", f"{c}_{cfg.csid_severity}")] = _avl_dataset(shifted, _transforms(cfg.img_size, True))
    if cfg.held_out_near:
        parts[_key("near", f"{cfg.dataset}_held_out")] = _avl(cut(held_out), id_tf)
    for role, sets in (("near", cfg.near), ("far", cfg.far)):
        for name in sets:
            entry = catalogue.entry(name, "ood")
            items = entry.load("ood", cfg.root, img_size=cfg.img_size, limit=cfg.max_test)
            parts[_key(role, name)] = _avl(cut(items), _transforms(cfg.img_size, entry.bundled))
    return parts


def _avl_dataset(ds: Dataset, tf: dict):
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from avalanche.benchmarks.utils.transform_groups import TransformGroups

    return ClassificationDataset([ds], data_attributes=[DataAttribute(ds.targets, "targets")],
                                 transform_groups=TransformGroups(tf))  # fmt: skip


@SCENARIOS.register("ood", config=OODConfig)
def build_ood(cfg: OODConfig, *, seed: int = 1) -> CLScenario:
    """The OOD benchmark of ``cfg`` (few-shot ID draw seeded with ``seed``)."""
    train, val, test, held_out = _id_parts(cfg, seed)
    names = classnames_of(test)
    id_tf = _transforms(cfg.img_size, catalogue.entry(cfg.dataset, "few_shot").bundled)
    parts = {"train": _avl(train, id_tf), "valid": _avl(val, id_tf)}
    parts |= _test_parts(cfg, seed, test, held_out, names)
    streams = [EagerCLStream(k, [DatasetExperience(dataset=v, current_experience=0)]) for k, v in parts.items()]
    bench = CLScenario(streams)
    for stream in streams:
        stream.benchmark = bench
    info = BenchmarkInfo(n_classes=len(names), classnames=names, test_dataset=bench.test_stream[0].dataset,
                         stream_classnames=dict.fromkeys(parts, tuple(names)))  # fmt: skip
    return with_info(bench, info)
