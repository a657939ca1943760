"""Diversity-adaptive clustering of backbone features and nearest-prototype routing (DAM-VP).

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138), §3.2.
Reference: shikiw/DAM-VP@dec5821 ``task_adapting/adapter.py::Adapter.coarse_clustering`` and
``get_prompted_image`` (re-implemented; no code copied).

The training set's features phi(x) (at most 1000) are clustered by average-linkage agglomerative clustering
(Euclidean) with a FIXED distance threshold tau, so more diverse data yields more clusters; prototype
mu_k = mean of cluster k (scikit-learn label order). Every image is routed to its nearest prototype:
``d_k(x) = sqrt(|phi|^2 + |mu_k|^2 - 2 phi.mu_k)``, ``k* = argmin_k d_k``.

Deviations from the reference code: the squared distance is clamped at 0 before the square root (the
reference can produce NaN for a point on a prototype, which ``argmin`` then happens to pick; clamping gives
distance 0 there, the same choice without NaN). A threshold that puts every sample in its own cluster raises
a ``ValueError`` (the reference would silently train one prompt per image).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = [
    "CLIP_TAU",
    "DEFAULT_TAU",
    "Clustering",
    "cluster_features",
    "collect_features",
    "default_tau",
    "prototype_distances",
    "route",
]

# tau per backbone checkpoint. tau is an absolute distance in that checkpoint's feature space.
DEFAULT_TAU: dict[str, float] = {
    "resnet50-1k": 21.0,
    "vit-b-1k": 31.0,
    "vit-b-22k": 10.0,
    "swin-b-22k": 20.0,
    "moco-v3-b-1k": 18.0,
}
# CLIP: tau per dataset (task adaptation, then meta-training sets)
CLIP_TAU: dict[str, float] = {
    "cifar10": 6.0, "cifar100": 16.0, "cub200": 40.0, "nabirds": 75.0, "flowers": 25.0, "dogs": 25.0,
    "cars": 40.0, "aircraft": 25.0, "food101": 40.0, "dtd": 16.0, "svhn": 16.0, "gtsrb": 16.0,
    "sun397": 40.0, "stl10": 6.0, "fru92": 25.0, "veg200": 40.0, "pets": 16.0, "eurosat": 6.0,
}  # fmt: skip
_CLIP_ALIASES = {"oxford-flowers": "flowers", "stanford-dogs": "dogs", "stanford-cars": "cars",
                 "fgvc-aircraft": "aircraft", "oxford-iiit-pets": "pets"}  # fmt: skip


def default_tau(backbone_key: str, dataset: str | None = None) -> float:
    """The reference tau for ``backbone_key`` (e.g. ``vit-b-1k``), or for ``dataset`` on CLIP backbones.

    Raises:
        KeyError: unknown backbone key or CLIP dataset, naming the known ones (set ``tau`` explicitly then).
    """
    if backbone_key.startswith("clip"):
        dataset = _CLIP_ALIASES.get(dataset, dataset)
        if dataset not in CLIP_TAU:
            raise KeyError(
                f"no reference CLIP tau for dataset {dataset!r}; known: {sorted(CLIP_TAU)}. Set strategy.tau explicitly"
            )
        return CLIP_TAU[dataset]
    if backbone_key not in DEFAULT_TAU:
        raise KeyError(
            f"no reference tau for backbone {backbone_key!r}; known: {sorted(DEFAULT_TAU)} and clip-*. "
            "tau is an absolute feature distance: set strategy.tau explicitly for other checkpoints"
        )
    return DEFAULT_TAU[backbone_key]


@torch.no_grad()
def collect_features(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable,
    max_samples: int = 1000,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """phi of the first ``max_samples`` images of ``batches`` (reference: stop once MORE than 1000 gathered).

    Args:
        feature_fn: maps images ``(B, C, H, W)`` to features ``(B, D)``.
        batches: iterable of batches; a batch is a tensor or a tuple/list whose first element is the images.
        max_samples: keep at most this many features (a smaller dataset is used whole).
        device: where images are moved before ``feature_fn``.

    Returns:
        ``(N, D)`` float features on the CPU, ``N = min(max_samples, len(data))``.
    """
    feats, n = [], 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if device is not None:
            x = x.to(device)
        feats.append(feature_fn(x).float().cpu())
        n += len(feats[-1])
        if n > max_samples:
            break
    if not feats or n == 0:
        raise ValueError("cannot cluster an empty dataset: the training data yielded no images")
    return torch.cat(feats)[:max_samples]


@dataclass(frozen=True)
class Clustering:
    """Result of ``cluster_features``: ``labels`` (N,), ``prototypes`` (K, D), the threshold ``tau``."""

    labels: torch.Tensor
    prototypes: torch.Tensor
    tau: float

    @property
    def n_clusters(self) -> int:
        return len(self.prototypes)


def cluster_features(features: torch.Tensor, tau: float) -> Clustering:
    """Average-linkage agglomerative clustering (Euclidean) with distance threshold ``tau``; prototypes.

    Args:
        features: ``(N, D)`` features, N >= 1.
        tau: absolute distance threshold (per backbone checkpoint, or per dataset for CLIP).

    Raises:
        ValueError: no features, non-finite features, ``tau <= 0``, or a threshold so small that every sample
            forms its own cluster (N > 1): one prompt per training image is never what DAM-VP means; raise tau.
    """
    from sklearn.cluster import AgglomerativeClustering

    feats = _check_features(features, tau)
    n = len(feats)
    if n == 1:
        labels = torch.zeros(1, dtype=torch.long)
    else:
        hc = AgglomerativeClustering(n_clusters=None, linkage="average", distance_threshold=float(tau))
        labels = torch.from_numpy(hc.fit(feats.double().numpy()).labels_).long()
    k = int(labels.max()) + 1
    if n > 1 and k == n:
        raise ValueError(
            f"tau={tau} puts each of the {n} samples in its own cluster (K = N = {n}); tau is an absolute "
            "Euclidean distance in the backbone's feature space and is far too small for these features "
            f"(median pairwise distance {_median_pdist(feats):.3g}). Increase strategy.tau"
        )
    if k > n // 2 and n > 3:
        warnings.warn(f"tau={tau} gives {k} clusters for {n} samples: most prompts will see 1-2 images", stacklevel=2)
    protos = torch.stack([feats[labels == c].mean(0) for c in range(k)])  # (K, D), mu_k
    return Clustering(labels=labels, prototypes=protos.to(features.dtype), tau=float(tau))


def _check_features(features: torch.Tensor, tau: float) -> torch.Tensor:
    if tau is None or not float(tau) > 0:
        raise ValueError(f"tau must be a positive distance threshold, got {tau!r}")
    feats = torch.as_tensor(features).detach().cpu()
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(feats.shape)}")
    if len(feats) == 0:
        raise ValueError("cannot cluster an empty dataset: got 0 feature vectors")
    if not torch.isfinite(feats).all():
        raise ValueError("features contain NaN/inf; check the backbone and the input normalisation")
    return feats


def _median_pdist(feats: torch.Tensor) -> float:
    d = torch.pdist(feats[:500].double())
    return float(d.median()) if len(d) else 0.0


def prototype_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` Euclidean distances by the reference expansion ``sqrt(|f|^2 + |mu|^2 - 2 f.mu)`` (clamped)."""
    f2 = (features**2).sum(-1, keepdim=True)  # (B, 1)
    m2 = (prototypes**2).sum(-1, keepdim=True).T  # (1, K)
    return (f2 + m2 - 2 * features @ prototypes.T).clamp_min(0).sqrt()  # (B, K)


def route(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index ``(B,)`` of the nearest prototype for each feature row (computed in fp32)."""
    if features.ndim != 2 or prototypes.ndim != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"route: features (B, D) and prototypes (K, D) must share D, got {tuple(features.shape)} and "
            f"{tuple(prototypes.shape)}"
        )
    protos = prototypes.to(device=features.device, dtype=torch.float32)
    return prototype_distances(features.float(), protos).argmin(-1)
