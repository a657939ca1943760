"""GLOV's search (Mirza et al., arXiv 2410.06154): a language model proposes prompt templates from the best and worst
so far, scored by 1-shot training accuracy, steered by a hidden-state offset towards the best prompt.

Reference (read, re-implemented, nothing copied): jmiemirza/GLOV@4c4fe64 ``main_clip.py:llm_opt``,
``utils/opt_utils.py``, ``utils/llm_opt_helpers.py``, ``trainers/llama_model.py``, ``scripts/clip_opt.sh``
(Llama-3-8B-Instruct, 100 global steps, 10 sampled answers per step, temperature 1.0, top-k 50, top-p 0.9, 50 new
tokens unguided / 75 guided, top/bottom 5, ``diff_layer`` 17, alpha in {1.0, 0.75, 0.5, 0.25}, CLIP ViT-B/32,
1 shot). The loop is ``ctta.clip_prompting.llm_search.PromptOptimizer``; requests and parsing are ``meta_prompt.py``;
the steering is ``steering.py``.

* Step -1 scores the initial template ("A photo of a {}."). Each step asks ``per_step`` answers, parses each into
  templates and scores every new one (top-1 % and cross-entropy on the train experience's cached features).
* Guidance (GLOV's ``mean_emb`` + ``specific_layer_diff``): from the first step after a template beats the best
  accuracy so far, every request is generated with ``alpha * (h(best) - h(runner-up))`` added at decoder layer
  ``layer`` (``h`` = mean hidden state; runner-up = the best template scoring strictly below the best, which GLOV's
  code calls the "worst"); the pair changes only when the best improves. The steering settings and the SHA-256 of
  the vector are part of the request's replay key (``key_extra``), so a replay is exact: without a local model the
  digest is read from the log's records of the same (layer, best, runner-up, model).
* The head: the ``ensemble`` best templates by few-shot accuracy (ties: lower loss, then earlier), as a template
  ensemble (GLOV's discovered lists hold three per dataset; its code writes per-step training and validation
  accuracies and the reported prompts were picked from them, a step ctta replaces by this rule). Selection uses the
  training data only, never the test set.

Deviations: candidates already scored are skipped (``PromptOptimizer``; GLOV re-scores repeats); the chat request
ends with the generation prompt (GLOV's ``apply_chat_template(add_generation_prompt=False)``); the meta-prompt
wording is ctta's (``meta_prompt.py``) and shows the initial template as scored (GLOV shows a lower-case copy); each
step's sampling seed is ``llm_seed + step`` (GLOV: the global RNG); answers end at the model's end-of-sequence ids
(``generate``); a template GLOV's fill rule would drop or fill differently from a plain slot replacement is skipped.
On a class-incremental stream the search runs once per experience over the classes seen so far (GLOV has no such
protocol); on a test-time benchmark (no train experience) nothing is searched and the head stays CLIP's
"a photo of a {}.". Needs ``hf:<Llama-3-8B-Instruct or any causal LM>`` (extra ``ctta[diffusion]`` for
transformers) or a recorded log (``llm: replay``); ``guidance: false`` also runs on ``openai:`` / ``scripted:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctta.strategies.glov.discovered import fill_template
from ctta.strategies.glov.evaluate import ensemble_texts_for
from ctta.strategies.glov.meta_prompt import MetaPrompt, parse_answer
from ctta.strategies.glov.steering import steering_hook, steering_vector, vector_digest

from ctta.clip_prompting.llm_search import (
    LLMSearchConfig,
    PromptOptimizer,
    Scored,
    check_search_llm,
    fill_slot,
    search_llm,
    template_scorer,
)
from ctta.clip_prompting.search import SearchHistory, SearchTemplate
from ctta.clip_prompting.text_cache import encode_texts
from ctta.fields import ranged
from ctta.llm import LLMReplayMissing
from ctta.registry import STRATEGIES

__all__ = ["GLOVSearch", "GLOVSearchConfig", "GuidedLM", "guidance_pair", "run_glov_search", "top_templates"]


def guidance_pair(scored: list[Scored], best_score: float) -> tuple[tuple[str, str] | None, float]:
    """GLOV's update: when the best score exceeds ``best_score``, ``(best, runner-up)`` and the new best score;
    otherwise ``(None, best_score)``. Ties: the earliest template with the best score; the latest with the
    runner-up's score."""
    top = max(scored, key=lambda s: s.score)  # first maximum
    below = [s for s in scored if s.score < top.score]
    if top.score <= best_score or not below:
        return None, best_score
    runner = max(below, key=lambda s: s.score)
    runner = [s for s in below if s.score == runner.score][-1]
    return (top.prompt, runner.prompt), top.score


