"""Transductive test-time adaptation inside Avalanche's ``eval()``: adapt on the whole unlabelled target set of an
experience first, then predict its mini-batches.

The per-sample template (``ctta.templates.test_time.TestTimeTemplate``, TPT) adapts on each test mini-batch alone;
transductive methods (TFUP / TFUP-T, Long et al., 2024, wlb12345/TFUP@d95d4d3) need every unlabelled target image
before the first prediction. ``TransductiveTemplate`` buffers them: before an experience is evaluated,
``fit_target(images)`` receives the experience's unlabelled target set, then ``predict(mb_x)`` scores each
mini-batch without gradients.

The target set is the benchmark's ``target`` stream when it has one (``scenarios/domain_adaptation``: its items carry
the label -1; DomainNet: the target train split), else the evaluated experience's own images. Either way the strategy
sees it only through ``UnlabelledImages``, which returns ``(image, index)`` and never reads an item's label or the
dataset's ``targets``. Episodic mode (default) restores the initial trainable state after each experience (each
target domain is adapted from the same start); continual mode keeps it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ctta.templates.benchmark_info import _attr, origin_benchmark, stream_dataset
from ctta.templates.test_time import TestTimeTemplate

__all__ = ["TARGET_STREAM", "TransductiveTemplate", "UnlabelledImages"]

TARGET_STREAM = "target"  # the stream holding the unlabelled target set (scenarios/domain_adaptation)


class UnlabelledImages(Dataset):
    """The images of ``dataset`` as ``(image, index)`` pairs: an item's label and ``dataset.targets`` are never read.

    Args:
        dataset: a dataset of ``(image, label, ...)`` items (an Avalanche dataset: its transform group as given).
        augmented: a second view of the same items with training (strong) transforms, else None.
    """

    def __init__(self, dataset, augmented=None) -> None:
        self.dataset, self.augmented = dataset, augmented

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i][0], i

    def strong(self) -> UnlabelledImages:
        """The same images under the training transforms (the augmented view), else the plain ones."""
        return UnlabelledImages(self.augmented if self.augmented is not None else self.dataset)

    def loader(self, batch_size: int, shuffle: bool = False, generator=None) -> DataLoader:
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=generator)


def target_images(exp) -> UnlabelledImages:
    """The unlabelled target set of ``exp``: its benchmark's ``target`` stream if any, else ``exp``'s own images."""
    bench = origin_benchmark(exp)
    streams = _attr(bench, "streams") or {}
    ds = stream_dataset(streams[TARGET_STREAM]) if TARGET_STREAM in streams else exp.dataset
    plain = ds.eval() if hasattr(ds, "eval") else ds
    strong = ds.train() if hasattr(ds, "train") else None
    return UnlabelledImages(plain, strong)


class TransductiveTemplate(TestTimeTemplate):
    """Transductive adaptation: ``fit_target(images)`` on the experience's unlabelled target set, then
    ``predict(x)`` per mini-batch (strategies implement both). ``episodic`` restores the initial trainable state
    after every experience."""

    distributed_ok = False  # every rank would need the whole target set; not sharded

    def fit_target(self, images: UnlabelledImages) -> None:
        """Adapt on the whole unlabelled target set (runs under ``enable_grad``). Implemented by strategies."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit_target()")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits of a mini-batch after ``fit_target`` (runs under ``no_grad``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict()")

    def adapt(self, images: UnlabelledImages) -> None:
        """``fit_target(images)`` with gradients enabled and the model in train mode, then back to eval mode."""
        self.model.train()
        try:
            with torch.enable_grad():
                self.fit_target(images)
        finally:
            self.model.eval()

    def _before_eval_exp(self, **kwargs: Any) -> None:
        super()._before_eval_exp(**kwargs)
        self.adapt(target_images(self.experience))

    def forward_local(self) -> torch.Tensor:
        with torch.no_grad():
            return self.predict(self.mb_x).detach().float()

    def _after_eval_exp(self, **kwargs: Any) -> None:
        super()._after_eval_exp(**kwargs)
        if self.episodic:
            self.reset()
