"""Base-to-new metrics: accuracy on the base classes, on the new classes and their harmonic mean.

Paper: CoCoOp (Zhou et al., CVPR 2022, arXiv 2203.05557) §4.1 (``H = 2 B N / (B + N)``). Reference (behaviour
read, re-implemented): KaiyangZhou/CoOp@ff61507 ``scripts/cocoop/base2new_*.sh`` and ``parse_test_res.py``.

Accuracy is counted per evaluation stream of a base-to-new benchmark (``ctta.scenarios.few_shot``, whose
``stream_classnames`` has a ``test_new`` stream): ``test`` gives the base accuracy, ``test_new`` the new accuracy;
the harmonic mean is reported once both exist. Other benchmarks report nothing here.

Deviations: none.
"""

from __future__ import annotations

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from ctta.metrics import SummaryMetric
from ctta.templates.benchmark_info import attached_info

__all__ = ["BaseNewAccuracy", "harmonic_mean"]


def harmonic_mean(base: float, new: float) -> float:
    """``2 B N / (B + N)`` (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


class BaseNewAccuracy(SummaryMetric, PluginMetric):
    """Top-1 accuracy of the last evaluation of the ``test`` (base) and ``test_new`` (new) streams, and their HM.

    ``result()`` -> ``{"base_acc": B, "new_acc": N, "hm": H}`` (keys present once measured); the evaluator logs them
    as ``Top1_Acc_Base/eval_phase/test_stream``, ``Top1_Acc_New/eval_phase/test_new_stream`` and
    ``Top1_Acc_HM/eval_phase/test_new_stream``.
    """

    STREAMS = {"test": "base_acc", "test_new": "new_acc"}
    #: Avalanche-style names of the logged values
    NAMES = {
        "base_acc": "Top1_Acc_Base/eval_phase/test_stream",
        "new_acc": "Top1_Acc_New/eval_phase/test_new_stream",
        "hm": "Top1_Acc_HM/eval_phase/test_new_stream",
    }

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {}
        self._counts: dict[str, list[int]] = {}

    def reset(self) -> None:
        self.last, self._counts = {}, {}

    def result(self) -> dict[str, float]:
        out = dict(self.last)
        if "base_acc" in out and "new_acc" in out:
            out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
        return out

    def _key(self, strategy) -> str | None:
        """``base_acc`` / ``new_acc`` on a base-to-new benchmark's ``test`` / ``test_new`` streams, else None."""
        try:
            stream = strategy.experience.origin_stream
            info = attached_info(getattr(stream, "benchmark", None))
            per_stream = info.stream_classnames if info is not None else {}
        except Exception:
            return None
        return self.STREAMS.get(stream.name) if "test_new" in per_stream else None

    def before_eval(self, strategy) -> None:
        self._counts = {}

    def after_eval_iteration(self, strategy) -> None:
        key = self._key(strategy)
        if key is None:
            return
        pred = strategy.mb_output.argmax(dim=-1)
        c = self._counts.setdefault(key, [0, 0])
        c[0] += int((pred == strategy.mb_y).sum())
        c[1] += int(strategy.mb_y.numel())

    def after_eval(self, strategy):
        for key, (correct, total) in self._counts.items():
            if total:
                self.last[key] = correct / total
        res = self.result()
        step = strategy.clock.train_iterations
        return [MetricValue(self, self.NAMES[k], v, step) for k, v in res.items()]

    def __str__(self) -> str:
        return "BaseNewAccuracy"
