"""Test-time adaptation streams for TPT/DiffTPT: one experience per test set, or a corruption sequence.

Paper: Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models", NeurIPS 2022
(arXiv 2209.07511); reference azshue/TPT@63ecbace
``tpt_classification.py:main_worker`` (one loader per set, ``batch_size=1`` episodes of 64 views, shuffled) and
``data/datautils.py:AugMixAugmenter`` (re-implemented, no code copied).

Every item is ``(views (N, 3, res, res), label)``: ``views[0]`` the centre crop, then ``N - 1`` random crop/flip
views, with AugMix on the fine-grained sets (``augmentation="auto"``, the reference's family rule). The test
stream has one experience per dataset (``dataset``, or a domain sequence ``datasets``), or, with ``corruptions``,
one experience per (corruption, severity) of ``dataset`` for TPT's continual mode (a ctta extension): corrupted
images are generated on the fly (``ctta.data.corruptions``) or read from ImageNet-C-style folders
(``corruption_root/<corruption>/<severity>/<wnid>/``). Every experience carries ``experience.classnames``.
The views are normalised with OpenAI CLIP's mean/std, recorded as ``benchmark.info.normalization``; strategies map
them to their weights' own statistics when these differ.
The sample order is shuffled by the run seed, as the reference's seeded ``DataLoader(shuffle=True)``. The train
stream is empty (test-time adaptation has no training phase); the strategy's mini-batch is one sample by default.

Deviations: a sample's views come from a generator seeded by ``(seed, experience, sample index)``, not the
global RNGs (so they do not depend on the number of workers); ``max_samples`` truncates each experience
(smoke runs); view generation lives here rather than in the strategy config; the chosen samples (e.g. the
``difftpt_1k`` subset) are exposed as ``benchmark.info.sample_indices`` rather than written to the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from ctta.benchmark_builders import make_benchmark
from ctta.data import catalogue
from ctta.data.avl import as_avl_dataset
from ctta.data.corruptions import IMAGENET_C_ORDER, ON_THE_FLY, corrupt
from ctta.data.tta_datasets import TTASet, ViewsDataset, load_tta_dataset, select_subset
from ctta.data.tta_views import CLIP_MEAN, CLIP_STD, TPTViews
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = ["TestTimeConfig", "build_test_time"]


@dataclass(frozen=True)
class TestTimeConfig:
    """Scenario section ``scenario: {name: test_time, ...}``.

    Attributes:
        dataset: a ``test_time`` name of ``ctta.data.catalogue`` (ImageNet family, fine-grained sets, ``digits``).
        datasets: a domain sequence (one experience per set, in order); overrides ``dataset`` when non-empty.
        root: parent folder of the datasets (each in its catalogue folder: TPT's folder names).
        split_file: CoOp split JSON for a fine-grained set (default: found in the dataset folder).
        n_views: views per sample including the original (TPT 64; DiffTPT's conventional 65).
        augmentation: ``auto`` (AugMix on fine-grained sets only) | ``crop_flip`` | ``augmix``.
        resolution: view side (224 for ViT-B/16; 32 for the tiny smoke CLIP).
        subset: ``full`` | ``difftpt_1k`` | path to a file listing image paths.
        max_samples: keep only the first samples of each experience after shuffling (0 = all).
        shuffle: shuffle the sample order with the run seed.
        corruptions: a continual sequence over ``dataset``: one experience per corruption and severity.
        severities: severities of the corruption sequence (1-5).
        corruption_root: ImageNet-C-style folder; empty = generate corruptions on the fly.
    """

    __test__ = False  # not a pytest test class

    dataset: str = "imagenet_a"
    datasets: tuple[str, ...] = ()
    root: str = "data"
    split_file: str = ""
    n_views: int = 64
    augmentation: str = "auto"
    resolution: int = 224
    subset: str = "full"
    max_samples: int = 0
    shuffle: bool = True
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = (5,)
    corruption_root: str = ""

    def __post_init__(self) -> None:
        for name in self.datasets or (self.dataset,):
            catalogue.entry(name, "test_time")  # unknown names raise, listing the valid ones
        if self.augmentation not in ("auto", "crop_flip", "augmix"):
            raise ValueError(f"augmentation={self.augmentation!r}; valid: auto, crop_flip, augmix")
        if self.corruptions and self.datasets:
            raise ValueError("corruptions apply to `dataset`; leave `datasets` empty for a corruption sequence")
        bad = [c for c in self.corruptions if c not in IMAGENET_C_ORDER]
        if bad:
            raise ValueError(f"unknown corruptions {bad}; valid: {list(IMAGENET_C_ORDER)}")
        if self.n_views < 1 or self.resolution < 8 or self.max_samples < 0:
            raise ValueError("need n_views >= 1, resolution >= 8 and max_samples >= 0")


def _views_for(cfg: TestTimeConfig, family: str) -> TPTViews:
    augmix = cfg.augmentation == "augmix" or (cfg.augmentation == "auto" and family == "fine_grained")
    return TPTViews(cfg.n_views, cfg.resolution, augmix=augmix)


def _order(n: int, cfg: TestTimeConfig, seed: int, salt: int) -> list[int]:
    order = np.random.default_rng([seed, salt]).permutation(n).tolist() if cfg.shuffle else list(range(n))
    return order[: cfg.max_samples] if cfg.max_samples else order


def _experience(tta: TTASet, cfg: TestTimeConfig, seed: int, salt: int, pre=None):
    """An Avalanche dataset of views over the (subset of the) test set in shuffled order, and its sample indices."""
    keep = select_subset(tta, cfg.subset, seed)
    ds = as_avl_dataset(ViewsDataset(tta.dataset, _views_for(cfg, tta.family), seed, pre=pre, salt=salt))
    ids = [keep[i] for i in _order(len(keep), cfg, seed, salt)]
    return ds.subset(ids), ids


class _Corrupt:
    """Centre crop at the view resolution (ImageNet-C's 224 crops), then a corruption drawn per sample."""

    def __init__(self, name: str, severity: int, resolution: int) -> None:
        self.name, self.severity, self.resolution = name, severity, resolution

    def __call__(self, img, rng):
        if not hasattr(img, "size") or callable(img.size):  # a (3, H, W) tensor (digits)
            img = TF.to_pil_image(img.clamp(0, 1))
        img = TF.resize(img, round(self.resolution * 256 / 224), interpolation=InterpolationMode.BILINEAR)
        return corrupt(TF.center_crop(img, self.resolution), self.name, self.severity, rng)


def _corruption_folders(cfg: TestTimeConfig, seed: int):
    """ImageNet-C-style folders ``<corruption_root>/<corruption>/<severity>/<wnid>/`` (ImageNet family only)."""
    if cfg.dataset not in ("imagenet", "imagenet_a", "imagenet_r"):
        raise ValueError(f"corruption_root needs dataset imagenet, imagenet_a or imagenet_r, got {cfg.dataset!r}")
    parts = []
    for k, (name, sev) in enumerate((c, s) for c in cfg.corruptions for s in cfg.severities):
        tta = catalogue.load(f"imagenet_c/{name}/{sev}", "test_time", cfg.corruption_root, label_space=cfg.dataset)
        parts.append((*_experience(tta, cfg, seed, 1000 + k), tta.classnames))
    return parts


def _corruption_parts(cfg: TestTimeConfig, seed: int):
    if cfg.corruption_root:
        return _corruption_folders(cfg, seed)
    missing = [c for c in cfg.corruptions if c not in ON_THE_FLY]
    if missing:
        raise ValueError(
            f"corruptions {missing} cannot be generated on the fly (available: {list(ON_THE_FLY)}); "
            f"download ImageNet-C and set scenario.corruption_root=/path/to/ImageNet-C"
        )
    base = load_tta_dataset(cfg.dataset, cfg.root, cfg.split_file, cfg.resolution)
    parts = []
    for k, (name, sev) in enumerate((c, s) for c in cfg.corruptions for s in cfg.severities):
        pre = _Corrupt(name, sev, cfg.resolution)
        parts.append((*_experience(base, cfg, seed, 1000 + k, pre), base.classnames))
    return parts


@SCENARIOS.register("test_time", config=TestTimeConfig)
def build_test_time(cfg: TestTimeConfig, *, seed: int = 0):
    """Test-time stream: one experience per dataset (or per corruption and severity), items = views."""
    if cfg.corruptions:
        parts = _corruption_parts(cfg, seed)
    else:
        parts = []
        for k, name in enumerate(cfg.datasets or (cfg.dataset,)):
            tta = load_tta_dataset(name, cfg.root, cfg.split_file, cfg.resolution)
            parts.append((*_experience(tta, cfg, seed, k), tta.classnames))
    bench = make_benchmark([], [ds for ds, _, _ in parts])
    for exp, (_, _, names) in zip(bench.test_stream, parts):
        exp.classnames = list(names)
    n_classes = max(len(names) for _, _, names in parts)
    first = next(names for _, _, names in parts if len(names) == n_classes)
    info = BenchmarkInfo(
        n_classes=n_classes,
        classnames=first,
        test_dataset=None,
        experience_classnames=[names for _, _, names in parts],
        sample_indices=[ids for _, ids, _ in parts],  # per experience, in stream order (e.g. the difftpt_1k subset)
        n_views=cfg.n_views,
        normalization=(CLIP_MEAN, CLIP_STD),  # what the views are normalised with (a backbone may expect other)
    )
    return with_info(bench, info)
