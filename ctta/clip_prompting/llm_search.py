"""The language-model-in-the-loop prompt optimiser (OPRO style) shared by IPO, the LLM black-box optimizer and GLOV.

Papers: OPRO (Yang et al., "Large Language Models as Optimizers", ICLR 2024), IPO (Du et al., NeurIPS 2024),
"Language Models as Black-Box Optimizers for Vision-Language Models" (Liu et al., CVPR 2024), GLOV (Mirza et al.).
References (behaviour read, re-implemented, no code copied; spec ``remaining-seed-systems.md`` C4-C6, S2):
lmsdss/IPO@ac804a9 ``optimization/opt_utils.py:run_evolution``, shihongl1998/LLM-as-a-blackbox-optimizer@6612c84
``auto_prompt_image_classification.py:main``, jmiemirza/GLOV@4c4fe64 ``utils/opt_utils.py``.

Shared with wave 2: ``ipo``, ``llm_optimizer`` (strategies/ipo.py, strategies/llm_optimizer.py) and ``glov``.

One loop for all three: the scored history builds the request (``build_messages``, method-specific), the language
model answers (``llm.generate(messages, n=..., **sampling)``, any ``ctta.llm`` backend: replayed logs make no call),
``parse`` turns each completion into candidate prompts, duplicates and invalid candidates are skipped, a completion
with no candidate is asked again (up to ``max_retries`` per step), and every new candidate is scored on cached
few-shot features (``template_scorer``). Everything is recorded: ``Scored`` rows in order, the optional
``SearchHistory`` (``step``, prompt, ``{"score", "loss"}``) and ``PromptOptimizer.events`` (each completion, what it
gave and why candidates were skipped).

Deviations shared by the methods (each method's module lists its own): candidates are scored on the whole cached
few-shot set (IPO rotates Dassl batches); a candidate repeated within a step or seen before (initial pool included) is
skipped, in generation order (IPO de-duplicates through a ``set``, whose order varies between runs); a language-model
error is raised, never retried (the black-box optimizer retries on any exception, which would hide a missing replay
entry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ctta.clip_prompting.search import SearchHistory, SearchTemplate
from ctta.clip_prompting.search_ops import fitness_scores
from ctta.clip_prompting.text_cache import encode_texts
from ctta.clip_prompting.zero_shot import ZeroShotConfig

__all__ = ["LLMSearchConfig", "LLMSearchTemplate", "PromptOptimizer", "Scored", "check_search_llm", "fill_slot",
           "search_llm",
           "texts_for_prompt", "template_scorer"]


@dataclass
class Scored:
    """One evaluated prompt.

    Attributes:
        prompt: the prompt text with its class slot (``"{}"`` or ``"<CLASS>"``).
        score: few-shot training accuracy in percent (0-100).
        loss: cross-entropy on the same features (``None`` when the scorer gives none).
        step: the search step that proposed it (``-1`` for the initial pool).
    """

    prompt: str
    score: float
    loss: float | None
    step: int


@dataclass(frozen=True)
class LLMSearchConfig(ZeroShotConfig):
    """The language model of a search strategy (``ctta.llm.make_llm``); a method's config adds its own fields."""

    llm: str = "replay"  # replay (the log only) | scripted:<file.json> | hf:<hub id or folder> | openai:<model>
    llm_log: str = ""  # the JSONL replay log: requests found in it are answered from it, live answers appended
    llm_name: str = ""  # the model name in the request keys ("": the backend's; pure replay: the log's only model)
    llm_base_url: str = ""  # openai: the server's base URL ("": the backend's default)
    llm_api_key_env: str = "OPENAI_API_KEY"  # openai: NAME of the environment variable holding the key


def search_llm(cfg: LLMSearchConfig, device: Any = None, **backend_options: Any) -> Any:
    """The recorded / replayed language model ``cfg`` names (``ctta.llm.make_llm``); the key is never stored.
    ``backend_options`` go to the live backend (e.g. ``device`` / ``dtype`` of an ``hf:`` model); ``device`` (the
    strategy's) is the default device of an ``hf:`` model."""
    from ctta.llm import make_llm

    options: dict[str, Any] = {"name": cfg.llm_name} if cfg.llm_name else {}
    if device is not None and cfg.llm.startswith("hf:"):
        options["device"] = device
    options.update(backend_options)
    if cfg.llm.startswith("openai:"):
        options["api_key_env"] = cfg.llm_api_key_env
        if cfg.llm_base_url:
            options["base_url"] = cfg.llm_base_url
    return make_llm(cfg.llm, cfg.llm_log or None, **options)


