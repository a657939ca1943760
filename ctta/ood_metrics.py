"""Out-of-distribution detection metrics: FPR@95TPR, AUROC, AUPR-In, AUPR-Out, and their Avalanche ``PluginMetric``.

Conventions (OpenOOD, Zhang et al., "OpenOOD v1.5", arXiv 2306.09301; reference Jingkang50/OpenOOD ``openood/
evaluators/metrics.py``, behaviour read, re-implemented, no code copied): a detector gives every sample a score,
**higher = more in-distribution**; ID samples are the positives. With ROC points at every distinct score:

* FPR95 = the false-positive rate (OOD samples accepted as ID) at the first threshold whose true-positive rate (ID
  accepted) reaches 0.95 (the MCM / NegLabel / LAPT papers' definition);
* AUROC = trapezoidal area under the ROC curve (ties count one half);
* AUPR-In = trapezoidal area under the precision-recall curve with ID positive and the score; AUPR-Out = the same with
  OOD positive and the negated score (OpenOOD's ``auc(recall, precision)``, the curve stopping at full recall, as
  scikit-learn's ``precision_recall_curve``).

Deviation: OpenOOD v1.5's evaluator takes OOD as the positive class for its FPR (ID samples rejected at 95 % of OOD
samples detected); ``fpr_at_tpr(..., ood_positive=True)`` gives that variant. AUROC and the AUPRs are identical.

Streams (``ctta.scenarios.ood``): ``test`` is the ID test set, ``test_near_<name>`` / ``test_far_<name>`` are OOD sets
and ``test_csid_<name>`` covariate-shifted ID sets (full-spectrum detection counts them as ID). The score of a
mini-batch is the strategy's ``mb_ood_score`` (``(B,)``, set by an OOD strategy's forward), else the maximum softmax
probability of ``mb_output`` (MSP, Hendrycks & Gimpel 2017).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from ctta.metrics import SummaryMetric

__all__ = ["OODDetectionMetric", "aupr", "auroc", "fpr_at_tpr", "ood_metrics", "stream_role"]


def _curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, thresholds descending."""
    scores = np.concatenate([pos, neg]).astype(np.float64)
    is_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each distinct score
    tps = np.cumsum(is_pos)[last]
    return tps, (last + 1) - tps


