"""Language models as black-box optimizers of CLIP prompts (Liu et al., "Language Models as Black-Box Optimizers for
Vision-Language Models", CVPR 2024). Official code: shihongl1998/LLM-as-a-blackbox-optimizer@6612c84
``auto_prompt_image_classification.py:main``, ``prompt_pool.py:get_message``, ``utils.py:{validate_message,
getTopBotK, get_best5_average, eval}``, ``init_templates.py``, ``load_laioncoco_templates.py`` (no licence file:
behaviour read, re-implemented, no code, prompt wording or data copied; spec ``remaining-seed-systems.md`` C6).

The search (``ctta.clip_prompting.llm_search.PromptOptimizer``): the initial pool (the 80 CLIP ImageNet templates,
``init_templates: clip80``, or the user's LAION-COCO caption templates, one per line, ``init_templates: FILE``,
optionally sampled: ``laion_sample_size`` templates drawn with ``random.Random(laion_seed)``, as the reference's
``load_laioncoco_templates.py`` draws from its 1M-caption file) is scored by 1-shot *training* accuracy of the
zero-shot head ``template.format(class)``. Each of ``steps`` (10) iterations shows the chat model
(gpt-3.5-turbo-0301, temperature 1) one user message with the ``top_k`` (3) best templates and the ``top_k`` worst
(worst first) and asks for ``n_templates`` (1) better template: under 15 words, a similar structure, each template on
its own line starting with ``"- "``. A response whose ``"- "`` lines include one without ``{}`` or one that
``str.format`` refuses, or that has no such line, is asked again (at most ``max_tries`` (15) calls); every template of a
valid response is scored unless already scored. Logged as the reference does: the mean training accuracy of the 5
best templates before each iteration (the ``best5`` artifact; its last row, ``step == steps``, after the last). The
head uses the best template (highest training accuracy; ties: the earlier one) for every class.

Protocols: few-shot (the paper's: 1 shot, all classes) and base-to-new (search on base, evaluate base and new); a
class-incremental stream runs a new search per training experience over the classes seen so far, its pool = the
initial pool plus every template found so far (scored again on the new data).

Deviations: the reference's default ``--prompt_method good_bad_better`` is not defined in ``get_message`` (only
``method_1``), so the default run crashes; ctta uses ``method_1``'s content, in its own wording (``message``
overrides it: ``{n}``, ``{good}``, ``{bad}`` are filled); a language-model error is raised, not retried (the
reference retries any exception, which would hide a missing replay entry); a step whose ``max_tries`` responses were
all invalid adds nothing (the reference crashes iterating ``None``); accuracies are in percent; the pool is ``80
CLIP templates`` for every dataset (the reference's ``openai`` pool is a per-dataset selection, ``coop`` CoOp's
per-dataset hand prompt; its default, ``laioncoco``, is the user's file here); best-5 averages are logged on the
training data only (the reference also logs validation and test averages; here the test sets are evaluated once, with
the best template); a pool template ``str.format`` refuses is skipped (the reference drops it when scoring fails).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctta.clip_prompting.llm_search import LLMSearchConfig, LLMSearchTemplate, Scored, fill_slot, texts_for_prompt
from ctta.clip_prompting.prompt_templates import CLIP_IMAGENET_TEMPLATES
from ctta.clip_prompting.search import FewShotFeatures
from ctta.clip_prompting.zero_shot import TextHeadModel, text_cache_of
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["BLACKBOX_MESSAGE", "LLMOptimizer", "LLMOptimizerConfig", "best5_average", "blackbox_message",
           "load_template_file", "parse_templates", "top_bottom"]

BLACKBOX_REPO = "shihongl1998/LLM-as-a-blackbox-optimizer@6612c84"
BLACKBOX_MESSAGE = (
    "I have two lists of prompt templates for image classification: good ones and bad ones. Some characteristics make "
    "a template good or bad. Using them, write {n} better template.\n"
    "Good templates:\n{good}\n\n"
    "Bad templates:\n{bad}\n\n"
    "Requirements:\n"
    "- Reply with the template only.\n"
    "- The template has fewer than 15 words.\n"
    "- The template has a structure similar to the templates above.\n"
    "- Write each template on its own line, starting with '- '.\n"
)


def ranked(scored: Sequence[Scored]) -> list[Scored]:
    """Best first by score; equal scores keep their order (the reference's stable descending sort)."""
    return sorted(scored, key=lambda s: -s.score)


def top_bottom(scored: Sequence[Scored], k: int = 3) -> tuple[list[str], list[str]]:
    """The ``k`` best templates (best first) and the ``k`` worst (worst first)."""
    order = [s.prompt for s in ranked(scored)]
    return order[:k], order[::-1][:k]


def blackbox_message(scored: Sequence[Scored], k: int = 3, n: int = 1, message: str = BLACKBOX_MESSAGE) -> str:
    """The request: ``message`` filled with the top-``k`` and bottom-``k`` templates, one per line."""
    good, bad = top_bottom(scored, k)
    return message.format(n=n, good="\n".join(good), bad="\n".join(bad))


def parse_templates(text: str) -> list[str]:
    """The templates of a response: every line starting with ``"- "`` (the rest of it); ``[]`` (invalid) when there
    is none, or when one lacks ``{}`` or cannot be formatted with one class name."""
    out = []
    for line in text.splitlines():
        if not line.startswith("- "):
            continue
        template = line[2:]
        if "{}" not in template:
            return []
        try:
            template.format("test")
        except (IndexError, KeyError, ValueError):
            return []
        out.append(template)
    return out


def best5_average(scored: Sequence[Scored]) -> float | None:
    """Mean score of the 5 best templates (None with fewer than 5, when the reference logs nothing)."""
    top = ranked(scored)[:5]
    return sum(s.score for s in top) / 5 if len(top) == 5 else None


def load_template_file(path: str | Path, sample_size: int = 0, seed: int = 0) -> list[str]:
    """Templates from a text file (one per line, stripped); ``sample_size`` > 0 draws that many with
    ``random.Random(seed).sample`` before empty lines are dropped (the reference's LAION-COCO draw, same order).

    Raises:
        FileNotFoundError: naming the file and where the reference's LAION-COCO templates come from.
    """
    p = template_file(path)
    templates = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    if sample_size:
        templates = random.Random(seed).sample(templates, min(sample_size, len(templates)))
    return [t for t in templates if t]


def template_file(path: str | Path) -> Path:
    """``path`` if it is a file (``load_template_file``'s check).

    Raises:
        FileNotFoundError: naming the file and where the reference's LAION-COCO templates come from.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"template file {p} not found: the LAION-COCO templates of {BLACKBOX_REPO} are "
            "laion_coco_results/laion_coco_samples_size_80_seed_<seed>.txt, sampled by its load_laioncoco_templates.py "
            "from laion_coco_1M_seed_0.txt (a download linked in that script); pass your file (one template per line)"
        )
    return p


@dataclass(frozen=True)
class LLMOptimizerConfig(LLMSearchConfig):
    """Settings at the reference's defaults (``auto_prompt_image_classification.py``'s arguments)."""

    steps: int = ranged(10, ge=0)  # num_iters
    top_k: int = ranged(3, ge=1)  # template_pool_size: best and worst templates shown
    n_templates: int = ranged(1, ge=1)  # num_templates_from_gpt: templates asked for
    max_tries: int = ranged(15, ge=1)  # calls per iteration until a valid response
    temperature: float = ranged(1.0, ge=0)
    max_tokens: int = ranged(256, ge=1)  # the reference sets none (the API's default)
    init_templates: str = "clip80"  # clip80 (CLIP's 80 ImageNet templates) | a file of templates, one per line
    laion_sample_size: int = ranged(0, ge=0)  # > 0: draw that many templates from the file (LAION-COCO: 80)
    laion_seed: int = 0  # the draw's seed
    message: str = BLACKBOX_MESSAGE  # the request ({n}, {good}, {bad} are filled)
    feature_memory: bool = True  # class-incremental: score on every seen experience's cached features


def format_check(template: str) -> str | None:
    """Skip a template ``str.format`` refuses (the reference drops such initial templates when scoring fails)."""
    try:
        template.format("test")
    except (IndexError, KeyError, ValueError):
        return "str.format refuses it"
    return None


def initial_templates(cfg: LLMOptimizerConfig) -> list[str]:
    """The initial pool the config names."""
    if cfg.init_templates == "clip80":
        return list(CLIP_IMAGENET_TEMPLATES)
    return load_template_file(cfg.init_templates, cfg.laion_sample_size, cfg.laion_seed)


@STRATEGIES.register("llm_optimizer", config=LLMOptimizerConfig)
class LLMOptimizer(LLMSearchTemplate):
    """The LLM black-box optimizer as an Avalanche strategy: one template search per train experience."""

    config_class = LLMOptimizerConfig

    @classmethod
    def check_resources(cls, cfg: LLMOptimizerConfig) -> None:
        """The language model's (``LLMSearchTemplate``) and the initial template file, before anything loads."""
        super().check_resources(cfg)
        if cfg.init_templates != "clip80":
            template_file(cfg.init_templates)

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames: list[str], cfg: LLMOptimizerConfig) -> TextHeadModel:
        first = initial_templates(cfg)[0]  # the head before any search: the pool's first template
        return TextHeadModel(clip_model, tokenizer, classnames, texts_for_prompt(first), cache=text_cache_of(cfg))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = initial_templates(self.cfg)
        self.best_template = self.pool[0]
        self.best5: list[dict[str, Any]] = []

    def messages(self, scored: list[Scored], step: int) -> list[dict[str, str]]:
        """The iteration's request; logs the best-5 average first, as the reference does."""
        avg = best5_average(scored)
        if avg is not None:
            self.best5.append({"experience": self.searches, "step": step, "best5": avg})
        text = blackbox_message(scored, self.cfg.top_k, self.cfg.n_templates, self.cfg.message)
        return [{"role": "user", "content": text}]

    def search(self, feats: FewShotFeatures, classnames: list[str]) -> list[list[str]]:
        cfg, experience = self.cfg, self.searches
        optimizer = self.optimize(
            self.pool, build_messages=self.messages, parse=parse_templates, evaluate=self.scorer(feats, classnames),
            steps=cfg.steps, per_step=1, max_retries=cfg.max_tries - 1, valid=format_check,
            sampling={"temperature": cfg.temperature, "max_tokens": cfg.max_tokens},
        )
        scored = optimizer.scored
        self.best5.append({"experience": experience, "step": cfg.steps, "best5": best5_average(scored)})
        self.pool = list(dict.fromkeys([*self.pool, *(s.prompt for s in scored)]))  # found templates stay
        self.best_template = ranked(scored)[0].prompt  # training accuracy only
        return texts_for_prompt(self.best_template)(classnames)

    def fallback_texts(self, name: str) -> list[str]:
        """Classes never searched (base-to-new: the new ones) use the best template too."""
        return [fill_slot(self.best_template, name)]

    def run_artifacts(self) -> dict[str, Any]:
        """The search history, the best-5 averages, every completion with what it gave, and the best template."""
        return {**super().run_artifacts(), "best5": list(self.best5), "best_template": self.best_template}