def check_search_llm(cfg: LLMSearchConfig) -> None:
    """Check, before anything loads, what ``search_llm(cfg)`` will need from the user (``ctta.llm.check_llm``)."""
    from ctta.llm import check_llm

    check_llm(cfg.llm, cfg.llm_log or None, cfg.llm_api_key_env, cfg.llm_base_url)


def fill_slot(prompt: str, name: str, class_slot: str = "{}") -> str:
    """The prompt with every class slot replaced by ``name`` (``_`` in the name read as a space, as both refs do)."""
    return prompt.replace(class_slot, name.replace("_", " "))


def texts_for_prompt(prompt: str, class_slot: str = "{}") -> Callable[[list[str]], list[list[str]]]:
    """A ``texts_for`` function (class names -> one text per class) for a zero-shot head built from one prompt."""

    def texts_for(classnames: list[str]) -> list[list[str]]:
        return [[fill_slot(prompt, name, class_slot)] for name in classnames]

    return texts_for


def template_scorer(
    feats: Any, classnames: Sequence[str], encode: Callable[[list[str]], torch.Tensor], class_slot: str = "{}"
) -> Callable[[str], tuple[float, float]]:
    """Scores a prompt on cached few-shot features: ``(accuracy in percent, cross-entropy)``.

    Args:
        feats: a ``FewShotFeatures`` (``features`` (N, E) normalised, ``labels`` (N,), ``logit_scale``).
        classnames: the classes the labels index.
        encode: texts -> (len(texts), E) L2-normalised text features (e.g. ``text_cache.encode_texts``).
        class_slot: the slot replaced by each class name.

    Returns:
        ``evaluate(prompt) -> (acc, ce)``: logits = logit_scale * image @ text.T over the classes, acc = 100 * top-1
        accuracy, ce = mean cross-entropy of those logits (IPO's score and loss; the black-box optimizer's accuracy),
        through ``search_ops.fitness_scores``.
    """
    names = list(classnames)

    def evaluate(prompt: str) -> tuple[float, float]:
        with torch.no_grad():
            text = encode([fill_slot(prompt, name, class_slot) for name in names])  # (C, E)
        scores = fitness_scores(feats, text)
        n = len(feats.labels)
        return 100.0 * round(scores["top1"] * n) / n, scores["ce"]  # exact percentage (top1 is a float32 mean)

    return evaluate


