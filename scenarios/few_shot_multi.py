"""Multi-dataset few-shot benchmark (multitask prompt tuning): the union of several datasets' few-shot sets over one
disjoint global label space, evaluated per dataset.

Paper: MVLPT (Shen et al., "Multitask Vision-Language Prompt Tuning", WACV 2024, arXiv 2211.11720) §4, multitask
source training on the CoOp datasets. Reference (behaviour read, re-implemented, no code copied):
sIncerass/MVLPT@6fa518b ``trainers/mvlpt.py:MVLPTCOOPDataManager`` (``--dataset-coop --multi-task``), per-task
evaluators of ``MVLPT.test``.

* Datasets ``d_1..d_T`` (``datasets``, in order) are each sampled exactly as the single-dataset ``few_shot`` scenario
  samples them (``scenarios.few_shot.generate_fewshot`` on a ``random.Random(seed)`` of its own: train ``shots``,
  validation ``min(shots, 4)``), so every dataset gets the images a single-dataset run with that seed gets.
* Global labels: dataset ``t``'s label ``y`` becomes ``o_t + y`` with ``o_t`` the class count of ``d_1..d_{t-1}``
  (the reference's ``label_offset``); class names are concatenated in the same order.
* Streams: ``train`` (one experience: every dataset's few-shot train set, global labels), ``valid`` (the union of
  the validation sets), ``test`` (the union of the test sets) and one ``test_<name>`` stream per dataset (its test
  split). With ``eval_label_space: union`` (the reference: its per-task evaluators score the argmax over the whole
  union) every stream uses global labels and the union's class names; with ``dataset`` each ``test_<name>`` stream
  uses the dataset's own labels ``0..C_t-1`` and names (the union's ``test`` stream stays global).
* Record (``bench.info``): ``classnames`` the union's, ``dataset_names`` the datasets, ``task_classes`` the global
  label ids of each dataset (what per-task logit masking needs), ``experience_classnames`` each dataset's names.
* Datasets: any ``few_shot`` name of ``ctta.data.catalogue``, or a ``transfer`` one (e.g. the generated
  ``digits/<k>/<n>``: part ``k`` of the 10 digit classes, tinted; its train / val / test splits are read as they are).
  Tests use ``[digits/0/2, digits/1/2]``. Generated (tensor) and image-file datasets are not mixed (the union
  streams share one transform).
* MVLPT's ``DatasetAccuracy`` metric reports each ``test_<name>`` accuracy and their mean (``mean_dataset_acc``).

Deviations: the reference evaluates the union test loader once and splits the predictions per task; the per-dataset
streams here score the same predictions (``test`` adds the union's pooled accuracy). The reference's few-shot
sampling runs on one global stream seeded once; here each dataset is sampled as its single-dataset run (the same
images as CoOp's cached ``split_fewshot`` files per dataset).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from ctta.scenarios.few_shot import _avl, _transforms, classnames_of, generate_fewshot

from ctta.data import catalogue
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = ["COOP_DATASETS", "FewShotMultiConfig", "build_few_shot_multi", "load_splits", "offset_items", "stream_key"]

#: MVLPT's multitask source set of the CoOp datasets (``scripts/mvlpt/main_mt_coopdata_cut.sh``)
COOP_DATASETS = ("imagenet", "caltech101", "food101", "stanford_cars", "oxford_pets", "oxford_flowers",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")  # fmt: skip
LABEL_SPACES = ("union", "dataset")


@dataclass(frozen=True)
class FewShotMultiConfig:
    datasets: tuple[str, ...] = COOP_DATASETS  # few_shot (or transfer) catalogue names, in label-offset order
    root: str = "data"
    shots: int = 5  # K images per class and dataset (MVLPT: 1, 5, 20)
    img_size: int = 224
    max_test: int = 0  # keep the first N test items per test stream (0: all); for quick runs
    eval_label_space: str = "union"  # union (reference: argmax over every dataset's classes) | dataset


def load_splits(name: str, root: str, img_size: int) -> tuple[dict[str, list[tuple]], bool]:
    """``({"train"|"val"|"test": [(image, label, classname)]}, bundled)`` of catalogue dataset ``name``: its
    ``few_shot`` loader, else its ``transfer`` loader's splits (read item by item)."""
    try:
        entry = catalogue.entry(name, "few_shot")
    except catalogue.UnknownDatasetError:
        entry = catalogue.entry(name, "transfer")
        data = entry.load("transfer", root, img_size=img_size)
        mk = lambda ds: [(x, int(y), data.classnames[int(y)]) for x, y in (ds[i] for i in range(len(ds)))]  # noqa: E731
        return {"train": mk(data.train), "val": mk(data.val), "test": mk(data.test)}, entry.bundled
    return entry.load("few_shot", root, img_size=img_size), entry.bundled


