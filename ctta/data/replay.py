"""Reservoir replay memory for online continual learning (the ER baseline of Si-Blurry, Moon et al., ICCV 2023).

Reference: moonjunyyy/Si-Blurry@c4024ce ``utils/memory.py`` and ``methods/er_baseline.py::update_memory``
(i-Blurry lineage; re-implemented, no code copied). After the updates of each incoming batch every stream
sample goes through the reservoir rule (``seen += 1``; append while not full, else draw ``j ~ U[0, seen)`` and
replace slot ``j`` if ``j < capacity``). Each optimiser update draws ``min(n, len(memory))`` distinct slots
(``randperm``) whose samples are re-read from their dataset and appended to the stream batch; the augmentation
then applies to the whole batch.

Like the reference, the memory holds dataset references (``(dataset, index)``), not images, and labels come back
as stored in the dataset (original class ids; never remapped twice). Deviations: draws use the global torch RNG
only (no DataLoader workers, no per-sample draw while the memory is disabled).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ReservoirMemory"]


class ReservoirMemory:
    """Reservoir memory of ``(dataset, index)`` references.

    Args:
        capacity: maximum number of stored samples (0 disables the memory; ``add`` then only counts).

    Attributes:
        seen: number of stream samples offered to the memory so far.
        items: the stored ``(dataset, index)`` references, in slot order.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"memory capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.items: list[tuple[Any, int]] = []
        self.seen = 0
        self._tags: dict[int, Any] = {}  # id(dataset) -> tag naming it in ``state_dict`` (e.g. experience index)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, dataset, indices, tag: Any = None) -> None:
        """Offer ``dataset[i]`` for each ``i`` in ``indices`` (stream order) to the reservoir.

        ``tag`` names ``dataset`` in ``state_dict`` (a checkpoint stores ``(tag, index)`` pairs, not images).
        """
        if tag is not None:
            self._tags[id(dataset)] = tag
        for i in indices:
            self.seen += 1
            if self.capacity == 0:
                continue
            if len(self.items) < self.capacity:
                self.items.append((dataset, int(i)))
            else:
                j = int(torch.randint(0, self.seen, ()))
                if j < self.capacity:
                    self.items[j] = (dataset, int(i))

    def state_dict(self) -> dict[str, Any]:
        """``{"capacity", "seen", "items": [(tag, index), ...]}`` (plain data; datasets named by their ``add`` tag)."""
        untagged = {id(ds) for ds, _ in self.items} - set(self._tags)
        if untagged:
            raise ValueError("memory items were added without a tag; pass add(..., tag=...) to checkpoint them")
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "items": [(self._tags[id(ds)], i) for ds, i in self.items],
        }

    def load_state_dict(self, state: dict[str, Any], datasets) -> None:
        """Restore ``state_dict()``; ``datasets(tag)`` returns the dataset an item's tag names."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"checkpoint memory capacity {state['capacity']} != configured {self.capacity}")
        resolved: dict[Any, Any] = {}
        items = []
        for tag, i in state["items"]:
            if tag not in resolved:
                resolved[tag] = datasets(tag)
                self._tags[id(resolved[tag])] = tag
            items.append((resolved[tag], int(i)))
        self.items, self.seen = items, int(state["seen"])

    def sample(self, n: int) -> list[torch.Tensor]:
        """``min(n, len(self))`` distinct stored samples, collated like a mini-batch ``[x (M, ...), y (M,), ...]``."""
        if not self.items or n <= 0:
            raise ValueError(f"cannot sample {n} from a memory holding {len(self.items)} samples")
        pick = torch.randperm(len(self.items))[:n].tolist()
        rows = [self.items[k][0][self.items[k][1]] for k in pick]
        return [torch.stack([torch.as_tensor(r[c]) for r in rows]) for c in range(len(rows[0]))]

    def labels(self) -> list[int]:
        """Stored labels (read from the datasets' ``targets``), in slot order."""
        return [int(ds.targets[i]) for ds, i in self.items]
