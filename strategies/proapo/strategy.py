"""ProAPO (Qu et al., CVPR 2025, arXiv 2502.19844): progressive automatic prompt optimisation, fully offline.

Reference: MorningStarOvO/ProAPO@fefdf18 (MIT) ``tools/process/select_optimal_prompt.py``,
``task_specific_selection.py`` (stage 1, ATO), ``class_specific_selection_with_same_template.py`` (stage 2), read
and re-implemented, no code copied. No language model is called: the search edits texts drawn from pools.

Stage 1 (ATO, template search): the pool (``templates``, default the reference's ``imagenet_80`` expanded with the
dataset-type phrases of ``dataset``; the baseline "a photo of a {}." first) is scored template by template (history
step 0, ``op="memory"``), ``num_top`` random single templates start the population (the reference's
``sample_manual``), and ``epochs`` evolutionary epochs (``evolve.py``) search template sets; a set's classifier is the
mean of its templates' normalised class embeddings, re-normalised. Stage 2 (``mode="agnostic_and_dependent"`` and a
``descriptions`` source): class-specific description search (``describe.py``), optionally over ``num_description_
sample`` = 16 sampled descriptions per class (``description_sample``). The fitness is ``weighted_fitness`` with
``weights`` (stage 1) and ``specific_weights`` (stage 2), or accuracy only (``black_box``); ``official: <dataset>``
reads the reference's per-dataset overrides (``data/official_settings.json``, for ``backbone`` and ``shots``).

Protocols: few-shot benchmarks (1 shot per the paper): the search runs on the train experience (the reference's
few-shot index files ``fewshot_dataset/seed_<s>_num_shots_<k>.json`` are read by the few_shot scenario's
``fewshot_index``, which ``configs/fewshot/proapo*.yaml`` set), the texts found classify every test stream (new
classes get the best template set); class-incremental: one search per experience over the classes seen so far,
scored on the cached features of every seen experience (``feature_memory``); test-time benchmarks (no train
stream): no search, the baseline template (nothing to score on).

Deviations: one seeded ``random.Random`` (``init_seed``; the reference mixes Python and NumPy global RNGs); the
pool is de-duplicated; the reference's ``threshold_worst_decrease`` / ``num_max_prompt`` pool filters, its template
and description caches on disk and its selection of the final stage-2 prompt by *test* score are not reproduced
(ctta selects on the few-shot set; spec §22); see ``describe.py`` for the grouping notes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from ctta.strategies.proapo.describe import DescriptionSearch
from ctta.strategies.proapo.evolve import Evolution, EvolveSettings
from ctta.strategies.proapo.pools import build_pool, dataset_key, official_settings

from ctta.clip_prompting.descriptions import check_descriptions as check_bank
from ctta.clip_prompting.descriptions import load_descriptions, match_classnames
from ctta.clip_prompting.search import (
    FewShotFeatures,
    SearchTemplate,
    TemplateBank,
    fill,
    fitness_scores,
    mutate,
    weighted_fitness,
)
from ctta.clip_prompting.text_cache import encode_texts
from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotConfig, single_template, text_cache_of
from ctta.fields import ranged
from ctta.registry import STRATEGIES

MODES = ("agnostic", "agnostic_and_dependent")
WEIGHT_KEYS = {"score_top_1_rate": "w_top1", "score_top_5_rate": "w_top5", "score_redundant_score_l2_norm":
               "w_redundancy", "score_inter_class_score_CE": "w_ce"}  # fmt: skip


@dataclass(frozen=True)
class ProAPOConfig(ZeroShotConfig):
    """ProAPO's settings (reference defaults, ``tools/configs/option.py``)."""

    mode: str = "agnostic_and_dependent"  # APO_mode: agnostic (templates only) | agnostic_and_dependent
    templates: str = "imagenet_80"  # a shipped pool name or a JSON file of templates
    dataset: str = ""  # the reference's dataset key or ctta's name (dataset-type phrases, official settings)
    dataset_types: bool = True  # add_dataset_species_flag (the official scripts set it)
    official: bool = False  # apply the reference's per-dataset overrides for backbone / shots
    backbone: str = "ViT-B-32"  # which official settings: ViT-B-32 | RN50
    shots: int = 1
    descriptions: str = ""  # stage 2 source: a {class: [descriptions]} JSON, folder or builtin:digits ("": none)
    description_format: str = "json"  # format name for ctta.clip_prompting.descriptions.load_descriptions
    weights: tuple[float, float, float, float] = (0.1, 0.1, 0.05, 10.0)  # w_top1, w_top5, w_redundancy, w_ce
    specific_weights: tuple[float, ...] = ()  # stage 2 weights (empty: ``weights``)
    black_box: bool = False  # accuracy-only fitness (black_box_flag)
    # stage 1 (ATO)
    epochs: int = ranged(8, ge=0)
    num_top: int = ranged(4, ge=1)
    num_add: int = ranged(8, ge=0)
    num_remove: int = ranged(8, ge=0)
    num_replace: int = ranged(8, ge=0)
    num_mutation: int = ranged(8, ge=0)
    num_crossover: int = ranged(16, ge=0)
    add_mode: str = "one"  # one | more (2**j items, j from the momentum-updated table)
    weighted: bool = False  # prompt_sample_mode "weighted"
    weighted_mode: str = "linear"
    momentum: float = 0.9
    epsilon: float = 1.0
    crossover_mode: str = "slow"  # slow | quick
    sort_quirk: bool = True  # official: the last epoch's candidates are never selected
    # stage 2 (descriptions)
    epochs_outer: int = ranged(3, ge=0)
    epochs_inner: int = ranged(4, ge=0)
    num_max_search_group: int = ranged(4, ge=0)
    threshold_confuse: float = 4.0  # percent
    grouping: str = "confusion"  # confusion | kmeans (scikit-learn, seed kmeans_seed)
    kmeans_seed: int = 1234
    description_sample: bool = False  # keep num_description_sample random descriptions per class
    num_description_sample: int = 16
    num_dependent_top: int = 4
    num_dependent_add: int = 8
    num_dependent_remove: int = 8
    num_dependent_replace: int = 8
    num_dependent_mutation: int = 4
    num_dependent_crossover: int = 16
    feature_memory: bool = True  # class-incremental: score on every seen experience's features