def top_templates(scored: list[Scored], k: int) -> list[str]:
    """The ``k`` best templates (score, then lower loss, then earlier)."""
    order = sorted(range(len(scored)), key=lambda i: (-scored[i].score, scored[i].loss or 0.0, i))
    return [scored[i].prompt for i in order[:k]]


class GuidedLM:
    """The optimiser's language model: GLOV's guidance around a ``ctta.llm`` replaying model.

    Args:
        llm: a ``ReplayingLM`` (``make_llm``); its ``backend`` is the local ``HFCausalLM`` when steering is live.
        layer, alpha: decoder layer and scale of the offset; ``guided``: sampling overrides while guided.
        enabled: False runs GLOV without guidance (plain sampling throughout).
        seed: the sampling seed of step 0 (step s uses ``seed + s``).
    """

    def __init__(self, llm, layer: int, alpha: float, guided: dict[str, Any], enabled: bool = True, seed: int = 0):
        self.llm, self.layer, self.alpha, self.guided = llm, layer, alpha, guided
        self.enabled, self.seed = enabled, seed
        self.name = llm.name
        self.pair: tuple[str, str] | None = None
        self.step = 0
        self.records: list[dict[str, Any]] = []  # the steering used at each guided step
        self._vectors: dict[tuple[str, str], Any] = {}

    def update(self, scored: list[Scored], step: int, best_score: float) -> float:
        """Before ``step``'s request: move the pair when the best improved; returns the best score so far."""
        self.step = step
        pair, best_score = guidance_pair(scored, best_score)
        if pair is not None:
            self.pair = pair
        return best_score

    def generate(self, messages: list[dict[str, str]], **sampling: Any) -> list[str]:
        sampling = {**sampling, "seed": self.seed + self.step}
        if not self.enabled or self.pair is None:
            return self.llm.generate(messages, **sampling)
        vector, digest = self._vector()
        extra = {"steering": {"method": "glov_mean_hidden", "layer": self.layer, "alpha": self.alpha,
                              "positive": self.pair[0], "negative": self.pair[1], "vector_sha256": digest}}
        self.records.append({"step": self.step, **extra["steering"]})
        if vector is None:  # answered from the log (checked by the key)
            return self.llm.generate(messages, key_extra=extra, **{**sampling, **self.guided})
        with steering_hook(self.llm.backend, self.layer, vector, self.alpha):
            return self.llm.generate(messages, key_extra=extra, **{**sampling, **self.guided})

    def _vector(self):
        """``(vector, digest)`` from the local model, or ``(None, digest)`` read from the log's records."""
        backend = self.llm.backend
        positive, negative = (p.replace("{}", "<category>") for p in self.pair)
        if backend is not None and hasattr(backend, "decoder_layers"):
            if self.pair not in self._vectors:
                self._vectors[self.pair] = steering_vector(backend, positive, negative, self.layer)
            vector = self._vectors[self.pair]
            return vector, vector_digest(vector)
        for record in self.llm.log.records.values():
            steer = record.get("extra", {}).get("steering", {})
            if record["model"] == self.name and (steer.get("layer"), steer.get("positive"),
                                                 steer.get("negative")) == (self.layer, *self.pair):
                return None, steer["vector_sha256"]
        if backend is None:
            raise LLMReplayMissing(f"replay log {self.llm.log.path} has no guided request of model {self.name} with "
                                   f"layer {self.layer}, best {self.pair[0]!r}, runner-up {self.pair[1]!r}: record "
                                   f"it with the local model (llm=hf:...)")
        raise ValueError(f"GLOV's guidance steers a local model's hidden states: {self.name} has none "
                         f"(use llm=hf:..., or guidance: false)")


def run_glov_search(llm: GuidedLM, meta: MetaPrompt, evaluate, initial: str, steps: int, per_step: int,
                    sampling: dict[str, Any], history: SearchHistory | None = None, valid=None) -> PromptOptimizer:
    """GLOV's loop on ``PromptOptimizer``; returns the finished optimiser (``scored``, ``events``)."""
    state = {"best": float("-inf")}

    def build(scored: list[Scored], step: int) -> list[dict[str, str]]:
        if step == 0:
            state["best"] = scored[0].score  # GLOV: the initial template's accuracy
        else:
            state["best"] = llm.update(scored, step, state["best"])
        llm.step = step
        return meta.messages([(s.prompt, s.score) for s in scored], step)

    opt = PromptOptimizer(llm, build, parse_answer, evaluate, steps=steps, per_step=per_step,
                          sampling={**sampling, "n": per_step}, history=history, valid=valid)
    opt.run([initial])
    return opt


def glov_fillable(prompt: str) -> str | None:
    """Why GLOV's fill rule and a plain slot replacement disagree on ``prompt`` (None: they agree)."""
    probe = "class name"
    filled = fill_template(prompt, probe)
    if filled is None:
        return "GLOV's fill rule drops it"
    return None if filled == fill_slot(prompt, probe) else "GLOV's fill rule fills it differently"


