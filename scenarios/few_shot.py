"""Few-shot CLIP prompt-learning protocol: the 11 datasets' split files, the official few-shot sampler,
base-to-new class subsampling; one Avalanche benchmark with a train experience and base / new test streams.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134) few-shot protocol; CoCoOp (Zhou et al., CVPR 2022,
arXiv 2203.05557) base-to-new generalisation. References (behaviour read, re-implemented, no code copied):
KaiyangZhou/Dassl.pytorch@c61a1b5 ``dassl/data/datasets/base_dataset.py:{generate_fewshot_dataset,
split_dataset_by_label}``, KaiyangZhou/CoOp@ff61507 ``datasets/oxford_pets.py:{read_split, subsample_classes}``
and ``datasets/*.py`` (folders and split files).

* Few-shot sampling: for every label in first-appearance order of the split, ``random.sample(items, K)`` on one
  Python ``random`` stream seeded with the run's seed (classes with fewer than K items are kept whole); train
  uses ``K = shots``, then validation ``K = min(shots, 4)`` from the same stream. Given the same split file and
  seed the same images are picked as by the official code (whose ``set_random_seed`` seeds Python's ``random``
  right before this sampling).
* Base-to-new: the labels present in the few-shot train set, sorted; the first ``ceil(n / 2)`` are base, the rest
  new; each subset is relabelled ``0..m-1``. Sampling happens on all classes first, subsampling after.
* Streams: ``train`` (one experience: the few-shot base train set; all classes with ``setting: all``), ``test``
  (base classes) and ``test_new`` (new classes; absent with ``setting: all``); ``valid`` holds the few-shot
  validation set; ``eval_datasets`` adds one stream ``test_<name>`` per listed dataset (its whole test split, all its
  classes: the cross-dataset and domain-generalisation evaluations, e.g. ImageNet training with ``setting: all``).
  The benchmark's record (``bench.info``, a ``BenchmarkInfo``) maps each stream to its class names in
  ``stream_classnames`` (a prompt learner rebuilds its text head per stream); its ``classnames`` are the training
  classes.
* Transforms (CLIP mean/std): train ``RandomResizedCrop(img_size, scale=(0.08, 1), bicubic)`` + horizontal flip;
  eval ``Resize(img_size, bicubic)`` + ``CenterCrop``. ``dataset: digits`` (sklearn's bundled digits, tensors at
  ``img_size``; smoke tests) is only normalised.

* ImageNet (no split file: ``imagenet/images/train`` is the train set, ``images/val`` the test set, no validation
  set, so no validation draw) and FGVCAircraft (the official ``images_variant_*.txt`` lists) are read from their
  folders; ImageNet-V2/-Sketch/-A/-R are test-only (only as ``eval_datasets``: domain generalisation, CoCoOp's
  ``scripts/cocoop/xd_*.sh`` protocol with ``dataset: imagenet, setting: all``).

* ``fewshot_index`` (ProAPO's protocol, MorningStarOvO/ProAPO@fefdf18 ``tools/data_process/named_data.py``, MIT):
  the few-shot sets are read from an index file instead of drawn: a ``seed_<seed>_num_shots_<shots>.json`` file, or
  the folder holding them (ProAPO's ``data/dataset/<ds>/fewshot_dataset/``; the file is picked by the run's seed and
  ``shots``). Its ``{"train": {path: class name}, "val": {...}}`` entries name images relative to the dataset's
  image folder (``banded/banded_0117.jpg``, ``cars_train/00467.jpg``); each is matched against the end of the image
  paths of the split of the same name (``val`` only where the dataset has one; without ``val`` in the file the
  validation set is drawn as above), in the file's order, with the split's labels and class names (ProAPO's own class
  names, e.g. EuroSAT's "annual crop land", are only checked to map to one label each). Entries not found are
  listed in one error. The index files are per-dataset data and not shipped: take them from the reference. On
  CoOp's split files they hold the very images of the draw above with the same seed (checked for DTD, Pets and Stanford
  Cars, seeds 1 and 42, 1 and 16 shots, train and validation); they matter where ctta's listing differs (ImageNet).

Deviations: the official few-shot cache ``split_fewshot/*.pkl`` and Dassl's ImageNet ``preprocessed.pkl`` are not
read (the same images are re-sampled; for ImageNet the images of a class are listed in sorted order, CoOp's in
``os.listdir`` order).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.transform_groups import TransformGroups
from torch.utils.data import Dataset

from ctta.data import catalogue
from ctta.data.tta_datasets import read_coop_split as read_split
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = [
    "DATASETS", "FewShotConfig", "build_few_shot", "generate_fewshot", "read_fewshot_index", "read_split",
    "select_indexed", "subsample_classes",
]  # fmt: skip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: the few-shot datasets (``few_shot`` names of ``ctta.data.catalogue``; CoOp's names are accepted as aliases)
DATASETS = tuple(catalogue.names("few_shot"))


@dataclass(frozen=True)
class FewShotConfig:
    dataset: str = "oxford_pets"  # a few_shot name of ctta.data.catalogue, or digits (bundled, smoke tests)
    root: str = "data"  # holds <dataset folder>/<split file> and the images (catalogue folders)
    shots: int = 16  # K images per class (<= 0: the whole train split)
    setting: str = "base2new"  # base2new (train base; test base and new) | all (train and test all classes)
    img_size: int = 224
    max_test: int = 0  # keep the first N test items per stream (0: all); for quick runs
    eval_datasets: tuple[str, ...] = ()  # cross-dataset / domain generalisation: extra test streams test_<name>
    fewshot_index: str = ""  # ProAPO's few-shot index: a seed_<s>_num_shots_<k>.json or its folder ("": draw)


# ---------------------------------------------------------------------------------------------- protocol
def split_by_label(items: Sequence[tuple]) -> dict[int, list]:
    """Items grouped by label (``item[1]``) in first-appearance order of the labels."""
    out: dict[int, list] = {}
    for it in items:
        out.setdefault(int(it[1]), []).append(it)
    return out


def generate_fewshot(items: Sequence[tuple], shots: int, rng: random.Random) -> list:
    """``shots`` items per label: ``rng.sample`` per label in first-appearance order (fewer: all kept)."""
    if shots < 1:
        return list(items)
    out: list = []
    for group in split_by_label(items).values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def subsample_classes(*splits: Sequence[tuple], subsample: str = "all") -> list[list]:
    """Base (first ``ceil(n/2)`` sorted labels of ``splits[0]``) or new (the rest) subsets, relabelled from 0.

    Items are ``(image, label, classname)``; ``subsample`` is ``all`` | ``base`` | ``new``.
    """
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be all, base or new, got {subsample!r}")
    if subsample == "all":
        return [list(s) for s in splits]
    labels = sorted({int(it[1]) for it in splits[0]})
    m = math.ceil(len(labels) / 2)
    keep = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(keep)}
    return [[(it[0], relabel[int(it[1])], *it[2:]) for it in s if int(it[1]) in relabel] for s in splits]


def classnames_of(items: Sequence[tuple]) -> list[str]:
    """Class names by label; the labels must be ``0..n-1`` (a class without items would shift the names)."""
    names = {int(it[1]): it[2] for it in items}
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names) + 1)) - set(names))[:5] if names else []
        raise ValueError(f"labels are not 0..n-1: classes {missing} have no items")
    return [names[y] for y in sorted(names)]


# ---------------------------------------------------------------------------------------------- index files
#: where ProAPO keeps its few-shot index files (named in the error for a missing one)
PROAPO_INDEX = "data/dataset/<dataset>/fewshot_dataset/seed_<seed>_num_shots_<shots>.json of MorningStarOvO/ProAPO"


def read_fewshot_index(path: str | Path, seed: int, shots: int) -> dict[str, list[tuple[str, str]]]:
    """``{"train": [(image path, class name), ...], "val": [...]}`` of a ProAPO few-shot index file, in file order.

    Args:
        path: the file, or a folder holding ``seed_<seed>_num_shots_<shots>.json``.
        seed: the run's seed (picks the file in a folder).
        shots: shots per class (picks the file in a folder).

    Raises:
        FileNotFoundError: no such file (names where ProAPO keeps it).
        ValueError: the file has no ``train`` mapping.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"seed_{seed}_num_shots_{shots}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"scenario.fewshot_index: {path} not found. ProAPO ships its few-shot index files as {PROAPO_INDEX} "
            "(@fefdf18, MIT); copy that folder (or one file) and point scenario.fewshot_index at it."
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
        raise ValueError(f"{path}: not a ProAPO few-shot index (expected {{'train': {{image path: class name}}}})")
    parts = [k for k in ("train", "val") if isinstance(data.get(k), dict)]
    return {k: [(str(p), str(c)) for p, c in data[k].items()] for k in parts}