#: reference: description sampling is forced on for these datasets (with an LLM description source)
SAMPLED = ("dtd", "imagenet", "sun397", "places365", "caltech101", "euro_sat", "fgvc_aircraft")


def _weights(d: dict, base: tuple) -> tuple:
    return tuple(float(d.get(k, base[i])) for i, k in enumerate(WEIGHT_KEYS))


def with_official(cfg: ProAPOConfig) -> tuple[ProAPOConfig, dict]:
    """``(cfg with the reference's per-dataset overrides, the overrides)`` when ``official`` (else ``(cfg, {})``):
    weights, epochs, crossover / sampling modes, groups, outer epochs, description sampling."""
    key = dataset_key(cfg.dataset)
    table = official_settings(key, cfg.backbone, cfg.shots) if cfg.official else {}
    if not table:
        return cfg, {}
    ag, sp = table.get("agnostic", {}), table.get("specific", {})
    sample = bool(sp.get("description_sample_flag", cfg.description_sample))
    sample = sample or (key in SAMPLED and bool(cfg.descriptions))
    weighted = ag.get("prompt_sample_mode", "mean") == "weighted" or cfg.weighted
    cfg = replace(cfg, weights=_weights(ag, cfg.weights), specific_weights=_weights(sp, cfg.specific_weights or
                  cfg.weights), epochs=int(ag.get("epochs", cfg.epochs)), weighted=weighted, description_sample=sample,
                  crossover_mode=ag.get("crossover_mode", cfg.crossover_mode),
                  num_max_search_group=int(sp.get("num_max_search_group", cfg.num_max_search_group)),
                  epochs_outer=int(sp.get("epochs_outer", cfg.epochs_outer)))  # fmt: skip
    return cfg, table


