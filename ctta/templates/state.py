"""Resumable state of an online strategy: plain state dicts, exact resume mid-experience.

A checkpoint holds the trainable parameters and buffers, the optimiser, the label exposure, the stream position,
plugin and metric states, the replay memory and the RNG. Resuming mid-experience skips the incoming batches already
consumed and sets the RNG again once the experience's data iterator has drawn its seed. The checkpoint files and
the plugin that writes them are ``ctta.runner.checkpoint`` (``CheckpointPlugin``, ``load_latest``).
"""

from __future__ import annotations

from typing import Any

import torch

from ctta.utils import rng_state, set_rng_state

__all__ = ["ResumableState"]


class ResumableState:
    """Mixin for ``OnlineCLTemplate``: ``checkpoint_state()`` / ``load_checkpoint_state()``."""

    _skip_batches = 0  # set when resuming mid-experience
    _resume_rng: dict[str, Any] | None = None

    def extra_state(self) -> dict[str, Any]:
        """Strategy-specific state to checkpoint; override with ``load_extra_state``."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: trainable params + buffers, optimiser, bookkeeping, metrics, RNG."""
        m = self.model
        model_state = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
        model_state |= {n: b.detach().clone() for n, b in m.named_buffers()}
        return {
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "exposed": list(self.exposed),
            "seen_samples": self.seen_samples,
            "position": {"exp_index": self.exp_index, "batches_done": self.batches_done, "exp_done": self.exp_done},
            "plugins": {type(p).__name__: p.state_dict() for p in self.plugins if hasattr(p, "state_dict")},
            "metrics": {type(x).__name__: x.state_dict() for x in self.evaluator.metrics if hasattr(x, "state_dict")},
            "memory": self.memory.state_dict(),
            "extra": self.extra_state(),
            "rng": rng_state(),
        }

    def load_checkpoint_state(self, state: dict[str, Any], train_stream=None) -> int:
        """Restore a ``checkpoint_state``; returns the index of the experience to (re)enter.

        Args:
            state: what ``checkpoint_state`` returned.
            train_stream: the run's training stream (needed to re-attach a replay memory's samples: the memory
                stores ``(experience index, row)`` references).
        """
        named = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        with torch.no_grad():
            for n, v in state["model"].items():
                named[n].copy_(v)
        self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.exposed = []
        self.class_to_pos.fill_(-1)
        self.expose(torch.tensor(state["exposed"], dtype=torch.long))
        self.seen_samples = int(state["seen_samples"])
        for p in self.plugins:
            if type(p).__name__ in state["plugins"]:
                p.load_state_dict(state["plugins"][type(p).__name__])
        for x in self.evaluator.metrics:
            if type(x).__name__ in state["metrics"]:
                x.load_state_dict(state["metrics"][type(x).__name__])
        mem = state.get("memory")
        if mem is not None and (mem["items"] or self.memory.capacity):
            if mem["items"] and train_stream is None:
                raise ValueError("this checkpoint holds a replay memory: pass the training stream to load it")
            self.memory.load_state_dict(mem, lambda exp_index: train_stream[exp_index].dataset)
        self.load_extra_state(state["extra"])
        set_rng_state(state["rng"])
        pos = state["position"]
        if pos["exp_done"]:
            self.exp_index = pos["exp_index"]
            return pos["exp_index"] + 1
        self.exp_index, self._skip_batches = pos["exp_index"] - 1, pos["batches_done"]
        self._resume_rng = state["rng"]  # set again after the experience's data iterator draws its seed
        return pos["exp_index"]

    def _restore_resume_rng(self) -> None:
        """Resuming mid-experience: the checkpoint's RNG state is set once the data iterator exists, because
        creating it draws a seed from the global RNG (it had been drawn before the checkpoint was taken)."""
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
