"""DAM-VP's per-dataset state apart from the training loop: routing/clustering set-up and best-validation prompts.

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138).
Reference: shikiw/DAM-VP@dec5821 ``task_adapting/adapter.py::Adapter.our_method{,_with_head}`` (re-implemented, no
code copied).

``DatasetRouting`` builds a dataset's ``DatasetAdapter``: its global class ids, its read-out (activity-aware
noise order, computed once), head or CLIP text features, and, with ``diversity_adaptive``, the clustering of phi of
its first training images with threshold tau into K prototypes, each with a pad prompt copied from theta_meta.
``BestPrompts`` keeps the best-validation prompts (and the head when asked) of the dataset being trained;
``DatasetRouting.meta_task`` wraps a clustered source dataset for the offline Reptile meta-trainer.
Deviations: none (the strategy module lists the method's).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from ctta.strategies.damvp.clustering import cluster_features, collect_features, default_tau
from ctta.strategies.damvp.config import DAMVPConfig
from ctta.strategies.damvp.model import DAMVPModel, DatasetAdapter, noise_readout_order, readout_indices
from ctta.strategies.damvp.pixel import PadPromptBank, PadPrompter
from ctta.strategies.damvp.reptile import MetaTask
from torch import nn
from torch.utils.data import DataLoader

from ctta.utils import autocast

__all__ = ["BestPrompts", "DatasetRouting", "local_labels"]


class DatasetRouting:
    """Builds each dataset's adapter (classes, read-out / head / text, prototypes and cluster prompts).

    Args:
        cfg: the strategy's config.
        feature, adapt_method: resolved from ``cfg`` (``auto`` filled from the backbone key).
        datasets: per-dataset info ``[{"name", "classes", "classnames"}]`` indexed by experience id (may be empty).
        device, precision: where and in which autocast precision phi runs.
    """

    def __init__(self, cfg: DAMVPConfig, feature: str, adapt_method: str, datasets, device, precision) -> None:
        self.cfg, self.feature, self.adapt_method = cfg, feature, adapt_method
        self.datasets = list(datasets or [])
        self.device, self.precision = device, precision
        self._order: torch.Tensor | None = None  # noise read-out order (computed once)

    def info(self, d: int, key: str):
        """Field ``key`` of dataset ``d``'s info, None when not given."""
        return self.datasets[d].get(key) if d < len(self.datasets) else None

    def classes(self, d: int, experience) -> list[int]:
        """Sorted global class ids of dataset ``d`` (its info, else the experience's classes or targets)."""
        if self.info(d, "classes") is not None:
            return sorted(int(c) for c in self.info(d, "classes"))
        classes = getattr(experience, "classes_in_this_experience", None)
        return sorted(int(c) for c in (classes if classes is not None else set(experience.dataset.targets)))

    def tau(self, d: int) -> float:
        """The clustering threshold: the config's, else the reference's per backbone and dataset."""
        if self.cfg.tau is not None:
            return float(self.cfg.tau)
        return default_tau(self.cfg.backbone_key, self.info(d, "name"))

    def cluster_loader(self, experience) -> DataLoader:
        """The images clustered: the augmented shuffled training loader (reference) or the eval transform."""
        ds = experience.dataset
        if self.cfg.cluster_source == "eval_transform":
            return DataLoader(ds.eval(), batch_size=self.cfg.batch_size, shuffle=False)
        return DataLoader(ds.train(), batch_size=self.cfg.batch_size, shuffle=True)

    def build_adapter(self, model: DAMVPModel, experience, d: int) -> DatasetAdapter:
        """Clustering, prompts from theta_meta, read-out/head/text for dataset ``d`` (registered in ``model``)."""
        if len(experience.dataset) == 0:
            raise ValueError(f"experience {d} has an empty training set: nothing to adapt to")
        classes = self.classes(d, experience)
        text = readout = head = None
        if self.feature == "clip_logits":
            names = self.info(d, "classnames")
            if not names:
                raise ValueError("CLIP DAM-VP needs class names (benchmark.info.experience_classnames)")
            text = model.featurizer.text_features(list(names))
        elif self.adapt_method == "prompt_wo_head":
            readout = readout_indices(self.noise_order(model), len(classes))
        if self.adapt_method == "prompt_w_head":
            head = nn.Linear(model.featurizer.dim or len(classes), len(classes))
        meta = model.meta_prompt  # every prompt starts as a copy of theta_meta (or of its randn init)
        bank = PadPromptBank(1, *geometry(meta), init=meta)
        adapter = DatasetAdapter(bank, torch.zeros(0, 1), classes, readout, head, text).to(self.device)
        model.adapters[str(d)] = adapter
        if self.cfg.diversity_adaptive:
            phi = lambda x: self.phi(model, x, d)  # noqa: E731
            feats = collect_features(phi, self.cluster_loader(experience), self.cfg.max_cluster_samples, self.device)
            clus = cluster_features(feats, self.tau(d))
            adapter.prototypes = clus.prototypes.float().to(self.device)
            adapter.bank = PadPromptBank(clus.n_clusters, *geometry(meta), init=meta).to(self.device)
        return adapter

    def phi(self, model: DAMVPModel, x: torch.Tensor, d: int) -> torch.Tensor:
        """phi of raw images ``x`` for dataset ``d`` (no gradient; float32)."""
        with torch.no_grad(), autocast(self.device, self.precision):
            return model.phi(x, d).float()

    def noise_order(self, model: DAMVPModel) -> torch.Tensor:
        """The activity-aware read-out order of phi on noise images (computed once)."""
        if self._order is None:
            fz, cfg = model.featurizer, self.cfg
            self._order = noise_readout_order(
                lambda x: self._featurize(model, x), fz.image_size, cfg.seed, cfg.n_noise, 64, self.device
            )
        return self._order

    def _featurize(self, model: DAMVPModel, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.precision):
            return model.featurizer(x).float()

    def meta_task(self, model: DAMVPModel, experience) -> MetaTask:
        """Cluster one source dataset and wrap its read-out/head as a ``MetaTask`` (its adapter is not kept)."""
        d = int(experience.current_experience)
        ad = self.build_adapter(model, experience, d)
        del model.adapters[str(d)]
        fz, text = model.featurizer, ad.text
        loader = DataLoader(experience.dataset.train(), batch_size=self.cfg.batch_size, shuffle=True)
        return MetaTask(
            f"experience{d}", _LocalLabels(loader, ad.classes), ad.prototypes,
            features_fn=lambda x: fz(x, text), logits_fn=lambda x: ad.logits(fz(x, text)), head=ad.head,
        )  # fmt: skip