@dataclass(frozen=True)
class GLOVSearchConfig(LLMSearchConfig):
    """GLOV's search: language model (``llm``: hf:<Llama-3-8B-Instruct id or folder> | replay | ...; ``llm_log``),
    sampling, guidance and the final ensemble (official defaults)."""

    llm_device: str = ""  # "" = the run's device
    llm_dtype: str = ""  # e.g. bfloat16 ("" = the checkpoint's)
    dataset: str = ""  # dataset name shown to the language model
    description: str = ""  # dataset description shown to the language model
    meta_prompt_file: str = ""  # JSON {"system", "first", "later"}: your own wording of the meta-prompt
    initial: str = "A photo of a {}."
    steps: int = ranged(100, ge=0)  # global steps
    per_step: int = ranged(10, ge=1)  # answers per step
    top_bottom: int = ranged(5, ge=1)
    temperature: float = ranged(1.0, ge=0)
    top_k: int = ranged(50, ge=0)
    top_p: float = ranged(0.9, gt=0, le=1)
    max_tokens: int = ranged(50, ge=1)  # unguided answers
    guided_max_tokens: int = ranged(75, ge=1)  # guided answers
    guidance: bool = True
    alpha: float = 1.0  # GLOV sweeps 1.0, 0.75, 0.5, 0.25
    layer: int = ranged(17, ge=0)  # decoder layer (0-based) whose output is offset
    ensemble: int = ranged(3, ge=1)  # best templates in the final head
    llm_seed: int = 0
    feature_memory: bool = True


@STRATEGIES.register("glov_search", config=GLOVSearchConfig)
class GLOVSearch(SearchTemplate):
    """GLOV's guided prompt search (see the module notes); the head is the best templates' ensemble."""

    config_class = GLOVSearchConfig

    @classmethod
    def check_resources(cls, cfg: GLOVSearchConfig) -> None:
        """The language model's log / folder / key and the meta-prompt file, before anything loads."""
        check_search_llm(cfg)
        if cfg.meta_prompt_file and not Path(cfg.meta_prompt_file).is_file():
            raise FileNotFoundError(f"meta-prompt file {cfg.meta_prompt_file} not found (a JSON object with "
                                    "system, first, later; leave meta_prompt_file empty for GLOV's wording)")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = SearchHistory(key="score")
        self.llm = None
        self.templates: list[str] = []  # the head's templates (the last search's best)
        self.guidance_log: list[dict[str, Any]] = []
        self.llm_events: list[dict[str, Any]] = []

    def language_model(self):
        """The recorded/replayed language model (loaded on first use)."""
        if self.llm is None:
            cfg = self.cfg
            options = {}
            if cfg.llm.startswith("hf:"):
                options = {"device": cfg.llm_device or self.device, "dtype": cfg.llm_dtype or None}
            self.llm = search_llm(cfg, **options)
        return self.llm

    def meta_prompt(self) -> MetaPrompt:
        cfg = self.cfg
        fields = dict(dataset=cfg.dataset or "the dataset", description=cfg.description or "-",
                      top_bottom=cfg.top_bottom)
        return MetaPrompt.from_file(cfg.meta_prompt_file, **fields) if cfg.meta_prompt_file else MetaPrompt(**fields)

    def search(self, feats, classnames: list[str]) -> list[list[str]]:
        cfg, model = self.cfg, self.model
        guided = GuidedLM(self.language_model(), cfg.layer, cfg.alpha, {"max_tokens": cfg.guided_max_tokens},
                          enabled=cfg.guidance, seed=cfg.llm_seed)
        encode = lambda texts: encode_texts(model.clip, model.tokenizer, texts, model.cache)  # noqa: E731
        sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        opt = run_glov_search(guided, self.meta_prompt(), template_scorer(feats, classnames, encode), cfg.initial,
                              cfg.steps, cfg.per_step, sampling, self.history, valid=glov_fillable)
        self.guidance_log += guided.records
        self.llm_events += opt.events
        self.templates = top_templates(opt.scored, cfg.ensemble)
        return ensemble_texts_for(self.templates)(classnames)

    def fallback_texts(self, name: str) -> list[str]:
        """Classes the search did not see (e.g. base-to-new's new classes) get the found templates too."""
        return ensemble_texts_for(self.templates)([name])[0] if self.templates else super().fallback_texts(name)

    def run_artifacts(self) -> dict[str, Any]:
        """The search history, each guided step's steering settings and the language model's answers."""
        return {**super().run_artifacts(), "glov_templates": self.templates, "glov_guidance": self.guidance_log,
                "glov_llm_events": self.llm_events}