def check_descriptions(cfg: ProAPOConfig) -> None:
    """Fail before any search when stage 2's description file is missing (names the reference's file)."""
    src = cfg.descriptions
    if cfg.mode == "agnostic" or not src or src.startswith("builtin:") or Path(src).exists():
        return
    key = dataset_key(cfg.dataset) or "<dataset>"
    raise FileNotFoundError(f"proapo: description file {src} not found; ProAPO's are in MorningStarOvO/ProAPO@fefdf18 "
                            f"data/dataset/{key}/category_description/<source>.json (e.g. CuPL_full.json; copies of "
                            f"unlicensed CuPL/DCLIP data, so ctta ships none): pass your copy as descriptions=PATH")


CHOICES = {"mode": MODES, "add_mode": ("one", "more"), "weighted_mode": ("linear", "exp"),
           "crossover_mode": ("slow", "quick"), "grouping": ("confusion", "kmeans")}  # fmt: skip


@STRATEGIES.register("proapo", config=ProAPOConfig)
class ProAPO(SearchTemplate):
    """ProAPO's two-stage search (see the module notes); the texts found are the zero-shot head."""

    config_class = ProAPOConfig

    @classmethod
    def check_resources(cls, cfg: ProAPOConfig) -> None:
        """The template pool and stage 2's description file resolve, before anything loads."""
        build_pool(cfg.templates, dataset_key(cfg.dataset), cfg.dataset_types)
        check_descriptions(cfg)
        if cfg.mode != "agnostic" and cfg.descriptions:
            check_bank(cfg.descriptions, cfg.description_format, cfg.dataset)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.search_cfg, self.overrides = with_official(self.cfg)
        self.pool = build_pool(self.cfg.templates, dataset_key(self.cfg.dataset), self.cfg.dataset_types)
        self.best_templates: list[str] = [self.pool[0]]
        self.chosen_descriptions: dict[str, list[str]] = {}
        self.searches: list[dict] = []  # per search (train experience): its first history step and its classes
        check_descriptions(self.search_cfg)

    @classmethod
    def resolve_config(cls, config, method_kwargs, extra_valid=()):
        cfg = super().resolve_config(config, method_kwargs, extra_valid)
        for name, valid in CHOICES.items():
            if getattr(cfg, name) not in valid:
                raise ValueError(f"proapo: {name}={getattr(cfg, name)!r}; valid: {valid}")
        for name in ("weights", "specific_weights"):
            if len(getattr(cfg, name)) not in ((4,) if name == "weights" else (0, 4)):
                raise ValueError(f"proapo: {name} takes 4 numbers (w_top1, w_top5, w_redundancy, w_ce)")
        return cfg

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames: list[str], cfg) -> TextHeadModel:
        """Before any search the head is the pool's baseline template."""
        baseline = build_pool(cfg.templates, dataset_key(cfg.dataset), cfg.dataset_types)[0]
        return TextHeadModel(clip_model, tokenizer, classnames, single_template(baseline), cache=text_cache_of(cfg))

    def fallback_texts(self, name: str) -> list[str]:
        """A class the search never saw gets the best template set."""
        return [fill(t, name) for t in self.best_templates]

    # ------------------------------------------------------------------ the search
    def _fitness(self, weights):
        return lambda s: weighted_fitness(s, *weights, black_box=self.search_cfg.black_box)

    def _settings(self, stage: str) -> EvolveSettings:
        c = self.search_cfg
        common = dict(add_mode=c.add_mode, weighted=c.weighted, weighted_mode=c.weighted_mode, momentum=c.momentum,
                      epsilon=c.epsilon, crossover_mode=c.crossover_mode, sort_quirk=c.sort_quirk)  # fmt: skip
        if stage == "templates":
            return EvolveSettings(c.epochs, c.num_top, c.num_add, c.num_remove, c.num_replace, c.num_mutation,
                                  c.num_crossover, **common)  # fmt: skip
        return EvolveSettings(c.epochs_inner, c.num_dependent_top, c.num_dependent_add, c.num_dependent_remove,
                              c.num_dependent_replace, c.num_dependent_mutation, c.num_dependent_crossover, **common)

    def search(self, feats: FewShotFeatures, classnames: list[str]) -> list[list[str]]:
        step0 = (self.history.rows[-1]["step"] + 1) if self.history.rows else 0
        self.searches.append({"first_step": step0, "classes": list(classnames)})
        with self.progress_bar(None, f"proapo search ({len(classnames)} classes)") as bar:
            templates, step = self.search_templates(feats, classnames, step0, bar)
            self.best_templates = templates
            if self.search_cfg.mode == "agnostic" or not self.search_cfg.descriptions:
                return [[fill(t, n) for t in templates] for n in classnames]
            return self.search_descriptions(feats, classnames, templates, step, bar)

    def search_templates(self, feats, classnames, step0: int, bar) -> tuple[list[str], int]:
        """Stage 1: every single template (``memory``), then the evolutionary search; ``(best set, next step)``."""
        pool, c = self.pool, self.search_cfg
        bank, fitness = TemplateBank(self.model, pool, classnames), self._fitness(c.weights)

        def score(items):
            s = fitness_scores(feats, bank.set_embedding(items))
            return fitness(s), s

        single = []
        for i in range(len(pool)):
            f, s = score([i])
            single.append(f)
            self.history.append(step0, [pool[i]], {"fitness": f, **s}, stage="templates", op="memory")
        base = single[0]
        gain = [(f - base + c.epsilon) if c.weighted_mode == "linear" else float(torch.tensor(f - base).exp())
                for f in single]  # fmt: skip
        ids = list(range(len(pool)))
        w = gain if c.weighted else None
        evo = Evolution(ids, score, self._settings("templates"), self.rng, self.history, baseline=base,
                        item_weight=dict(enumerate(gain)), mutation=lambda e, k: mutate(self.rng, ids, k, w),
                        stage="templates", step0=step0, bar=bar, show=lambda it: [pool[i] for i in it])  # fmt: skip
        init = ids if c.num_top > len(ids) else self.rng.sample(ids, c.num_top)
        best = evo.run([[i] for i in init])
        return [pool[i] for i in best.items], step0 + c.epochs + 1

    def search_descriptions(self, feats, classnames, templates, step0: int, bar) -> list[list[str]]:
        """Stage 2 over each class's descriptions (item 0: the plain name)."""
        c = self.search_cfg
        bank = load_descriptions(c.descriptions, c.description_format, c.dataset)
        items = []
        for descs in match_classnames(bank, classnames):
            if c.description_sample and len(descs) > c.num_description_sample:
                descs = self.rng.sample(descs, c.num_description_sample)
            items.append([None, *descs])
        texts = [[[fill(t, n) + (f" {d}" if d else "") for t in templates] for d in it]
                 for n, it in zip(classnames, items)]  # fmt: skip
        flat = [t for per in texts for item in per for t in item]
        rows = encode_texts(self.model.clip, self.model.tokenizer, flat, self.model.cache)
        sizes = [len(per) * len(templates) for per in texts]
        item_emb = [r.view(len(per), len(templates), -1).mean(1) for r, per in zip(rows.split(sizes), texts)]
        search = DescriptionSearch(item_emb, self._fitness(c.specific_weights or c.weights),
                                   self._settings("descriptions"), c, self.rng, self.history, bar,
                                   show=lambda it: [[classnames[k], items[k][i]] for k, i in it])  # fmt: skip
        search.run(feats, step0)
        out = []
        for k, n in enumerate(classnames):
            self.chosen_descriptions[n] = [items[k][i] or "" for i in search.chosen[k]]
            out.append([t for i in search.chosen[k] for t in texts[k][i]])
        return out

    # ------------------------------------------------------------------ run outputs
    def run_artifacts(self) -> dict:
        """The search history and the prompts found (templates, chosen descriptions, official overrides)."""
        found = {"templates": self.best_templates, "descriptions": self.chosen_descriptions,
                 "official_overrides": self.overrides, "searches": self.searches}  # fmt: skip
        return {**super().run_artifacts(), "proapo_prompts": found}