def _parts(path: str) -> tuple[str, ...]:
    """The components of an image path (either separator)."""
    return PurePosixPath(path.replace("\\", "/")).parts


def _check_class_names(entries: Sequence[tuple[str, str]], chosen: Sequence[tuple], split: str) -> None:
    """Every index class name must map to one label of the split (else the index belongs to another split)."""
    labels: dict[str, set] = {}
    for (_, name), it in zip(entries, chosen):
        labels.setdefault(name, set()).add(int(it[1]))
    mixed = {n: sorted(ys) for n, ys in labels.items() if len(ys) > 1}
    if mixed:
        raise ValueError(f"scenario.fewshot_index: {split} class names mapping to several labels: {mixed}")


def select_indexed(items: Sequence[tuple], entries: Sequence[tuple[str, str]], split: str = "train") -> list:
    """The split items named by index ``entries`` (``(relative image path, class name)``), in the entries' order.

    An entry matches the one item whose image path ends with the entry's path (whole components).

    Raises:
        ValueError: entries matching no item (or several) in ``split``, all listed; or one index class name that
            maps to several labels of the split.
    """
    keys = [_parts(p) for p, _ in entries]
    found: dict[tuple, list] = {}
    for depth in {len(k) for k in keys}:
        for it in items:
            if isinstance(it[0], str):
                found.setdefault(_parts(it[0])[-depth:], []).append(it)
    bad = [k for k in keys if len(found.get(k, ())) != 1]
    if bad:
        many = sum(k in found for k in bad)
        raise ValueError(
            f"scenario.fewshot_index: {len(bad)} of {len(keys)} {split} entries not found in the {split} split"
            f"{f' ({many} match several images)' if many else ''}: {', '.join('/'.join(k) for k in bad)}"
        )
    chosen = [found[k][0] for k in keys]
    _check_class_names(entries, chosen, split)
    return chosen


