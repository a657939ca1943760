"""Discrete-search strategies: "training" is a search over texts scored on the few-shot features of the train
experience; the texts found become a zero-shot text classifier (nothing trains).

Shape of ProAPO, the PAC-Bayes greedy search, IPO, the LLM black-box optimizer and GLOV (``remaining-seed-systems.md``
§0 and block S2). The pure parts (features, fitness, operators, history) live in ``ctta.clip_prompting.search_ops``
and are re-exported here. Paper of the fitness and the operators: ProAPO (Qu et al., CVPR 2025, arXiv 2502.19844;
MorningStarOvO/ProAPO@fefdf18, re-implemented, no code copied).

``SearchTemplate`` (on ``ZeroShotTemplate``): per train experience, ``fit_experience`` caches the experience's image
features (eval transform), calls ``search(feats, classnames) -> per-class texts`` and makes those texts the head. The
classes found keep their texts; a class never searched (e.g. the new classes of a base-to-new benchmark) gets
``fallback_texts(name)`` (default: the head's texts before any search; ProAPO: its best template set). On a
class-incremental stream the search covers the classes seen so far and, by default, scores on the cached few-shot
features of every experience seen so far (``feature_memory``; features, not images, are kept). Every evaluated
candidate is a row of ``self.history``; the runner writes ``run_artifacts()`` next to results.json
(``search_history.json`` and ``search_history.png``).

Deviations: none beyond ``search_ops``'s (a search's own notes list its own).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ctta.clip_prompting.search_ops import (
    EditSizeTable,
    FewShotFeatures,
    SearchHistory,
    Seen,
    add_items,
    crossover,
    fitness_scores,
    mutate,
    propose,
    redundancy,
    remove_items,
    replace_items,
    weighted_fitness,
    weighted_sample,
)
from ctta.clip_prompting.text_cache import encode_texts
from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotTemplate
from ctta.evaluation import ProgressPlugin

__all__ = [
    "EditSizeTable",
    "FewShotFeatures",
    "SearchHistory",
    "SearchTemplate",
    "Seen",
    "TemplateBank",
    "add_items",
    "crossover",
    "fill",
    "fitness_scores",
    "mutate",
    "propose",
    "redundancy",
    "remove_items",
    "replace_items",
    "weighted_fitness",
    "weighted_sample",
]


def fill(template: str, name: str) -> str:
    """``template`` with the class name in its ``{}`` slot (``_`` in the name becomes a space)."""
    return template.format(name.replace("_", " "))


class TemplateBank:
    """Every (template, class) text of a template pool encoded once: ``emb`` ``(P, C, E)``, rows normalised.

    A template set's classifier is ``set_embedding(indices)``: per class the mean of its templates' normalised
    embeddings, re-normalised (the same as ``class_embeddings`` over the filled texts).
    """

    def __init__(self, model: TextHeadModel, templates: Sequence[str], classnames: Sequence[str]):
        self.templates, self.classnames = list(templates), list(classnames)
        texts = [fill(t, c) for t in self.templates for c in self.classnames]
        rows = encode_texts(model.clip, model.tokenizer, texts, model.cache)
        self.emb = rows.view(len(self.templates), len(self.classnames), -1)  # (P, C, E)

    def set_embedding(self, indices: Sequence[int]) -> torch.Tensor:
        """``(C, E)`` classifier of the template set ``indices``."""
        m = self.emb[list(indices)].mean(0)
        return m / m.norm(dim=-1, keepdim=True)

    def texts(self, indices: Sequence[int], name: str) -> list[str]:
        """The texts of class ``name`` under the template set ``indices``."""
        return [fill(self.templates[i], name) for i in indices]


class SearchTemplate(ZeroShotTemplate):
    """A zero-shot strategy whose texts come from a search on the train experience; see the module notes.

    Subclasses implement ``search(feats, classnames)`` and may override ``fallback_texts(name)``. The config may have
    ``feature_memory`` (bool, default True: class-incremental searches score on every seen experience's features).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = SearchHistory()
        self.found: dict[str, list[str]] = {}
        self._memory: list[FewShotFeatures] = []
        self._initial_texts_for = self.model.texts_for
        seed = getattr(self.cfg, "init_seed", None)
        self.rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed))

    # ------------------------------------------------------------------ subclasses
    def search(self, feats: FewShotFeatures, classnames: list[str]) -> list[list[str]]:
        """The texts of each class of ``classnames`` found on ``feats`` (labels index ``classnames``)."""
        raise NotImplementedError(f"{type(self).__name__}.search")

    def fallback_texts(self, name: str) -> list[str]:
        """Texts of a class the search never saw (default: the head's texts before any search)."""
        return self._initial_texts_for([name])[0]

    # ------------------------------------------------------------------ the search step
    def fewshot_features(self) -> FewShotFeatures:
        """The train experience's features (eval transform), labels indexing the head's classes; on a
        class-incremental stream together with the earlier experiences' (``feature_memory``)."""
        feats = FewShotFeatures.from_dataset(self.model, self.experience.dataset, self.eval_mb_size, self.device,
                                             transform=self._input_transform)  # fmt: skip
        if self.seen is None:
            return feats
        if getattr(self.cfg, "feature_memory", True):
            self._memory.append(feats)
            feats = FewShotFeatures(torch.cat([f.features for f in self._memory]),
                                    torch.cat([f.labels for f in self._memory]), feats.logit_scale)  # fmt: skip
        return feats.subset(self.seen)

    def _input_transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.half() if self.prec == "fp16" and self.device.type == "cuda" else x

    def fit_experience(self) -> None:
        feats = self.fewshot_features()
        names = list(self.model.classnames)
        per_class = self.search(feats, names)
        if len(per_class) != len(names) or any(not t for t in per_class):
            raise ValueError(f"{type(self).__name__}.search must return one non-empty text list per class")
        self.found.update(zip(names, (list(t) for t in per_class)))
        self.model.set_texts_for(self.texts_for)

    def texts_for(self, names: list[str]) -> list[list[str]]:
        """The head's texts: the search's for the classes it saw, ``fallback_texts`` for the others."""
        return [self.found[n] if n in self.found else self.fallback_texts(n) for n in names]

    def progress_bar(self, total: int, desc: str) -> tqdm:
        """A tqdm bar for a search's steps, shown when the run's progress bar is (``ProgressPlugin``)."""
        shown = any(isinstance(p, ProgressPlugin) and not p.bar.disable for p in self.plugins)
        return tqdm(total=total, desc=desc, unit="step", disable=not shown, leave=False, dynamic_ncols=True)

    # ------------------------------------------------------------------ run outputs
    def run_artifacts(self) -> dict[str, Any]:
        """``{"search_history": rows}``: every evaluated candidate (the runner writes it as JSON)."""
        return {"search_history": list(self.history.rows)}

    def plot_artifact(self, name: str, path: str | Path) -> bool:
        """Draw artifact ``name`` as a PNG at ``path``; True when drawn."""
        if name != "search_history" or not self.history.rows:
            return False
        self.history.plot(path, title=type(self).__name__)
        return True
