"""ProAPO stage 2: class-specific description search for groups of confused classes.

Reference: MorningStarOvO/ProAPO@fefdf18 ``tools/process/class_specific_selection_with_same_template.py``,
``tools/models/APO_score_func/get_score_based_ACC.py:get_acc_scores_and_dict_quick_and_group`` (confusion groups),
``tools/models/APO_split_group/split_group_by_Kmeans.py`` (k-means groups); read and re-implemented.

A class's text set is ``{fill(t, name) + " " + d : t in T, d in D_c}`` for the best template set ``T`` of stage 1 and
the class's chosen items ``D_c`` (the item ``None`` is the plain name, the start state of every class). Per outer
epoch the classes are grouped from the current classifier; each of the first ``num_max_search_group`` groups of two or
more classes is searched by the evolutionary loop over its (class, description) items; a candidate keeps at least
one item per group class and is scored on the whole few-shot set; the group's best (few-shot fitness, the
reference's ``use_top1``) is kept.

Grouping (``grouping="confusion"``): classes in ascending order of their few-shot cross-entropy (the reference's
sort); each not yet grouped class seeds a group joined by every class in its samples' top-5 for at least
``threshold_confuse`` % of them (a class may join several groups, as in the reference). ``grouping="kmeans"``:
scikit-learn ``KMeans`` (seed 1234, ``n_init=1``) on the class embeddings instead of faiss, k chosen by silhouette
over the reference's range; clusters of two or more classes, hardest (highest mean cross-entropy) first.

Which grouping is the reference's: ``confusion`` is its ``--only_performance_init_flag`` path. Its default path
(``split_group_by_Kmeans.py``) first forms a group of "important" classes (a per-class importance score against the
baseline), then takes the confusion groups (with ``--not_consider_performance_flag``: the faiss k-means cluster of
each group's seed class instead); the importance score is not reproduced, so ``confusion`` is ctta's default and
``kmeans`` a simplified k-means grouping (scikit-learn, not faiss: seeds give other clusters than faiss's).

Deviations: the reference seeds the confusion of the i-th sorted class with the samples of label i (an index mix-up);
here each class uses its own samples. Its k-means path also re-ranks classes by an importance score and may repeat a
class in a group; here clusters are used as they are. Its final stage-2 choice is the candidate with the best
*test* score; ctta never selects on the test set (spec §22), so the few-shot fitness decides (no switch offered:
the test set is not available to a strategy during training). Its per-candidate ``threshold_worst_decrease``
filtering of the description memory is not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from ctta.strategies.proapo.evolve import Evolution, EvolveSettings

from ctta.clip_prompting.search import FewShotFeatures, fitness_scores, mutate


def confusion_groups(feats: FewShotFeatures, class_emb: torch.Tensor, threshold: float) -> list[list[int]]:
    """The reference's confusion groups (see the module notes); ``threshold`` in percent."""
    logits = feats.logit_scale * feats.features @ F.normalize(class_emb, dim=-1).t()
    k = min(5, logits.shape[1])
    top5 = logits.topk(k, dim=1).indices
    present = sorted(set(feats.labels.tolist()))
    ce = {c: float(F.cross_entropy(logits[feats.labels == c], feats.labels[feats.labels == c])) for c in present}
    grouped, groups = set(), []
    for c in sorted(present, key=lambda c: ce[c]):
        if c in grouped:
            continue
        rows = top5[feats.labels == c]
        group = [c] + [j for j in present if j != c and 100.0 * float((rows == j).any(1).float().mean()) >= threshold]
        grouped.update(group)
        groups.append(group)
    return groups


