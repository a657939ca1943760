"""Unsupervised domain adaptation benchmark: a labelled source domain, an unlabelled target domain, the target test set.

Protocol: the UDA setting of AD-CLIP (Singha et al., ICCVW 2023, mainaksingha01/AD-CLIP@c82d861, Dassl's
``DomainAdaptation`` data manager: labelled source train, unlabelled target train, target test) and the transductive
setting of TFUP (Long et al., 2024, wlb12345/TFUP@d95d4d3 ``main.py``: the whole unlabelled target domain is
adapted on and evaluated; DomainNet adapts on its target train split and evaluates its test split). Datasets come
from the catalogue (kind ``domain_adaptation``: Office-Home, Office-31, VisDA-2017, DomainNet, ``digits_shift``).
Re-implemented; no code copied.

Streams (Avalanche ``CLScenario``; one experience each):

* ``train``: the source domain's train split, labelled (train transforms: random resized crop + flip);
* ``target``: the target domain's train split, **unlabelled**: every target is -1 (the true labels exist only in the
  ``test`` stream), so no strategy can read them; its train transforms give the augmented (strong) views, its eval
  transforms the centre crops;
* ``test``: the target domain's test split with its labels (Office-Home, Office-31, VisDA-2017: the same images as
  ``target``).

``bench.info`` names the classes (shared by both domains). Deviations: ``max_items`` keeps an evenly spaced subset
of every split (smoke runs).
"""

from __future__ import annotations

from dataclasses import dataclass

from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from ctta.scenarios.few_shot import _avl, _transforms, classnames_of

from ctta.data import catalogue
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import BenchmarkInfo, with_info

__all__ = ["DomainAdaptationConfig", "UNLABELLED", "build_domain_adaptation", "hide_labels"]

UNLABELLED = -1  # the target of every item of the unlabelled target stream


@dataclass(frozen=True)
class DomainAdaptationConfig:
    """Scenario section ``scenario: {name: domain_adaptation, ...}`` (see the module docstring).

    Attributes:
        dataset: a ``domain_adaptation`` catalogue name (``office_home``, ``office31``, ``visda17``, ``domainnet``,
            ``digits_shift``).
        source, target: domain names (``office_home``: art, clipart, product, real_world; ``office31``: amazon,
            dslr, webcam; ``visda17``: synthetic, real; ``domainnet``: clipart, infograph, painting, quickdraw, real,
            sketch; ``digits_shift``: clean or a corruption name).
        root: parent folder of the datasets.
        img_size: image side.
        max_items: keep N evenly spaced items of every split (0: all).
    """

    dataset: str = "office_home"
    source: str = "art"
    target: str = "clipart"
    root: str = "data"
    img_size: int = 224
    max_items: int = 0

    def __post_init__(self) -> None:
        catalogue.entry(self.dataset, "domain_adaptation")  # unknown names raise, listing the valid ones
        if self.source == self.target:
            raise ValueError(f"source and target are the same domain {self.source!r}")
        if self.max_items < 0:
            raise ValueError("max_items must be >= 0")


def hide_labels(items) -> list[tuple]:
    """``(image, UNLABELLED, "")`` for every item: the unlabelled view of a split (no label, no class name)."""
    return [(it[0], UNLABELLED, "") for it in items]


def _subset(items: list, n: int) -> list:
    if not n or n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _domain(cfg: DomainAdaptationConfig, domain: str) -> dict[str, list]:
    splits = catalogue.load(cfg.dataset, "domain_adaptation", cfg.root, domain=domain, img_size=cfg.img_size)
    return {k: _subset(v, cfg.max_items) for k, v in splits.items()}


@SCENARIOS.register("domain_adaptation", config=DomainAdaptationConfig)
def build_domain_adaptation(cfg: DomainAdaptationConfig, *, seed: int = 1) -> CLScenario:
    """The UDA benchmark of ``cfg`` (deterministic: ``seed`` is accepted for the runner's contract)."""
    src, tgt = _domain(cfg, cfg.source), _domain(cfg, cfg.target)
    names = classnames_of(src["train"])
    if classnames_of(tgt["test"]) != names:
        raise ValueError(f"{cfg.dataset}: domains {cfg.source!r} and {cfg.target!r} do not share their classes")
    tf = _transforms(cfg.img_size, catalogue.entry(cfg.dataset, "domain_adaptation").bundled)
    parts = {"train": _avl(src["train"], tf), "target": _avl(hide_labels(tgt["train"]), tf),
             "test": _avl(tgt["test"], tf)}  # fmt: skip
    streams = [EagerCLStream(k, [DatasetExperience(dataset=v, current_experience=0)]) for k, v in parts.items()]
    bench = CLScenario(streams)
    info = BenchmarkInfo(n_classes=len(names), classnames=names, test_dataset=bench.test_stream[0].dataset)
    return with_info(bench, info)
