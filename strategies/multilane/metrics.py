"""Multi-label class-incremental (MLCIL) and task-averaged CIL metrics, as Avalanche PluginMetrics.

MULTI-LANE (De Min et al., CoLLAs 2024, arXiv 2405.15633); reference tdemin16/multi-lane@5ee982c,
``engine.py::evaluate_till_now_multi`` / ``evaluate_till_now`` and ``utils.py`` (re-implemented, no code copied).
Avalanche 0.6 has no mAP, CF1 or OF1 and its accuracy argmaxes multi-hot targets.

Multi-label (targets ``(B, C)`` multi-hot), computed over the **seen-class columns** of the evaluated experience
(``exp.seen_class_mask``, else ``exp.classes_seen_so_far``, else all columns):

* mAP: macro average precision of ``sigmoid(logits)``. ``no_positive="skip"`` (default, the pinned
  torchmetrics 0.11.2 semantics of the reference) drops classes without a positive from the mean;
  ``"zero"`` scores them 0 (torchmetrics >= 1.x).
* amAP: mean of the mAP values obtained after tasks 0..t (an evaluation counts for task t when the evaluated
  experience is the one just trained: ``exp.current_experience == clock.train_exp_counter - 1``).
* CF1 / OF1: per-class (mean) and overall (pooled) F1 with prediction ``sigmoid(logit) > 0.8``, zero division -> 0.

Single-label CIL (targets ``(B,)``): accuracy matrix ``R[i][j]`` (top-1 on test experience ``j`` after ``i``
trained experiences); the unweighted mean over seen tasks, forgetting (mean over past tasks of the best accuracy
so far minus the current one) and backward transfer (mean over past tasks of current minus just-trained accuracy).

All values are fractions in [0, 1] like Avalanche's accuracy (the paper reports them x100).
Deviations: none in the definitions; the reference's float64/float32 casts are not reproduced (fp32 here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

from ctta.metrics import SummaryMetric

NO_POSITIVE = ("skip", "zero")
THRESHOLD = 0.8  # reference: sigmoid(logits) > 0.8


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Average precision of one class (sklearn / torchmetrics step-wise definition, ties grouped).

    Args:
        scores: ``(N,)`` scores (higher = more positive).
        target: ``(N,)`` binary targets.

    Returns:
        AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds; NaN when there is no positive.
    """
    scores, target = scores.double().flatten(), target.double().flatten()
    if scores.shape != target.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} differ in shape")
    n_pos = float(target.sum())
    if n_pos == 0:
        return math.nan
    order = torch.argsort(scores, descending=True, stable=True)
    s, t = scores[order], target[order]
    last = torch.nonzero(torch.diff(s) != 0).flatten()  # last index of each run of tied scores
    idx = torch.cat([last, torch.tensor([len(s) - 1])])
    tps = torch.cumsum(t, 0)[idx]
    precision = tps / (idx + 1).double()
    recall = tps / n_pos
    d_recall = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((d_recall * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor, no_positive: str = "skip") -> float:
    """Macro mAP over the columns of ``(N, C)`` scores and multi-hot targets.

    Args:
        scores: ``(N, C)`` scores (e.g. ``sigmoid(logits)``).
        targets: ``(N, C)`` multi-hot targets.
        no_positive: ``"skip"`` drops classes without positives (reference); ``"zero"`` counts them as AP 0.

    Returns:
        the mean AP (NaN if ``"skip"`` leaves no class).
    """
    if no_positive not in NO_POSITIVE:
        raise ValueError(f"no_positive={no_positive!r}; valid: {list(NO_POSITIVE)}")
    _check_pair(scores, targets)
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    if no_positive == "zero":
        aps = [0.0 if math.isnan(a) else a for a in aps]
    aps = [a for a in aps if not math.isnan(a)]
    return float(sum(aps) / len(aps)) if aps else math.nan


def f1_scores(scores: torch.Tensor, targets: torch.Tensor, threshold: float = THRESHOLD) -> tuple[float, float]:
    """(CF1, OF1) with prediction ``scores > threshold``; zero division gives 0.

    Args:
        scores: ``(N, C)`` probabilities.
        targets: ``(N, C)`` multi-hot targets.
        threshold: strict decision threshold (reference 0.8 on sigmoid outputs).
    """
    _check_pair(scores, targets)
    pred, tgt = (scores > threshold).double(), (targets > 0.5).double()
    tp, n_pred, n_true = (pred * tgt).sum(0), pred.sum(0), tgt.sum(0)
    cf1 = _f1(tp, n_pred, n_true).mean()
    of1 = _f1(tp.sum(), n_pred.sum(), n_true.sum())
    return float(cf1), float(of1)


def _f1(tp: torch.Tensor, n_pred: torch.Tensor, n_true: torch.Tensor) -> torch.Tensor:
    p = torch.where(n_pred > 0, tp / n_pred.clamp_min(1), torch.zeros_like(tp))
    r = torch.where(n_true > 0, tp / n_true.clamp_min(1), torch.zeros_like(tp))
    return torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), torch.zeros_like(p))


