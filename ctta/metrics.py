"""Online continual-learning metrics as Avalanche ``PluginMetric``s: A_auc, A_last, A_avg, F_last, top-1.

Definitions follow Si-Blurry / MVP (Moon et al., ICCV 2023, arXiv 2308.09303; reference
moonjunyyy/Si-Blurry@c4024ce ``utils/train_utils.py``, lineage i-Blurry):

* accuracy = correct / count over the evaluated samples (sample-weighted top-1);
* A_auc = mean of the periodic accuracies only (task-end evaluations excluded);
* A_last = accuracy of the last task-end evaluation; A_avg = mean of the task-end accuracies;
* F_last ("official"): per-class a_j = correct_j / (count_j + 1e-5) at each task end (0 if not evaluated);
  over classes with max_{t<T-1} a_{t,j} > 0, the mean of max_{t<T-1} a_{t,j} - a_{T-1,j}.
  ("standard"): exact per-class accuracies over every class evaluated before the last task end.

The evaluation kind comes from ``strategy.eval_kind`` (set by ``AnytimeEvalPlugin``); evaluations run by hand
(kind None) only produce ``Top1``. Values are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

F_LAST_VARIANTS = ("official", "standard")


def f_last(per_class_history: list[dict[int, tuple[int, int]]], variant: str = "official") -> float:
    """F_last from task-end per-class ``{class: (correct, count)}`` dicts, oldest first."""
    if variant not in F_LAST_VARIANTS:
        raise ValueError(f"f_last variant {variant!r}; valid: {list(F_LAST_VARIANTS)}")
    if len(per_class_history) < 2:
        return 0.0
    *before, last = per_class_history
    eps = 1e-5 if variant == "official" else 0.0

    def acc(d: dict[int, tuple[int, int]], c: int) -> float | None:
        if c not in d:
            return 0.0 if variant == "official" else None
        correct, count = d[c]
        return correct / (count + eps) if count + eps > 0 else 0.0

    classes = sorted({c for d in before for c in d})
    drops = []
    for c in classes:
        prev = [a for a in (acc(d, c) for d in before) if a is not None]
        best = max(prev)
        if variant == "official" and best <= 0:
            continue
        drops.append(best - (acc(last, c) or 0.0))
    return float(np.mean(drops)) if drops else 0.0


_KIND_NAMES = {"periodic": "Periodic", "task_end": "TaskEnd"}


def _stream_name(strategy: Any) -> str:
    """``<name>_stream`` of the experience being evaluated (Avalanche's metric-name convention)."""
    try:
        name = strategy.experience.origin_stream.name
    except Exception:  # no experience / unset origin stream
        name = "test"
    return name if name.endswith("_stream") else f"{name}_stream"


class AnytimeAccuracy(PluginMetric[dict]):
    """Top-1 of every evaluation plus A_auc / A_last / A_avg / F_last over the anytime-evaluation history."""

    def __init__(self, f_last_variant: str = "official") -> None:
        super().__init__()
        if f_last_variant not in F_LAST_VARIANTS:
            raise ValueError(f"f_last_variant {f_last_variant!r}; valid: {list(F_LAST_VARIANTS)}")
        self.f_last_variant = f_last_variant
        self.periodic: list[tuple[int, float]] = []  # (nominal samples, acc)
        self.task_end: list[tuple[int, float]] = []
        self.task_end_per_class: list[dict[int, tuple[int, int]]] = []
        self._correct: dict[int, int] = {}
        self._count: dict[int, int] = {}

    def reset(self) -> None:
        self._correct, self._count = {}, {}

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.periodic:
            out["A_auc"] = float(np.mean([a for _, a in self.periodic]))
        if self.task_end:
            out["A_last"] = self.task_end[-1][1]
            out["A_avg"] = float(np.mean([a for _, a in self.task_end]))
            out["F_last"] = f_last(self.task_end_per_class, self.f_last_variant)
        return out

    def before_eval_exp(self, strategy: Any) -> None:
        self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        super().after_eval_iteration(strategy)
        pred = strategy.mb_output.argmax(-1).cpu()
        y = strategy.mb_y.cpu()
        if y.ndim != 1:
            return  # multi-label targets: see ctta.strategies.multilane.metrics
        for c, ok in zip(y.tolist(), (pred == y).tolist()):
            self._count[c] = self._count.get(c, 0) + 1
            self._correct[c] = self._correct.get(c, 0) + int(ok)

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        """Avalanche-style names ``<metric>/eval_phase/<stream>_stream``: ``Top1_Acc_Anytime`` for every
        evaluation; after anytime evaluations also ``Acc_Periodic`` / ``Acc_TaskEnd`` and ``A_auc``, ``A_last``,
        ``A_avg``, ``F_last``."""
        n = sum(self._count.values())
        if n == 0:
            return []
        acc = sum(self._correct.values()) / n
        kind = getattr(strategy, "eval_kind", None)
        x = int(getattr(strategy, "eval_x", 0) or getattr(strategy, "seen_samples", 0))
        suffix = f"eval_phase/{_stream_name(strategy)}"
        values = [MetricValue(self, f"Top1_Acc_Anytime/{suffix}", acc, x)]
        if kind == "periodic":
            self.periodic.append((x, acc))
        elif kind == "task_end":
            self.task_end.append((x, acc))
            self.task_end_per_class.append({c: (self._correct[c], self._count[c]) for c in self._count})
        if kind is not None:
            values.append(MetricValue(self, f"Acc_{_KIND_NAMES.get(kind, kind)}/{suffix}", acc, x))
            values += [MetricValue(self, f"{k}/{suffix}", v, x) for k, v in self.result().items()]
        return values

    def state_dict(self) -> dict:
        return {
            "periodic": list(self.periodic),
            "task_end": list(self.task_end),
            "task_end_per_class": [dict(d) for d in self.task_end_per_class],
        }

    def load_state_dict(self, state: dict) -> None:
        self.periodic = [tuple(p) for p in state["periodic"]]
        self.task_end = [tuple(p) for p in state["task_end"]]
        self.task_end_per_class = [{int(k): tuple(v) for k, v in d.items()} for d in state["task_end_per_class"]]

    def __str__(self) -> str:
        return "AnytimeAccuracy"


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals ``y``."""
    return float((logits.argmax(-1) == y).float().mean()) if len(y) else 0.0


class SummaryMetric:
    """Marker base of the ``PluginMetric``s whose ``result()`` enters a run's summary (``results.json``): a dict of
    numbers, or one number named ``summary_name()``."""

    def summary_name(self) -> str:
        """The summary key of a single-valued result (default: the metric's Avalanche name)."""
        return str(self)


class TopKAccuracy(SummaryMetric, PluginMetric[float]):
    """Stream top-k accuracy (Avalanche's ``topk_acc_metrics`` needs task labels, which TTA streams lack)."""

    def summary_name(self) -> str:
        return f"top{self.k}" if self.k else str(self)

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k, self.correct, self.count = k, 0, 0

    def reset(self) -> None:
        self.correct = self.count = 0

    def result(self) -> float:
        return self.correct / max(1, self.count)

    def before_eval(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        out, y = strategy.mb_output, strategy.mb_y
        top = out.topk(min(self.k, out.shape[-1]), dim=-1).indices  # (B, k)
        self.correct += int((top == y[:, None]).any(-1).sum())
        self.count += len(y)

    def after_eval(self, strategy) -> list[MetricValue]:
        x = strategy.clock.train_iterations
        return [MetricValue(self, f"Top{self.k}_Acc_Stream/eval_phase/{_stream_name(strategy)}", self.result(), x)]

    def __str__(self) -> str:
        return f"Top{self.k}_Acc_Stream"