def offset_items(items: list[tuple], offset: int) -> list[tuple]:
    """``(image, label + offset, classname, ...)`` for every item."""
    return [(it[0], int(it[1]) + offset, *it[2:]) for it in items]


def stream_key(name: str) -> str:
    """The name of dataset ``name``'s test stream: ``test_<name>`` (non-alphanumerics as ``_``)."""
    return "test_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def _sample(cfg: FewShotMultiConfig, seed: int) -> list[dict]:
    """Per dataset: its name, few-shot train / val, test (local labels), class names and transforms."""
    out = []
    for name in cfg.datasets:
        splits, bundled = load_splits(name, cfg.root, cfg.img_size)
        if not splits["train"]:
            raise ValueError(f"few_shot_multi: dataset {name!r} has no train split")
        rng = random.Random(seed)  # each dataset as its single-dataset run
        train = generate_fewshot(splits["train"], cfg.shots, rng)
        val = generate_fewshot(splits["val"], min(cfg.shots, 4), rng) if splits["val"] else []
        test = splits["test"][: cfg.max_test] if cfg.max_test > 0 else splits["test"]
        names = classnames_of(splits["test"] + train)
        out.append({"name": name, "train": train, "val": val, "test": test, "names": names,
                    "bundled": bundled, "tf": _transforms(cfg.img_size, bundled)})  # fmt: skip
    return out


def _stream(key: str, items: list[tuple], tf: dict) -> EagerCLStream:
    return EagerCLStream(key, [DatasetExperience(dataset=_avl(items, tf), current_experience=0)])


@SCENARIOS.register("few_shot_multi", config=FewShotMultiConfig)
def build_few_shot_multi(cfg: FewShotMultiConfig, *, seed: int = 1) -> CLScenario:
    """The multi-dataset few-shot benchmark of ``cfg`` sampled with ``seed``."""
    if cfg.eval_label_space not in LABEL_SPACES:
        raise ValueError(f"eval_label_space must be one of {LABEL_SPACES}, got {cfg.eval_label_space!r}")
    if len(set(cfg.datasets)) != len(cfg.datasets) or not cfg.datasets:
        raise ValueError(f"few_shot_multi needs distinct datasets, got {list(cfg.datasets)}")
    parts = _sample(cfg, seed)
    offset, merged, groups = 0, {"train": [], "valid": [], "test": []}, []
    per_dataset, stream_names = {}, {}
    for p in parts:
        merged["train"] += offset_items(p["train"], offset)
        merged["valid"] += offset_items(p["val"], offset)
        merged["test"] += offset_items(p["test"], offset)
        groups.append(tuple(range(offset, offset + len(p["names"]))))
        key = stream_key(p["name"])
        local = cfg.eval_label_space == "dataset"
        per_dataset[key] = (p["test"] if local else offset_items(p["test"], offset), p["tf"])
        if local:
            stream_names[key] = p["names"]
        offset += len(p["names"])
    if len(per_dataset) != len(parts):
        raise ValueError(f"few_shot_multi: datasets {list(cfg.datasets)} repeat a stream name")
    names = [n for p in parts for n in p["names"]]
    if len({p["bundled"] for p in parts}) > 1:  # the union streams share one transform
        raise ValueError("few_shot_multi: generated (tensor) and image-file datasets cannot be mixed")
    tf = parts[0]["tf"]
    streams = [_stream(k, v, tf) for k, v in merged.items()]
    streams += [_stream(k, items, t) for k, (items, t) in per_dataset.items()]
    bench = CLScenario(streams)
    info = BenchmarkInfo(
        n_classes=len(names), classnames=names, test_dataset=bench.test_stream[0].dataset,
        stream_classnames=stream_names, task_classes=groups, dataset_names=tuple(cfg.datasets),
        experience_classnames=[p["names"] for p in parts],
    )  # fmt: skip
    return with_info(bench, info)
