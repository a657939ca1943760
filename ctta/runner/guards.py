"""Run guards: a non-finite loss (or NaN outputs at test time) stops the run with a message naming the step.

Training on with a NaN/Inf loss silently corrupts every later number (Adam turns one Inf gradient into NaN
parameters), so the runner stops at the first one instead and records the run as ``"status": "diverged"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin


class DivergenceError(RuntimeError):
    """Training (or test-time adaptation) produced a non-finite loss or NaN outputs; ``where`` names the step."""

    def __init__(self, message: str, **where: Any) -> None:
        super().__init__(message)
        self.where = where

    def as_dict(self) -> dict[str, Any]:
        return {"message": str(self), **self.where}


def _value(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        return float(x.detach().float().sum()) if x.numel() else 0.0
    return float(x)


HINT = "lower the learning rate (strategy.lr) or check the inputs; the run stopped before the update"


class DivergenceGuard(SupervisedPlugin, supports_distributed=True):
    """Raise ``DivergenceError`` after a backward pass whose loss is NaN/Inf, or an evaluation batch with NaN outputs.

    Training: checked in ``after_backward``, before the optimiser applies the update. Evaluation (test-time methods
    adapt there): NaN outputs (``-inf`` logit masks are legitimate, NaN never is).
    """

    def __init__(self) -> None:
        super().__init__()
        self._eval_batches = 0

    def after_backward(self, strategy, **kwargs) -> None:
        loss = getattr(strategy, "loss", None)
        if loss is None:
            return
        value = _value(loss)
        if math.isfinite(value):
            return
        clock = strategy.clock
        exp, it = int(clock.train_exp_counter), int(clock.train_exp_iterations) + 1
        samples = int(getattr(strategy, "seen_samples", 0) or 0)
        raise DivergenceError(
            f"non-finite loss ({value}) at experience {exp}, iteration {it} ({samples} stream samples done); {HINT}",
            phase="train", experience=exp, iteration=it, samples=samples, loss=str(value),
        )  # fmt: skip

    def before_eval_exp(self, strategy, **kwargs) -> None:
        self._eval_batches = 0

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        self._eval_batches += 1
        out = getattr(strategy, "mb_output", None)
        if not isinstance(out, torch.Tensor) or not torch.isnan(out.detach()).any():
            return
        exp = getattr(strategy.experience, "current_experience", None)
        raise DivergenceError(
            f"NaN outputs at evaluation of experience {exp}, mini-batch {self._eval_batches}; "
            f"lower the learning rate (strategy.lr) or check the inputs",
            phase="eval", experience=exp, iteration=self._eval_batches,
        )  # fmt: skip
