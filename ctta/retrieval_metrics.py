"""Deep-metric-learning retrieval metrics: Recall@K and MAP@R (for VPTSP-G's retrieval track).

References: Recall@K as in the DML literature (a query counts when one of its K nearest neighbours, itself excluded,
shares its label); MAP@R from Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020): for a query with R other
samples of its class, ``AP@R = (1/R) * sum_{i<=R} P@i * rel(i)`` over its R nearest neighbours. VPTSP-G
(Noahsark/ParameterEfficient-DML @ c7c9416, ``remaining-seed-systems.md`` A4) reports Recall@1/2/4/8 and MAP@R on
L2-normalised embeddings (cosine similarity); the reference computes them with faiss, here exact in torch.
Ties between equal similarities are broken by sample index (a stable sort); queries without another sample of
their class are left out of MAP@R.
NMI as the reference computes it (k-means with one cluster per class, 20 iterations, L2, then scikit-learn's
``normalized_mutual_info_score``), with scikit-learn's ``KMeans`` (one seeded init) instead of faiss.
``RetrievalMetrics`` is the Avalanche plugin metric that reports all of them for an evaluated experience.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

from ctta.metrics import SummaryMetric

__all__ = ["neighbours", "recall_at_k", "map_at_r", "nmi", "retrieval_scores", "RetrievalMetrics"]


def neighbours(emb: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Indices ``(N, k)`` of each sample's ``k`` most cosine-similar other samples, nearest first (``chunk`` queries
    at a time: SOP's 60,502 test images would need an N x N matrix; up to ``chunk`` samples it is one matrix
    product, as before; across chunks the products may round differently in the last bit)."""
    e = F.normalize(emb.float(), dim=-1)
    out = []
    for start in range(0, len(e), chunk):
        sim = e[start : start + chunk] @ e.T  # (chunk, N)
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = float("-inf")  # a query never retrieves itself
        # a stable sort, not topk: equal similarities keep index order (topk orders ties arbitrarily)
        out.append(sim.sort(dim=-1, descending=True, stable=True).indices[:, : min(k, len(e) - 1)])
    return torch.cat(out)


def recall_at_k(emb: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[int, float]:
    """``{k: share of queries with a same-label sample among their k nearest neighbours}``."""
    nn_idx = neighbours(emb, max(ks))
    hit = labels[nn_idx] == labels.unsqueeze(1)  # (N, kmax)
    return {k: float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def map_at_r(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over queries of AP@R, R = number of other samples sharing the query's label."""
    r = (labels.unsqueeze(1) == labels.unsqueeze(0)).sum(1) - 1  # (N,)
    if int(r.max()) < 1:
        raise ValueError("MAP@R needs at least one class with two samples")
    nn_idx = neighbours(emb, int(r.max()))
    rel = (labels[nn_idx] == labels.unsqueeze(1)).float()  # (N, Rmax)
    pos = torch.arange(1, rel.shape[1] + 1, dtype=torch.float32)
    within = (pos.unsqueeze(0) <= r.unsqueeze(1)).float()  # only the first R neighbours count
    prec = rel.cumsum(1) / pos  # P@i
    ap = (prec * rel * within).sum(1) / r.clamp_min(1)
    return float(ap[r > 0].mean())


def nmi(emb: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """NMI between ``labels`` and a k-means clustering of ``emb`` (one cluster per label, 20 iterations)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    n_clusters = int(labels.unique().numel())
    km = KMeans(n_clusters=n_clusters, n_init=1, max_iter=20, random_state=seed).fit(emb.float().cpu().numpy())
    return float(normalized_mutual_info_score(labels.cpu().numpy(), km.labels_))


def retrieval_scores(emb: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """``recall_at_<k>`` for each k, ``map_at_r`` and ``nmi`` of embeddings ``(N, E)`` with labels ``(N,)``."""
    out = {f"recall_at_{k}": v for k, v in recall_at_k(emb, labels, ks).items()}
    return out | {"map_at_r": map_at_r(emb, labels), "nmi": nmi(emb, labels)}


_NAMES = {"map_at_r": "MAP_at_R", "nmi": "NMI"}


class RetrievalMetrics(SummaryMetric, PluginMetric[dict]):
    """Recall@K, MAP@R and NMI of the outputs (embeddings) of every evaluated experience, queries = gallery = the
    experience (a query never retrieves itself). Logged as ``Recall_at_1/eval_phase/test_stream/Exp000``,
    ``MAP_at_R/...``, ``NMI/...``; ``result()`` is the last evaluated experience's (the run's summary)."""

    def __init__(self, ks: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.ks = tuple(int(k) for k in ks)
        self.last: dict[str, float] = {}
        self._emb: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def reset(self) -> None:
        self._emb, self._labels = [], []

    def result(self) -> dict[str, float]:
        return dict(self.last)

    def before_eval_exp(self, strategy: Any) -> None:
        self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        self._emb.append(strategy.mb_output.detach().float().cpu())
        self._labels.append(strategy.mb_y.detach().cpu())

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        if not self._emb:
            return []
        emb, labels = torch.cat(self._emb), torch.cat(self._labels)
        if len(labels) < 2 or int((labels.unsqueeze(1) == labels.unsqueeze(0)).sum()) == len(labels):
            return []  # no query has another sample of its class
        self.last = retrieval_scores(emb, labels, self.ks)
        x = strategy.clock.train_iterations
        return [MetricValue(self, get_metric_name(self._name(k), strategy, add_experience=True, add_task=False), v, x)
                for k, v in self.last.items()]  # fmt: skip

    @staticmethod
    def _name(key: str) -> str:
        return _NAMES.get(key) or key.replace("recall", "Recall")

    def __str__(self) -> str:
        return "RetrievalMetrics"
