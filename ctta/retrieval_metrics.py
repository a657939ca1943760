"""Deep-metric-learning retrieval metrics: Recall@K and MAP@R (for VPTSP-G's retrieval track).

References: Recall@K as in the DML literature (a query counts when one of its K nearest neighbours, itself excluded,
shares its label); MAP@R from Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020): for a query with R other
samples of its class, ``AP@R = (1/R) * sum_{i<=R} P@i * rel(i)`` over its R nearest neighbours. VPTSP-G
(Noahsark/ParameterEfficient-DML @ c7c9416, ``remaining-seed-systems.md`` A4) reports Recall@1/2/4/8 and MAP@R on
L2-normalised embeddings (cosine similarity); the reference computes them with faiss, here exact in torch.
Ties between equal similarities are broken by sample index (``torch.topk`` order); queries without another sample of
their class are left out of MAP@R.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["neighbours", "recall_at_k", "map_at_r"]


def neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(N, k)`` of each sample's ``k`` most cosine-similar other samples, nearest first."""
    e = F.normalize(emb.float(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(float("-inf"))  # a query never retrieves itself
    return sim.topk(min(k, len(e) - 1), dim=-1).indices


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