class PromptOptimizer:
    """The OPRO-style loop: request, parse, de-duplicate, score, record (see the module docstring).

    Args:
        llm: a ``ctta.llm.LanguageModel`` (``generate(messages, **sampling) -> list[str]``).
        build_messages: ``(scored so far, step) -> messages`` (OpenAI chat format).
        parse: one completion -> candidate prompts (``[]``: the completion is invalid and asked again).
        evaluate: prompt -> ``(score, loss)``; ``template_scorer`` builds one.
        steps: search steps after the initial pool.
        per_step: completions wanted per step.
        sampling: sampling settings passed to ``generate`` (``n`` = completions per call, default 1).
        max_retries: extra completions per step that may replace invalid ones (0: none).
        history: a ``SearchHistory`` receiving every scored prompt (optional).
        class_slot: candidates without it are skipped (``None``: no such check).
        valid: extra check, prompt -> reason to skip it or ``None`` (e.g. too many tokens).
        history_extra: extra fields of every history row (e.g. ``{"experience": 2}``).
    """

    def __init__(
        self,
        llm: Any,
        build_messages: Callable[[list[Scored], int], list[dict[str, str]]],
        parse: Callable[[str], list[str]],
        evaluate: Callable[[str], tuple[float, float | None]],
        steps: int,
        per_step: int,
        sampling: dict[str, Any],
        max_retries: int = 0,
        history: Any | None = None,
        class_slot: str | None = "{}",
        valid: Callable[[str], str | None] | None = None,
        history_extra: dict[str, Any] | None = None,
    ) -> None:
        if steps < 0 or per_step < 1 or max_retries < 0:
            raise ValueError(
                f"need steps >= 0, per_step >= 1, max_retries >= 0 (got {steps}, {per_step}, {max_retries})"
            )
        self.llm, self.build_messages, self.parse, self.evaluate = llm, build_messages, parse, evaluate
        self.steps, self.per_step, self.max_retries = steps, per_step, max_retries
        self.sampling = dict(sampling)
        self.history, self.class_slot, self.valid = history, class_slot, valid
        self.history_extra = dict(history_extra or {})
        self.scored: list[Scored] = []
        self.events: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def run(self, initial: Sequence[str]) -> list[Scored]:
        """Scores ``initial`` (step -1), then runs ``steps`` steps; returns every scored prompt in order."""
        self._score_new(list(initial), step=-1)
        for step in range(self.steps):
            messages = self.build_messages(list(self.scored), step)
            self._score_new(self._propose(messages, step), step)
        return list(self.scored)

    def best(self) -> Scored:
        """The highest-scoring prompt (ties: lower loss, then the earlier one)."""
        if not self.scored:
            raise ValueError("no prompt was scored")
        return min(self.scored, key=lambda s: (-s.score, s.loss if s.loss is not None else 0.0))

    def _propose(self, messages: list[dict[str, str]], step: int) -> list[str]:
        """Asks for completions until ``per_step`` were received (invalid ones replaced up to ``max_retries``)."""
        sampling = dict(self.sampling)
        per_call = int(sampling.pop("n", 1))
        received, retries, candidates = 0, 0, []
        while received < self.per_step:
            for text in self.llm.generate(messages, n=min(per_call, self.per_step - received), **sampling):
                parsed = self.parse(text)
                self.events.append({"step": step, "response": text, "parsed": parsed})
                if not parsed and retries < self.max_retries:
                    retries += 1
                    continue
                received += 1
                candidates.extend(parsed)
        return candidates

    def _skip_reason(self, prompt: str) -> str | None:
        if not prompt.strip():
            return "empty"
        if prompt in self._seen:
            return "duplicate"
        if self.class_slot is not None and self.class_slot not in prompt:
            return f"no class slot {self.class_slot!r}"
        return self.valid(prompt) if self.valid is not None else None

    def _score_new(self, prompts: list[str], step: int) -> None:
        for prompt in prompts:
            reason = self._skip_reason(prompt)
            if reason is not None:
                self.events.append({"step": step, "skipped": prompt, "reason": reason})
                if reason != "duplicate":
                    self._seen.add(prompt)
                continue
            self._seen.add(prompt)
            score, loss = self.evaluate(prompt)
            row = Scored(prompt, float(score), None if loss is None else float(loss), step)
            self.scored.append(row)
            if self.history is not None:
                self.history.append(step, prompt, {"score": row.score, "loss": row.loss}, **self.history_extra)


class LLMSearchTemplate(SearchTemplate):
    """A ``SearchTemplate`` whose search is a ``PromptOptimizer`` run per train experience (IPO, LLM optimizer).

    Provides the config's language model (``llm``, built on first use: evaluation alone needs none), a scorer of
    prompts on the cached features (``scorer``), one optimiser run per experience (``optimize``: history rows and
    completions tagged with the experience index, ``searches`` counts the runs) and the ``llm_events`` artifact.
    ``self.history`` keeps the score (0-100) as its key.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = SearchHistory(key="score")
        self.llm_events: list[dict[str, Any]] = []
        self.searches = 0
        self._llm: Any = None

    @classmethod
    def check_resources(cls, cfg) -> None:
        """The language model's files and key (``check_search_llm``), before anything loads."""
        check_search_llm(cfg)

    @property
    def llm(self) -> Any:
        """The recorded / replayed language model of the config (``search_llm``)."""
        if self._llm is None:
            self._llm = search_llm(self.cfg, self.device)
        return self._llm

    def scorer(self, feats: Any, classnames: Sequence[str], class_slot: str = "{}") -> Callable[[str], tuple]:
        """``template_scorer`` over the head's CLIP, tokenizer and text cache."""
        model = self.model
        return template_scorer(feats, classnames, lambda t: encode_texts(model.clip, model.tokenizer, t, model.cache),
                               class_slot)  # fmt: skip

    def optimize(self, initial: Sequence[str], **optimizer_kwargs: Any) -> PromptOptimizer:
        """Run a ``PromptOptimizer`` (``optimizer_kwargs``: all but ``llm`` / ``history``) from ``initial``."""
        tag = {"experience": self.searches}
        optimizer = PromptOptimizer(self.llm, history=self.history, history_extra=tag, **optimizer_kwargs)
        optimizer.run(initial)
        self.llm_events += [{**tag, **e} for e in optimizer.events]
        self.searches += 1
        return optimizer

    def run_artifacts(self) -> dict[str, Any]:
        """The search history and every language-model completion with what it gave."""
        return {**super().run_artifacts(), "llm_events": list(self.llm_events)}