def _fewshot_sets(cfg: FewShotConfig, splits: dict, seed: int) -> tuple[list, list]:
    """The few-shot train and validation sets: drawn (module docstring) or read from ``cfg.fewshot_index``."""
    rng = random.Random(seed)
    index = read_fewshot_index(cfg.fewshot_index, seed, cfg.shots) if cfg.fewshot_index else {}
    if index:
        train = select_indexed(splits["train"], index["train"], "train")
    else:
        train = generate_fewshot(splits["train"], cfg.shots, rng)
    if not splits["val"]:
        return train, []
    if "val" in index:
        return train, select_indexed(splits["val"], index["val"], "val")
    return train, generate_fewshot(splits["val"], min(cfg.shots, 4), rng)


# ---------------------------------------------------------------------------------------------- data
class _Images(Dataset):
    """``(image path or tensor, label, classname)`` items; paths are read as RGB PIL images."""

    def __init__(self, items: Sequence[tuple]) -> None:
        self.items = list(items)
        self.targets = [int(it[1]) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x, y = self.items[i][0], self.items[i][1]
        if isinstance(x, str):
            from PIL import Image

            with open(x, "rb") as fh:
                x = Image.open(fh).convert("RGB")
        return x, int(y)


def _transforms(img_size: int, bundled: bool) -> dict:
    from torchvision import transforms as T

    norm = T.Normalize(CLIP_MEAN, CLIP_STD)
    if bundled:
        return {"train": norm, "eval": norm}
    bicubic = T.InterpolationMode.BICUBIC
    train = T.Compose([T.RandomResizedCrop(img_size, scale=(0.08, 1.0), interpolation=bicubic),
                       T.RandomHorizontalFlip(), T.ToTensor(), norm])  # fmt: skip
    test = T.Compose([T.Resize(img_size, interpolation=bicubic), T.CenterCrop(img_size), T.ToTensor(), norm])
    return {"train": train, "eval": test}


def _load_splits(cfg: FewShotConfig) -> dict[str, list[tuple]]:
    return catalogue.load(cfg.dataset, "few_shot", cfg.root, img_size=cfg.img_size)


def _avl(items: Sequence[tuple], tf: dict) -> ClassificationDataset:
    ds = _Images(items)
    return ClassificationDataset(
        [ds], data_attributes=[DataAttribute(ds.targets, "targets")], transform_groups=TransformGroups(tf)
    )


@SCENARIOS.register("few_shot", config=FewShotConfig)
def build_few_shot(cfg: FewShotConfig, *, seed: int = 1) -> CLScenario:
    """The few-shot benchmark of ``cfg`` sampled with ``seed`` (the official protocol's seed 1, 2 or 3)."""
    if cfg.setting not in ("base2new", "all"):
        raise ValueError(f"setting must be base2new or all, got {cfg.setting!r}")
    splits = _load_splits(cfg)
    if not splits["train"]:
        raise ValueError(
            f"few-shot dataset {cfg.dataset!r} has no train split (a test-only set: use it in scenario.eval_datasets)"
        )
    train, val = _fewshot_sets(cfg, splits, seed)
    test = splits["test"]
    parts = {"train": train, "valid": val}
    if cfg.setting == "all":
        parts["test"] = test
        names = {k: classnames_of(train) for k in ("train", "valid", "test")}
    else:
        tr_b, val_b, te_b = subsample_classes(train, val, test, subsample="base")
        tr_n, val_n, te_n = subsample_classes(train, val, test, subsample="new")
        parts = {"train": tr_b, "valid": val_b, "test": te_b, "test_new": te_n}
        names = {"train": classnames_of(tr_b), "valid": classnames_of(tr_b), "test": classnames_of(tr_b),
                 "test_new": classnames_of(tr_n)}  # fmt: skip
    if cfg.max_test > 0:
        parts = {k: (v[: cfg.max_test] if k.startswith("test") else v) for k, v in parts.items()}
    tf = _transforms(cfg.img_size, catalogue.entry(cfg.dataset, "few_shot").bundled)
    tfs = dict.fromkeys(parts, tf)
    for ds in cfg.eval_datasets:  # the whole test split of another dataset, all its classes
        key = "test_" + re.sub(r"[^A-Za-z0-9]", "_", ds)
        if key in parts:
            raise ValueError(f"eval_datasets: {ds!r} repeats a stream name ({key})")
        items = _load_splits(replace(cfg, dataset=ds))["test"]
        parts[key] = items[: cfg.max_test] if cfg.max_test > 0 else items
        names[key] = classnames_of(items)
        tfs[key] = _transforms(cfg.img_size, catalogue.entry(ds, "few_shot").bundled)
    streams = [
        EagerCLStream(k, [DatasetExperience(dataset=_avl(v, tfs[k]), current_experience=0)]) for k, v in parts.items()
    ]
    bench = CLScenario(streams)
    for stream in streams:
        stream.benchmark = bench  # experiences reach their stream's class names through origin_stream.benchmark
    info = BenchmarkInfo(
        n_classes=len(names["train"]), classnames=names["train"], test_dataset=bench.test_stream[0].dataset,
        stream_classnames=names,
    )  # fmt: skip
    return with_info(bench, info)