def _check(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    if not len(pos) or not len(neg):
        raise ValueError(f"need ID and OOD scores, got {len(pos)} ID and {len(neg)} OOD")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    return pos, neg


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95, *, ood_positive: bool = False) -> float:
    """FPR at the first threshold reaching ``tpr`` (ID positive; ``ood_positive``: OpenOOD v1.5's variant)."""
    pos, neg = _check(id_scores, ood_scores)
    if ood_positive:
        pos, neg = -neg, -pos
    tps, fps = _curve(pos, neg)
    return float(fps[np.argmax(tps / len(pos) >= tpr)] / len(neg))


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve (ID positive; equals ``roc_auc_score``)."""
    pos, neg = _check(id_scores, ood_scores)
    tps, fps = _curve(pos, neg)
    tpr, fpr = np.r_[0.0, tps / len(pos)], np.r_[0.0, fps / len(neg)]
    return float(np.trapezoid(tpr, fpr))


def aupr(pos_scores, neg_scores) -> float:
    """Area under the precision-recall curve of ``pos_scores`` (positives) against ``neg_scores`` (trapezoids over
    the curve up to full recall with the point (recall 0, precision 1): ``auc(*precision_recall_curve(...))``)."""
    pos, neg = _check(pos_scores, neg_scores)
    tps, fps = _curve(pos, neg)
    stop = int(np.searchsorted(tps, tps[-1])) + 1  # the curve ends where recall first reaches 1
    tps, fps = tps[:stop], fps[:stop]
    precision, recall = np.r_[1.0, tps / (tps + fps)], np.r_[0.0, tps / len(pos)]
    return float(np.trapezoid(precision, recall))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """``{"fpr95", "auroc", "aupr_in", "aupr_out"}`` of one ID/OOD pair (fractions in [0, 1])."""
    pos, neg = _check(id_scores, ood_scores)
    return {
        "fpr95": fpr_at_tpr(pos, neg),
        "auroc": auroc(pos, neg),
        "aupr_in": aupr(pos, neg),
        "aupr_out": aupr(-neg, -pos),
    }


def stream_role(stream: str) -> tuple[str, str]:
    """``(role, set name)`` of a stream: ``("id", "")`` for ``test``, ``("csid"|"near"|"far", name)`` for
    ``test_<role>_<name>``, ``("", "")`` for any other stream."""
    base = stream.removesuffix("_stream")
    if base == "test":
        return "id", ""
    for role in ("csid", "near", "far"):
        if base.startswith(f"test_{role}_"):
            return role, base[len(f"test_{role}_"):]
    return "", ""


_NAMES = {"fpr95": "OOD_FPR95", "auroc": "OOD_AUROC", "aupr_in": "OOD_AUPR_In", "aupr_out": "OOD_AUPR_Out"}


class OODDetectionMetric(SummaryMetric, PluginMetric[dict]):
    """OOD detection over the streams of an OOD benchmark (see the module docstring).

    Keeps the latest scores of every evaluated stream (across ``eval`` calls). ``result()``: ``id_acc`` (top-1 on
    ``test``), per OOD set ``<metric>_<name>``, per group ``<metric>_near`` / ``<metric>_far`` (mean over its sets),
    and with covariate-shifted ID sets the full-spectrum values ``fs_<metric>_<name>`` / ``fs_<metric>_<group>``
    (ID = ``test`` and every ``csid`` set). Logged as ``OOD_AUROC/eval_phase/test_far_<name>_stream``,
    ``OOD_AUROC_Far/eval_phase/test_stream``, ... and ``Top1_Acc_ID/eval_phase/test_stream``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scores: dict[str, tuple[str, str, np.ndarray]] = {}  # stream -> (role, name, scores)
        self.correct: dict[str, tuple[int, int]] = {}
        self._current: list[np.ndarray] = []
        self._hits = [0, 0]

    def reset(self) -> None:
        self.scores, self.correct = {}, {}

    def before_eval_exp(self, strategy: Any) -> None:
        self._current, self._hits = [], [0, 0]

    def after_eval_iteration(self, strategy: Any) -> None:
        super().after_eval_iteration(strategy)
        score = getattr(strategy, "mb_ood_score", None)
        if score is None:
            score = strategy.mb_output.float().softmax(-1).amax(-1)  # MSP
        self._current.append(score.detach().float().cpu().numpy().reshape(-1))
        y = strategy.mb_y
        if y.ndim == 1:
            self._hits[0] += int((strategy.mb_output.argmax(-1) == y).sum())
            self._hits[1] += int((y >= 0).sum())

    def after_eval_exp(self, strategy: Any) -> None:
        stream = strategy.experience.origin_stream.name
        role, name = stream_role(stream)
        if role and self._current:
            self.scores[stream] = (role, name, np.concatenate(self._current))
            self.correct[stream] = tuple(self._hits)

    def result(self) -> dict[str, float]:
        ids = [s for r, _, s in self.scores.values() if r == "id"]
        if not ids:
            return {}
        out: dict[str, float] = {}
        hits = next(v for k, v in self.correct.items() if self.scores[k][0] == "id")
        if hits[1]:
            out["id_acc"] = hits[0] / hits[1]
        out |= self._block(ids[0], "")
        csid = [s for r, _, s in self.scores.values() if r == "csid"]
        if csid:
            out |= self._block(np.concatenate([ids[0], *csid]), "fs_")
        return out

    def _block(self, id_scores: np.ndarray, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for group in ("near", "far"):
            per_set = [ood_metrics(id_scores, s) for r, _, s in self.scores.values() if r == group]
            names = [n for r, n, _ in self.scores.values() if r == group]
            for n, m in zip(names, per_set):
                out |= {f"{prefix}{k}_{n}": v for k, v in m.items()}
            if per_set:
                out |= {f"{prefix}{k}_{group}": float(np.mean([m[k] for m in per_set])) for k in _NAMES}
        return out

    def after_eval(self, strategy: Any) -> list[MetricValue]:
        x = strategy.clock.train_iterations
        values = []
        for key, v in self.result().items():
            values.append(MetricValue(self, _metric_name(key, self.scores), v, x))
        return values

    def __str__(self) -> str:
        return "OODDetection"


def _metric_name(key: str, scores: dict) -> str:
    """Avalanche-style name of a result key (``auroc_far`` -> ``OOD_AUROC_Far/eval_phase/test_stream``)."""
    if key == "id_acc":
        return "Top1_Acc_ID/eval_phase/test_stream"
    prefix = "FS_" if key.startswith("fs_") else ""
    key = key.removeprefix("fs_")
    metric = next(m for m in _NAMES if key.startswith(m + "_"))
    rest = key[len(metric) + 1:]
    if rest in ("near", "far"):
        return f"{prefix}{_NAMES[metric]}_{rest.title()}/eval_phase/test_stream"
    stream = next(k for k, (r, n, _) in scores.items() if n == rest and r in ("near", "far"))
    return f"{prefix}{_NAMES[metric]}/eval_phase/{stream.removesuffix('_stream')}_stream"
