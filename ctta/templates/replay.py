"""Replay composition for online updates: each update batch is the incoming batch plus a fresh memory draw.

Reservoir memory over ``(experience, row)`` references as in the ER trainer of moonjunyyy/Si-Blurry@c4024ce
(``methods/er_baseline.py``): ``memory_batch_size`` replayed samples are appended to every update's batch and the
incoming batch enters the memory after its updates.
"""

from __future__ import annotations

import torch

from ctta.data.replay import ReservoirMemory

__all__ = ["ReplayComposition"]


class ReplayComposition:
    """Mixin: a ``ReservoirMemory`` (capacity 0 = rehearsal-free) and the update-batch composition."""

    def init_replay(self, memory_size: int, memory_batch_size: int) -> None:
        if memory_size < 0 or memory_batch_size < 0:
            raise ValueError(f"need memory sizes >= 0, got memory_size={memory_size}, batch={memory_batch_size}")
        self.memory = ReservoirMemory(memory_size)
        self.memory_batch_size = int(memory_batch_size)

    def replay_batch(self, stream: list[torch.Tensor]) -> list[torch.Tensor]:
        """The update batch: the stream batch plus a fresh draw of ``memory_batch_size`` replayed samples."""
        if not len(self.memory) or self.memory_batch_size <= 0:
            return list(stream)
        mem = self.memory.sample(self.memory_batch_size)
        return [torch.cat([b, m.to(b)]) for b, m in zip(stream, mem)]  # (B + M, ...)

    def remember(self, dataset, start: int, n: int, tag: int) -> None:
        """Offer rows ``[start, start + n)`` of ``dataset`` (the incoming batch) to the memory."""
        self.memory.add(dataset, range(start, start + n), tag=tag)
