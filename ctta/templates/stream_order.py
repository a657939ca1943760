"""The order in which an online strategy reads a training experience.

An online method learns from its stream in the order the stream arrives, so the order must mean something. It does
for ctta's scenarios (Si-Blurry's stream, the class-incremental stream in the dataset's native order: the protocol)
and for Avalanche's online sub-experiences (``split_online_stream``, which shuffles each experience before cutting
it, by default). It does not for a whole experience of a plain Avalanche benchmark: Avalanche's generators
(``nc_benchmark``, ``class_incremental_benchmark``, ...) store an experience's samples grouped by class, and
Avalanche's ``train()`` shuffles them (``make_train_dataloader(shuffle=True)``). Read in stored order, a two-class
experience is all of one class and then all of the other, and the model ends up predicting the last class.

So an experience stored class by class (its labels form one block per class) that is not an ordered stream is read
in a random order drawn once per experience (Avalanche's default, made reproducible: the generator is seeded from
``torch.initial_seed()`` and the experience index, and does not touch the global RNG, so a resumed run reads the
same order; under torchrun every rank reads rank 0's order). Any other experience is read as stored;
``train(exp, shuffle=False)`` always keeps the stored order. The replay memory stores rows of the experience's own
dataset, so a checkpoint names the same samples either way.
"""

from __future__ import annotations

from typing import Any

import torch

from ctta import distributed
from ctta.templates.benchmark_info import origin_info

__all__ = ["StreamOrder", "is_class_blocked", "is_ordered_stream", "stream_rows"]


def is_ordered_stream(exp) -> bool:
    """True when ``exp``'s stored order is a stream order: a ctta scenario's experience, or an online
    sub-experience (``split_online_stream``)."""
    if origin_info(exp) is not None:
        return True
    try:
        return getattr(exp, "origin_experience", None) is not None
    except Exception:  # Avalanche raises for masked attributes
        return False


def is_class_blocked(dataset) -> bool:
    """True when ``dataset``'s labels, in stored order, hold two or more classes, each in one contiguous block."""
    try:
        t = torch.as_tensor(list(dataset.targets))
    except (AttributeError, TypeError, ValueError):  # no single-label targets
        return False
    if t.ndim != 1 or len(t) < 2:
        return False
    return int((t[1:] != t[:-1]).sum()) == len(torch.unique(t)) - 1 > 0


def stream_rows(exp, index: int, shuffle: bool | None = None) -> torch.Tensor | None:
    """Rows of ``exp.dataset`` in reading order, or None for the stored order.

    Args:
        exp: the training experience.
        index: the experience's position in this strategy's training (seeds the order).
        shuffle: ``train()``'s ``shuffle`` argument: False = stored order; None = a random order for an experience
            stored class by class that is not an ordered stream, else the stored order.
    """
    if shuffle is False or is_ordered_stream(exp) or not is_class_blocked(exp.dataset):
        return None
    g = torch.Generator().manual_seed((torch.initial_seed() + 1_000_003 * (index + 1)) % 2**63)
    rows = torch.randperm(len(exp.dataset), generator=g)
    return distributed.broadcast_object(rows)  # under torchrun: rank 0's order on every rank


class StreamOrder:
    """Mixin of ``OnlineCLTemplate``: the experience is read in ``stream_rows`` order, and the replay memory
    remembers the rows of ``experience.dataset`` that were read."""

    stream_order: torch.Tensor | None = None  # rows of the current experience in reading order (None: stored)

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        super().train_dataset_adaptation(**kwargs)
        self.stream_order = stream_rows(self.experience, max(self.exp_index, 0), kwargs.get("shuffle"))
        if self.stream_order is not None:
            self.adapted_dataset = self.adapted_dataset.subset(self.stream_order.tolist())

    def remember(self, dataset, start: int, n: int, tag: int) -> None:
        """Offer the incoming batch (reading positions ``[start, start + n)``) to the replay memory."""
        if self.stream_order is None or dataset is not self.experience.dataset:
            return super().remember(dataset, start, n, tag)
        self.memory.add(dataset, self.stream_order[start : start + n].tolist(), tag=tag)
