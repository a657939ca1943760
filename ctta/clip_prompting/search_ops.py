"""Discrete prompt search, the pure parts: cached few-shot features, fitness scores, edit operators on text sets,
the momentum-updated edit-size table and the search history (rows as JSON, fitness per step as a plot).

Paper: ProAPO (Qu et al., CVPR 2025, arXiv 2502.19844). Reference: MorningStarOvO/ProAPO@fefdf18 (MIT; behaviour
read, re-implemented, no code copied): ``tools/models/APO_score_func/get_score_based_ACC.py:get_acc_scores``
(top-1 / top-5, cross-entropy, redundancy), ``tools/utils/util_model.py:{get_fitness_score, random_weighted_choice,
init_weight_dict}``, ``tools/process/task_specific_selection.py`` (add / remove / replace / mutation / crossover).

Shared with wave 2: ProAPO (``strategies/proapo.py``), the PAC-Bayes greedy search, IPO / the LLM optimizer / GLOV
(fitness and history through ``ctta.clip_prompting.search``).

Deviations: every random draw uses one seeded ``random.Random`` (the reference mixes Python's and NumPy's global
RNGs); accuracies are not rounded to 4 decimals (the reference rounds percentages); the redundancy omits the
diagonal exactly (the reference subtracts the identity, leaving ``|t_c|^2 - 1`` rounding residue).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "EditSizeTable",
    "FewShotFeatures",
    "SearchHistory",
    "Seen",
    "add_items",
    "crossover",
    "fitness_scores",
    "mutate",
    "propose",
    "redundancy",
    "remove_items",
    "replace_items",
    "weighted_fitness",
    "weighted_sample",
]


# ---------------------------------------------------------------------------------------------- features
@dataclass
class FewShotFeatures:
    """Cached, L2-normalised image features of a labelled (few-shot) set and CLIP's logit scale.

    Attributes:
        features: ``(N, E)`` float32, each row of unit norm.
        labels: ``(N,)`` long class ids.
        logit_scale: ``exp(logit_scale)`` of the CLIP (e.g. 100).
    """

    features: torch.Tensor
    labels: torch.Tensor
    logit_scale: float

    @classmethod
    @torch.no_grad()
    def from_dataset(cls, clip_model, dataset, batch_size: int, device, transform=None) -> FewShotFeatures:
        """Encode every image of ``dataset`` (items ``(x, y, ...)``).

        Args:
            clip_model: an open_clip ``CLIP`` (``encode_image``; ``logit_scale`` its log) or a model with
                ``image_features(x)`` (normalised) and ``logit_scale`` (the scale itself), e.g. ``TextHeadModel``.
            dataset: an Avalanche dataset (its eval transform group is used) or any indexable dataset.
            batch_size: images per forward pass.
            device: where the model runs.
            transform: optional callable applied to each image batch before encoding (e.g. a dtype cast).
        """
        if hasattr(dataset, "eval") and not isinstance(dataset, torch.nn.Module):
            dataset = dataset.eval()  # Avalanche: the eval transform group (no augmentation)
        own = hasattr(clip_model, "image_features")
        feats, labels = [], []
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch[0].to(device)
            x = transform(x) if transform is not None else x
            f = clip_model.image_features(x) if own else clip_model.encode_image(x)
            feats.append(F.normalize(f.float(), dim=-1))
            labels.append(torch.as_tensor(batch[1]).long().to(device))
        scale = clip_model.logit_scale
        scale = float(scale.exp()) if isinstance(scale, torch.nn.Parameter) else float(scale)
        return cls(torch.cat(feats), torch.cat(labels), scale)

    def subset(self, classes: Sequence[int]) -> FewShotFeatures:
        """The samples whose label is in ``classes``, relabelled ``0..len(classes)-1`` in that order."""
        ids = torch.as_tensor(list(classes), device=self.labels.device)
        keep = (self.labels[:, None] == ids[None]).any(1)
        remap = (self.labels[keep][:, None] == ids[None]).float().argmax(1)
        return FewShotFeatures(self.features[keep], remap, self.logit_scale)


# ---------------------------------------------------------------------------------------------- fitness
def redundancy(class_emb: torch.Tensor) -> float:
    """``R = ||triu(T T^T, 1)||_2``: Frobenius norm of the strictly upper-triangular class-text cosine matrix."""
    t = F.normalize(class_emb.float(), dim=-1)
    return float(torch.triu(t @ t.t(), diagonal=1).norm())


@torch.no_grad()
def fitness_scores(feats: FewShotFeatures, class_emb: torch.Tensor) -> dict[str, float]:
    """Scores of a text classifier ``class_emb`` (``(C, E)``) on the few-shot features.

    Returns:
        ``top1`` and ``top5`` (fractions 0-1; top-k with k capped at C), ``ce`` (mean cross-entropy of
        ``logit_scale * cos``) and ``redundancy`` (``redundancy(class_emb)``).
    """
    t = F.normalize(class_emb.float(), dim=-1).to(feats.features.device)
    logits = feats.logit_scale * feats.features @ t.t()  # (N, C)
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    hit = top == feats.labels[:, None]
    return {
        "top1": float(hit[:, 0].float().mean()),
        "top5": float(hit.any(1).float().mean()),
        "ce": float(F.cross_entropy(logits, feats.labels)),
        "redundancy": redundancy(t),
    }


def weighted_fitness(
    scores: dict[str, float],
    w_top1: float = 0.1,
    w_top5: float = 0.1,
    w_redundancy: float = 0.05,
    w_ce: float = 10.0,
    black_box: bool = False,
) -> float:
    """ProAPO's fitness ``w1 top1% + w5 top5% + w_red R - w_ce CE`` (accuracies in percent, as the reference
    weighs them; the redundancy enters with a PLUS sign, as coded in the reference).

    ``black_box``: accuracy only (the reference's ``--black_box_flag``: weights 1, 0, 0, 0), i.e. top-1 in percent.
    """
    if black_box:
        w_top1, w_top5, w_redundancy, w_ce = 1.0, 0.0, 0.0, 0.0
    return (
        w_top1 * 100.0 * scores["top1"]
        + w_top5 * 100.0 * scores["top5"]
        + w_redundancy * scores["redundancy"]
        - w_ce * scores["ce"]
    )


# ---------------------------------------------------------------------------------------------- sampling
def weighted_sample(
    rng: random.Random, items: Sequence, weights: Sequence[float] | None, k: int, reverse: bool = False
) -> list:
    """``k`` distinct items drawn without replacement (sequential draws, renormalised after each).

    ``weights=None``: uniform. Otherwise the reference's rule: ``p = w + 1e-4``, shifted to ``p - min(p) + 1e-4`` if
    any is negative, normalised; ``reverse`` prefers low weights (``1 - p + 1e-4``, normalised).
    """
    if k > len(items):
        raise ValueError(f"cannot draw {k} distinct items from {len(items)}")
    if weights is None:
        return rng.sample(list(items), k)
    p = [float(w) + 1e-4 for w in weights]
    if min(p) < 0:
        low = min(p)
        p = [v - low + 1e-4 for v in p]
    total = sum(p)
    p = [v / total for v in p]
    if reverse:
        p = [1 - v + 1e-4 for v in p]
    pool, p, out = list(items), list(p), []
    for _ in range(k):
        i = rng.choices(range(len(pool)), weights=p)[0]
        out.append(pool.pop(i))
        p.pop(i)
    return out


class EditSizeTable:
    """ProAPO's momentum-updated weights over edit sizes ``2**j`` (``j = 0 .. size-1``).

    ``mode="linear"``: weights start at ``epsilon`` and move to ``fitness - baseline + epsilon``; ``"exp"``: start at
    1 and move to ``exp(fitness - epsilon - baseline)``; each update ``w_j <- m w_j + (1 - m) target``.
    """

    def __init__(self, size: int, mode: str = "linear", momentum: float = 0.9, epsilon: float = 1.0):
        if mode not in ("linear", "exp"):
            raise ValueError(f"mode={mode!r}; valid: 'linear', 'exp'")
        self.mode, self.momentum, self.epsilon = mode, momentum, epsilon
        self.weights = [epsilon if mode == "linear" else 1.0] * max(1, size)

    def draw(self, rng: random.Random, limit: int | None = None, weighted: bool = True) -> int:
        """An exponent ``j`` among the first ``limit + 1`` entries (all when None), by weight or uniformly."""
        n = len(self.weights) if limit is None else max(1, min(len(self.weights), limit + 1))
        if not weighted:
            return rng.choice(range(n))
        w = [max(v, 0.0) for v in self.weights[:n]]
        return rng.choices(range(n), weights=w if sum(w) > 0 else None)[0]

    def update(self, j: int, fitness: float, baseline: float) -> None:
        """Move weight ``j`` toward the candidate's fitness gain over ``baseline``."""
        if self.mode == "linear":
            target = fitness + self.epsilon - baseline
        else:
            target = math.exp(fitness - self.epsilon - baseline)
        self.weights[j] = self.weights[j] * self.momentum + target * (1 - self.momentum)


# ---------------------------------------------------------------------------------------------- operators
def add_items(rng: random.Random, current: Sequence, pool: Sequence, k: int, weights=None) -> list | None:
    """``current`` plus ``k`` items of ``pool`` not in it (appended; None when fewer than ``k`` are left).

    ``weights``: optional weights aligned with ``pool`` (``weighted_sample``).
    """
    rest = [(x, w) for x, w in zip(pool, weights if weights is not None else [None] * len(pool)) if x not in current]
    if k > len(rest) or k < 1:
        return None
    ws = None if weights is None else [w for _, w in rest]
    return [*current, *weighted_sample(rng, [x for x, _ in rest], ws, k)]


def remove_items(rng: random.Random, current: Sequence, k: int, weights=None) -> list | None:
    """``current`` without ``k`` of its items (None unless at least one item stays). ``weights`` (aligned with
    ``current``) prefer removing low-weight items (``reverse``)."""
    if k >= len(current) or k < 1:
        return None
    drop = weighted_sample(rng, list(current), weights, k, reverse=True)
    out = list(current)
    for x in drop:
        out.remove(x)
    return out


def replace_items(
    rng: random.Random, current: Sequence, pool: Sequence, k: int, weights_current=None, weights_pool=None
) -> list | None:
    """``k`` items of ``current`` swapped for ``k`` items of ``pool`` outside it (each removed item's slot is
    dropped and the new item appended, as the reference does). None when either side has fewer than ``k``."""
    rest = [(x, w) for x, w in zip(pool, weights_pool if weights_pool is not None else [None] * len(pool))
            if x not in current]  # fmt: skip
    if k < 1 or k > len(current) or k > len(rest):
        return None
    out_items = weighted_sample(rng, list(current), weights_current, k, reverse=True)
    in_items = weighted_sample(rng, [x for x, _ in rest], None if weights_pool is None else [w for _, w in rest], k)
    out = list(current)
    for old, new in zip(out_items, in_items):
        out.remove(old)
        out.append(new)
    return out


def mutate(rng: random.Random, pool: Sequence, k: int, weights=None) -> list | None:
    """A fresh random set of ``k`` pool items (None when the pool has fewer)."""
    if k < 1 or k > len(pool):
        return None
    return weighted_sample(rng, list(pool), weights, k)


def crossover(rng: random.Random, parents: Sequence[Sequence]) -> list | None:
    """Recombine parent sets: the items every parent holds are kept; ``n ~ U{1..D}`` of the ``D`` other items are
    drawn without replacement, weighted by how many parents hold them, and put first. None when ``D < 2`` (the
    reference crosses over only then)."""
    counts: dict[Any, int] = {}
    for p in parents:
        for x in p:
            counts[x] = counts.get(x, 0) + 1
    common = [x for x, c in counts.items() if c == len(parents)]
    diff = [x for x, c in counts.items() if c != len(parents)]
    if len(diff) < 2:
        return None
    n = rng.randint(1, len(diff))
    return [*weighted_sample(rng, diff, [counts[x] for x in diff], n), *common]


# ---------------------------------------------------------------------------------------------- candidates
class Seen:
    """Candidates already proposed, identified by ``key`` (default: the frozen set of their items)."""

    def __init__(self, key: Callable[[Any], Hashable] | None = None):
        self.key = key or (lambda c: frozenset(c))
        self._seen: set = set()

    def add(self, candidate) -> bool:
        """Record ``candidate``; False when it was seen before."""
        k = self.key(candidate)
        if k in self._seen:
            return False
        self._seen.add(k)
        return True

    def __contains__(self, candidate) -> bool:
        return self.key(candidate) in self._seen

    def __len__(self) -> int:
        return len(self._seen)


def propose(make: Callable[[], Any], n: int, seen: Seen, extra_tries: int = 64) -> Iterable:
    """Yield up to ``n`` new candidates from ``make()`` (None = no candidate), trying ``n + extra_tries`` times as
    the reference does; duplicates of ``seen`` are skipped (and every new one is recorded in it)."""
    made = 0
    for _ in range(n + extra_tries):
        if made >= n:
            return
        c = make()
        if c is None or not seen.add(c):
            continue
        made += 1
        yield c


# ---------------------------------------------------------------------------------------------- history
class SearchHistory:
    """Every candidate a search evaluated, in order: ``{"step", "candidate", <scores>, <extra>}`` rows."""

    def __init__(self, key: str = "fitness"):
        self.key = key  # the score ``best`` maximises and ``plot`` draws
        self.rows: list[dict[str, Any]] = []

    def append(self, step: int, candidate: Any, scores: dict[str, float], **extra: Any) -> dict[str, Any]:
        """Record one evaluated candidate (texts or ids); returns the row."""
        row = {"step": int(step), "candidate": _plain(candidate), **scores, **extra}
        self.rows.append(row)
        return row

    def best(self, where: Callable[[dict], bool] | None = None) -> dict[str, Any] | None:
        """The first row with the highest ``key`` score (among rows passing ``where``); None if there is none."""
        rows = [r for r in self.rows if self.key in r and (where is None or where(r))]
        return max(rows, key=lambda r: r[self.key]) if rows else None

    def to_json(self, path: str | Path) -> None:
        """Write the rows as a JSON list."""
        Path(path).write_text(json.dumps(self.rows, indent=1) + "\n")

    def plot(self, path: str | Path, title: str = "") -> None:
        """PNG: every candidate's score per step (dots) and the best so far (line)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [(r["step"], r[self.key]) for r in self.rows if self.key in r]
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, ".", ms=3, alpha=0.5, color="C0", label="candidate")
            best, bx, by = -math.inf, [], []
            for x, y in pts:
                best = max(best, y)
                bx.append(x)
                by.append(best)
            ax.step(bx, by, where="post", color="C3", label="best so far")
            ax.legend(fontsize=8)
        ax.set(xlabel="search step", ylabel=self.key, title=title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _plain(candidate: Any) -> Any:
    """A JSON-able copy of a candidate (tuples / sets become lists, nested)."""
    if isinstance(candidate, (list, tuple)):
        return [_plain(c) for c in candidate]
    if isinstance(candidate, (set, frozenset)):
        return sorted(_plain(c) for c in candidate)
    if isinstance(candidate, dict):
        return {str(k): _plain(v) for k, v in candidate.items()}
    return candidate
