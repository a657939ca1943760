"""Plain state-dict checkpoints for online continual learning (never Avalanche's dill checkpointing).

Avalanche 0.6's ``save_checkpoint`` pickles the whole strategy with dill and fails as soon as it holds a torch
optimiser on the current stack (spec avalanche.md §8). A ctta checkpoint holds only tensors and plain data:
trainable parameters and module buffers (prompt-selection counts, ...), the optimiser state, label bookkeeping,
the metric history, the anytime-evaluation schedule, the stream position and the RNG states.

Files are ``ckpt-<samples>.pt`` written atomically (temporary file + ``os.replace``) with a SHA-256 sidecar; the
newest ``keep`` are kept. ``load_latest`` verifies the checksum and falls back to the previous checkpoint when the
newest is truncated or corrupt.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin

from ctta.utils import rng_state, set_rng_state  # noqa: F401  (re-exported for checkpoint users)

CKPT_GLOB = "ckpt-*.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, state: dict[str, Any], step: int, keep: int = 2) -> Path:
    """Atomically write ``state`` as ``ckpt-<step>.pt`` (+ ``.sha256``) and prune to the newest ``keep``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt-{step:012d}.pt"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".ckpt-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        digest = _sha256(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    side = path.with_suffix(".sha256")
    side.with_suffix(".tmp").write_text(digest + "\n")
    os.replace(side.with_suffix(".tmp"), side)
    for old in sorted(d.glob(CKPT_GLOB))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def load_latest(directory: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that verifies and loads, or None; broken newer ones are skipped with a warning."""
    for path in sorted(Path(directory).glob(CKPT_GLOB), reverse=True):
        side = path.with_suffix(".sha256")
        try:
            if not side.is_file() or side.read_text().strip() != _sha256(path):
                raise ValueError("checksum mismatch (truncated or partially written)")
            return torch.load(path, map_location="cpu", weights_only=False), path
        except Exception as e:  # noqa: BLE001 - any unreadable file falls back to the previous one
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {e}", stacklevel=2)
    return None


class CheckpointPlugin(SupervisedPlugin, supports_distributed=True):
    """Save ``strategy.checkpoint_state()`` every ``every`` stream samples and at the end of each experience."""

    def __init__(self, directory: str | Path, every: int, keep: int = 2) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"checkpoint every must be positive, got {every}")
        self.directory, self.every, self.keep = Path(directory), int(every), int(keep)
        self.next_at = self.every

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if strategy.seen_samples >= self.next_at:
            self.next_at = (strategy.seen_samples // self.every + 1) * self.every
            save_checkpoint(self.directory, strategy.checkpoint_state(), strategy.seen_samples, self.keep)

    def after_training_exp(self, strategy, **kwargs) -> None:
        save_checkpoint(self.directory, strategy.checkpoint_state(), strategy.seen_samples, self.keep)