class BestPrompts:
    """The best-validation prompts (and head, with ``with_head``) of the dataset being trained.

    Args:
        with_head: snapshot the head with the prompts (``snapshot_head_with_best_val``).
    """

    def __init__(self, with_head: bool) -> None:
        self.with_head = with_head
        self.best_val, self.best = -math.inf, None

    def offer(self, ad: DatasetAdapter, val_acc: float) -> None:
        """Keep a deep copy of ``ad``'s prompts (and head) when ``val_acc`` is strictly better."""
        if val_acc > self.best_val:
            self.best_val, self.best = val_acc, self.snapshot(ad, self.with_head)

    def restore(self, ad: DatasetAdapter) -> None:
        """The best-validation prompts (+ head if snapshotted) back into ``ad`` (nothing if none was kept)."""
        if self.best is not None:
            load(ad, self.best)

    def evaluate_best(self, ad: DatasetAdapter, accuracy: Callable[[], float]) -> float:
        """``accuracy()`` with the best-val prompts and the current head (reference); the training state is
        restored afterwards."""
        if self.best is None:
            return accuracy()
        current = self.snapshot(ad, with_head=True)
        load(ad, self.best)
        acc = accuracy()
        load(ad, current)
        return acc

    @staticmethod
    def snapshot(ad: DatasetAdapter, with_head: bool) -> dict:
        snap = {"bank": copy.deepcopy(ad.bank.state_dict())}
        if with_head and ad.head is not None:
            snap["head"] = copy.deepcopy(ad.head.state_dict())
        return snap


def load(ad: DatasetAdapter, snap: dict) -> None:
    """A ``BestPrompts.snapshot`` back into ``ad``."""
    ad.bank.load_state_dict(snap["bank"])
    if "head" in snap and ad.head is not None:
        ad.head.load_state_dict(snap["head"])


def local_labels(y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Global class ids -> positions in the dataset's sorted ``classes`` (raises for a foreign label)."""
    classes = classes.to(y.device)
    pos = torch.searchsorted(classes, y)
    if (pos >= len(classes)).any() or (classes[pos.clamp_max(len(classes) - 1)] != y).any():
        raise ValueError(
            f"labels {sorted(set(y.tolist()) - set(classes.tolist()))[:10]} are not classes of this dataset"
        )
    return pos


class _LocalLabels:
    """Batches of an Avalanche loader with global labels mapped to the dataset's local label space."""

    def __init__(self, loader: DataLoader, classes: torch.Tensor) -> None:
        self.loader, self.classes = loader, classes.cpu()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for b in self.loader:
            yield b[0], local_labels(b[1], self.classes)


def geometry(p: PadPrompter) -> tuple[int, int, int]:
    """``(image_size, pad_width, channels)`` of a pad prompt."""
    return p.image_size, p.pad_width, p.channels
