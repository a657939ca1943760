"""Run guards: a non-finite loss (or NaN outputs at test time) stops the run with a message naming the step.

Training on with a NaN/Inf loss silently corrupts every later number (Adam turns one Inf gradient into NaN
parameters), so the runner stops at the first one instead and records the run as ``"status": "diverged"``.

Fail-early guards (before data and weights load): ``check_class_count`` (more experiences or tasks than the
dataset has classes, known from the dataset catalogue). Once the stream is built: ``warn_batch_exceeds_experiences``
(a batch size larger than every experience makes each experience one update, silently otherwise).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin

from ctta.data import catalogue
from ctta.runner.outdir import RunError

_SPLIT_KEYS = ("n_experiences", "n_tasks")  # scenario fields that cut the classes into groups


def catalogue_class_count(dataset: str) -> int | None:
    """The class count of catalogue dataset ``dataset`` where the catalogue records it (``DatasetStats``), else None."""
    for kind in catalogue.KINDS:
        try:
            entry = catalogue.entry(dataset, kind)
        except catalogue.UnknownDatasetError:
            continue
        if entry.stats is not None:
            return int(entry.stats.n_classes)
    return None


def check_class_count(cfg: Any) -> None:
    """Raise ``RunError`` (before data loads) when the scenario asks for more experiences (or Si-Blurry tasks) than
    its dataset has classes; silent when the class count is not known without loading the data."""
    params = cfg.scenario.params
    key = next((k for k in _SPLIT_KEYS if isinstance(getattr(params, k, None), int)), None)
    dataset = getattr(params, "dataset", None)
    if key is None or not isinstance(dataset, str) or getattr(params, "classes_per_exp", None):
        return  # explicit classes_per_exp sizes win over n_experiences (checked by the scenario against the data)
    n, classes = int(getattr(params, key)), catalogue_class_count(dataset)
    if classes is not None and n > classes:
        raise RunError(
            f"scenario.{key}={n} but {dataset} has {classes} classes: every {key[2:].rstrip('s')} needs at least one "
            f"class; set scenario.{key} to at most {classes}"
        )


def warn_batch_exceeds_experiences(strategy: Any, stream: Any) -> str | None:
    """Warn (one line, returned) when the strategy's training batch is larger than every experience of ``stream``:
    each experience is then a single update on all its samples, whatever the configured batch size."""
    batch = int(getattr(strategy, "train_mb_size", 0) or 0)
    sizes = [len(exp.dataset) for exp in stream]
    if not sizes or batch <= max(sizes):
        return None
    msg = (
        f"strategy batch size {batch} is larger than every experience (largest: {max(sizes)} samples): each "
        f"experience is one update on all its samples; set strategy.batch_size to at most {max(sizes)} for more"
    )
    warnings.warn(msg, UserWarning, stacklevel=2)
    return msg


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