def kmeans_groups(feats: FewShotFeatures, class_emb: torch.Tensor, seed: int = 1234, max_rate: float = 0.2):
    """k-means groups of the class embeddings (see the module notes)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = F.normalize(class_emb.float(), dim=-1).cpu().numpy()
    n = len(x)
    lo, hi = (2, 3) if int(n * max_rate) < 5 else (5, int(n * max_rate))
    best, labels = -1.0, None
    for k in range(lo, min(hi, n), 2):
        pred = KMeans(n_clusters=k, random_state=seed, n_init=1).fit_predict(x)
        score = silhouette_score(x, pred) if len(set(pred)) > 1 else -1.0
        if score > best:
            best, labels = score, pred
    if labels is None:
        return [list(range(n))]
    logits = feats.logit_scale * feats.features @ torch.as_tensor(x, device=feats.features.device).t()
    per = F.cross_entropy(logits, feats.labels, reduction="none")
    ce = [float(per[feats.labels == c].mean()) if (feats.labels == c).any() else 0.0 for c in range(n)]
    groups = [[c for c in range(n) if labels[c] == g] for g in sorted(set(labels.tolist()))]
    return sorted((g for g in groups if len(g) > 1), key=lambda g: -sum(ce[c] for c in g) / len(g))


class DescriptionSearch:
    """Stage 2 over precomputed item embeddings: ``item_emb[c][i]`` is the (un-normalised) mean over the template
    set of the texts of class ``c`` with item ``items[c][i]`` (item 0 is the plain name)."""

    def __init__(self, item_emb: list[torch.Tensor], score, settings: EvolveSettings, cfg, rng, history, bar=None,
                 show=None):  # fmt: skip
        self.item_emb, self.score_fn, self.settings, self.cfg = item_emb, score, settings, cfg
        self.rng, self.history, self.bar, self.show = rng, history, bar, show
        self.chosen: list[tuple[int, ...]] = [(0,) for _ in item_emb]  # every class starts with its plain name

    def class_emb(self, chosen: Sequence[Sequence[int]]) -> torch.Tensor:
        rows = torch.stack([self.item_emb[c][list(ids)].mean(0) for c, ids in enumerate(chosen)])
        return F.normalize(rows, dim=-1)

    def _groups(self, feats: FewShotFeatures) -> list[list[int]]:
        emb = self.class_emb(self.chosen)
        if self.cfg.grouping == "kmeans":
            return kmeans_groups(feats, emb, self.cfg.kmeans_seed)
        return confusion_groups(feats, emb, self.cfg.threshold_confuse)

    def _score_group(self, feats, group):
        def score(items: tuple) -> tuple[float, dict]:
            chosen = list(self.chosen)
            for c in group:
                chosen[c] = tuple(i for g, i in items if g == c)
            s = fitness_scores(feats, self.class_emb(chosen))
            return self.score_fn(s), s

        return score

    def run(self, feats: FewShotFeatures, step0: int) -> int:
        """Run every outer epoch; returns the next free history step."""
        step = step0
        for outer in range(self.cfg.epochs_outer):
            groups = [g for g in self._groups(feats) if len(g) > 1][: self.cfg.num_max_search_group]
            for gi, group in enumerate(groups):
                pool = [(c, i) for c in group for i in range(len(self.item_emb[c]))]
                evo = Evolution(pool, self._score_group(feats, group), self.settings, self.rng, self.history,
                                mutation=self._mutation(group), valid=lambda it, g=group: {c for c, _ in it} >= set(g),
                                stage=f"descriptions/outer{outer}/group{gi}", step0=step, bar=self.bar,
                                show=self.show)  # fmt: skip
                best = evo.run([tuple((c, i) for c in group for i in self.chosen[c])])
                for c in group:
                    self.chosen[c] = tuple(i for g, i in best.items if g == c)
                step += self.settings.epochs + 1
        return step

    def _mutation(self, group: list[int]):
        def make(epoch: int, k: int):
            per = [mutate(self.rng, list(range(len(self.item_emb[c]))), min(k - 1, len(self.item_emb[c])))
                   for c in group]  # fmt: skip
            return None if any(p is None for p in per) else [(c, i) for c, ids in zip(group, per) for i in ids]

        return make