def _check_pair(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"expected (N, C) scores and multi-hot targets of the same shape, got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )


def seen_columns(exp: Any, n_classes: int) -> torch.Tensor:
    """Bool ``(C,)`` mask of the seen classes of an evaluated experience (all columns if unknown)."""
    mask = getattr(exp, "seen_class_mask", None)
    if mask is not None:
        return torch.as_tensor(mask, dtype=torch.bool).cpu()
    seen = getattr(exp, "classes_seen_so_far", None)
    out = torch.zeros(n_classes, dtype=torch.bool) if seen is not None else torch.ones(n_classes, dtype=torch.bool)
    if seen is not None:
        out[[int(c) for c in seen if int(c) < n_classes]] = True
    return out


class MultiLabelMetrics(SummaryMetric, PluginMetric[dict]):
    """mAP, amAP, CF1 and OF1 of every evaluated experience with multi-hot targets.

    Emits ``mAP``, ``amAP``, ``CF1``, ``OF1`` (``<name>/eval_phase/<stream>/Exp<id>``) after each evaluated
    experience; mini-batches with 1-D targets are ignored (single-label runs use ``TaskAveragedAccuracy``).
    """

    def __init__(self, no_positive: str = "skip", threshold: float = THRESHOLD) -> None:
        super().__init__()
        if no_positive not in NO_POSITIVE:
            raise ValueError(f"no_positive={no_positive!r}; valid: {list(NO_POSITIVE)}")
        self.no_positive, self.threshold = no_positive, float(threshold)
        self.map_after_task: dict[int, float] = {}  # trained-task index t -> mAP after task t
        self.last: dict[str, float] = {}
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def reset(self) -> None:
        self._logits, self._targets = [], []

    def result(self) -> dict[str, float]:
        return dict(self.last)

    def before_eval_exp(self, strategy: Any) -> None:
        self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        y = strategy.mb_y
        if y.ndim != 2:
            return
        self._logits.append(strategy.mb_output.detach().float().cpu())
        self._targets.append(y.detach().float().cpu())

    def compute(self, logits: torch.Tensor, targets: torch.Tensor, cols: torch.Tensor) -> dict[str, float]:
        """mAP / CF1 / OF1 of ``(N, C)`` logits vs targets restricted to the bool ``(C,)`` columns ``cols``."""
        scores = torch.sigmoid(logits[:, cols])  # (N, C_seen)
        tgt = targets[:, cols]
        cf1, of1 = f1_scores(scores, tgt, self.threshold)
        return {"mAP": mean_average_precision(scores, tgt, self.no_positive), "CF1": cf1, "OF1": of1}

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        if not self._logits:
            return []
        logits, targets = torch.cat(self._logits), torch.cat(self._targets)
        vals = self.compute(logits, targets, seen_columns(strategy.experience, logits.shape[1]))
        exp_id = strategy.experience.current_experience
        if exp_id == strategy.clock.train_exp_counter - 1:
            self.map_after_task[exp_id] = vals["mAP"]
            done = [v for t, v in sorted(self.map_after_task.items()) if t <= exp_id]
            vals["amAP"] = float(sum(done) / len(done))
        self.last = vals
        x = strategy.clock.train_iterations
        return [
            MetricValue(self, get_metric_name(k, strategy, add_experience=True, add_task=False), v, x)
            for k, v in vals.items()
        ]

    def __str__(self) -> str:
        return "MultiLabelMetrics"


class TaskAveragedAccuracy(SummaryMetric, PluginMetric[dict]):
    """Single-label CIL: unweighted mean top-1 over seen tasks, forgetting and BWT.

    Records ``R[i][j]`` = top-1 on test experience ``j`` evaluated after ``i`` trained experiences and emits,
    after each ``eval`` call, ``Top1_Acc_TaskAvg``, ``Forgetting_TaskAvg`` and ``BWT_TaskAvg`` over the
    experiences ``j < i`` evaluated at step ``i``. Mini-batches with 2-D targets are ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.matrix: dict[int, dict[int, float]] = {}  # i (trained experiences) -> {j: accuracy}
        self.last: dict[str, float] = {}
        self._correct = self._count = 0

    def reset(self) -> None:
        self._correct = self._count = 0

    def result(self) -> dict[str, float]:
        return dict(self.last)

    def before_eval_exp(self, strategy: Any) -> None:
        self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        y = strategy.mb_y
        if y.ndim != 1:
            return
        self._correct += int((strategy.mb_output.argmax(-1) == y).sum())
        self._count += len(y)

    def after_eval_exp(self, strategy: Any) -> None:
        if self._count:
            i = strategy.clock.train_exp_counter
            self.matrix.setdefault(i, {})[strategy.experience.current_experience] = self._correct / self._count

    def after_eval(self, strategy: Any) -> list[MetricValue]:
        i = strategy.clock.train_exp_counter
        vals = task_average_summary(self.matrix, i)
        if not vals:
            return []
        self.last = vals
        x = strategy.clock.train_iterations
        return [
            MetricValue(self, get_metric_name(k, strategy, add_experience=False, add_task=False), v, x)
            for k, v in vals.items()
        ]

    def __str__(self) -> str:
        return "TaskAveragedAccuracy"


def task_average_summary(matrix: dict[int, dict[int, float]], i: int) -> dict[str, float]:
    """Average accuracy, forgetting and BWT after ``i`` trained experiences from ``R[i][j]`` entries.

    Args:
        matrix: ``{i: {j: accuracy}}``.
        i: number of trained experiences (tasks ``0..i-1`` are seen).

    Returns:
        ``{"Top1_Acc_TaskAvg", "Forgetting_TaskAvg", "BWT_TaskAvg"}`` (the last two only with past tasks);
        empty if no seen task was evaluated at step ``i``.
    """
    row = {j: a for j, a in matrix.get(i, {}).items() if j < i}
    if not row:
        return {}
    out = {"Top1_Acc_TaskAvg": sum(row.values()) / len(row)}
    past = [j for j in row if j < i - 1]
    if past:
        best = [max(matrix[k][j] for k in matrix if j < k <= i and j in matrix[k]) for j in past]
        out["Forgetting_TaskAvg"] = sum(b - row[j] for b, j in zip(best, past)) / len(past)
        diag = [matrix.get(j + 1, {}).get(j) for j in past]
        pairs = [(row[j], d) for j, d in zip(past, diag) if d is not None]
        if pairs:
            out["BWT_TaskAvg"] = sum(a - d for a, d in pairs) / len(pairs)
    return out


def multilane_metrics(no_positive: str = "skip", threshold: float = THRESHOLD) -> list[PluginMetric]:
    """The metric set of MULTI-LANE runs: multi-label metrics and task-averaged CIL metrics."""
    return [MultiLabelMetrics(no_positive, threshold), TaskAveragedAccuracy()]
