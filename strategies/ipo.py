"""IPO: interpretable prompt optimisation for vision-language models with a language model in the loop (Du et al.,
"IPO: Interpretable Prompt Optimization for Vision-Language Models", NeurIPS 2024). Official code: lmsdss/IPO@ac804a9
``optimization/opt_utils.py:{gen_ins_and_score_pairs_substr, gen_meta_prompt, run_evolution}``, ``train.py``,
``trainers/coop.py:{update_context, forward_backward_llm}`` (no licence file: behaviour read, re-implemented, no
code, prompt wording or data copied; spec ``remaining-seed-systems.md`` C4).

The search (OPRO style, ``ctta.clip_prompting.llm_search.PromptOptimizer``): start from ``"a photo of a <CLASS>."``;
each of ``steps`` (100) steps shows the optimiser language model (gpt-3.5-turbo, temperature 1.0, 40 new tokens) one
user message: a task header, optionally descriptions of the training images, then up to ``max_shown`` (30)
previous prompts with their score and loss -- only those scoring at least ``score_threshold`` (20), sorted ascending
by score, among equal scores the higher loss first -- and an instruction asking for a new prompt between ``<INS>``
and ``</INS>`` "with a higher score and a lower loss"; ``per_step`` (8) completions per step, one per call. A
completion's text between the tags (all of it when a tag is missing) is stripped, loses ``**`` and gets a capital
first letter; candidates holding ``INS``, longer than 500 characters or than CLIP's context are skipped. Score = 1-shot
training accuracy over the base classes in percent (shown as ``round(score * buckets / 100)``, 100 buckets), loss =
the cross-entropy on the same images. The best prompt (highest training score, ties: lower loss) is the head's
prompt for every class; it is chosen on the training data only, never on test data.

Protocols: base-to-new (the paper's, 1 shot): search on the base training set, evaluate the best prompt on base and
new test classes (the template rebuilds the head per stream). Few-shot: the same on all classes. Class-incremental:
each training experience runs a new search over the classes seen so far, seeded with the previous experience's best
prompt (scored again, with every seen experience's cached features: ``feature_memory``); the head uses the newest
best prompt for every seen class.

Image descriptions: ``image_descriptions`` is the user's copy of ``desc/<dataset>_1_shot_image.txt`` (MiniCPM-V-2.0
descriptions of the 1-shot training images shipped by lmsdss/IPO@ac804a9, no licence: not shipped here) or a folder
holding such files (``dataset`` picks one). Known bugs in the reference: ``desc/eurosat_1_shot_image.txt`` describes
cars (a copy of Stanford Cars; a warning says so), and ``run_evolution`` always reads the Oxford Flowers file and
says "flowers" for every dataset (here: the file of the run's dataset, "the training images").

Deviations: the header and closing instruction are ctta's own wording of the same content (``header`` /
``instruction`` override them); the loss is shown with 3 decimals (the reference prints the tensor's repr); the
shown score is bucketed as OPRO does (the reference's bucketing is the identity: ``score_buckets: 0`` shows the raw
percentage); every candidate is scored on all cached training features in the eval transform (the reference scores
each on the next Dassl batch, augmented); candidates repeated in a step keep generation order (the reference's
``set`` order varies between runs); a candidate equal to an initial prompt is not scored again; descriptions are
joined as written (the reference doubles each line break); ``require_class_slot`` (default off, as the reference)
skips candidates without ``<CLASS>``; a candidate longer than CLIP's context is skipped (the reference's
``clip.tokenize`` raises on it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctta.clip_prompting.llm_search import LLMSearchConfig, LLMSearchTemplate, Scored, fill_slot, texts_for_prompt
from ctta.clip_prompting.search import FewShotFeatures
from ctta.clip_prompting.zero_shot import TextHeadModel, text_cache_of
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["CLASS_SLOT", "IPO", "IPOConfig", "IPO_HEADER", "IPO_INSTRUCTION", "IPO_INITIAL", "ipo_meta_prompt",
           "ipo_shown", "load_image_descriptions", "parse_ipo", "ipo_valid"]

CLASS_SLOT = "<CLASS>"
IPO_INITIAL = "a photo of a <CLASS>."
IPO_REPO = "lmsdss/IPO@ac804a9"
IPO_HEADER = (
    "Your task is to write an instruction <INS> for classifying images by their visual features. <CLASS> stands "
    "for a class name of the dataset and must appear in <INS>.\n"
    "Below are previous instructions with their score and loss. Scores range from 0 to 100 (higher is better); "
    "losses range from 0 to positive infinity (lower is better).\n"
)
IPO_DESCRIPTIONS = "\nDescriptions of the training images:\n{descriptions}\n"
IPO_INSTRUCTION = (
    "\n\nWrite a new instruction that differs from every instruction <INS> above, with a higher score and a lower "
    "loss. Begin the instruction with <INS> and end it with </INS>. Keep it concise, effective and applicable to all "
    "the images above.\n"
)


def ipo_shown(scored: Sequence[Scored], score_threshold: float = 20.0, max_shown: int = 30) -> list[Scored]:
    """The prompts the meta-prompt lists, in its order.

    The ``max_shown`` best by (score, then lower loss), keeping only scores >= ``score_threshold``, sorted
    ascending by score; among equal scores the higher loss comes first (so the best prompt is last).
    """
    ordered = sorted(scored, key=lambda s: (s.score, -(s.loss or 0.0)))
    return [s for s in ordered[-max_shown:] if s.score >= score_threshold] if max_shown else []


def _score_text(score: float, buckets: int) -> str:
    return str(round(score * buckets / 100.0)) if buckets else str(score)


def _loss_text(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.3f}"


def ipo_meta_prompt(
    scored: Sequence[Scored],
    *,
    score_threshold: float = 20.0,
    max_shown: int = 30,
    score_buckets: int = 100,
    descriptions: str = "",
    header: str = IPO_HEADER,
    instruction: str = IPO_INSTRUCTION,
) -> str:
    """The IPO meta-prompt: header, optional image descriptions, ``text/score/loss`` blocks, closing instruction."""
    parts = [header]
    if descriptions:
        parts.append(IPO_DESCRIPTIONS.format(descriptions=descriptions))
    for s in ipo_shown(scored, score_threshold, max_shown):
        score, loss = _score_text(s.score, score_buckets), _loss_text(s.loss)
        parts.append(f"\ntext:\n{s.prompt}\nscore:\n{score}\nloss:\n{loss}\n")
    parts.append(instruction)
    return "".join(parts)


def parse_ipo(text: str, start: str = "<INS>", end: str = "</INS>") -> list[str]:
    """The prompt in one completion: the text after the first ``<INS>`` (or from the start) up to the first
    ``</INS>`` (or the end), stripped, without ``**``, first letter capitalised; ``[]`` when nothing is left."""
    i = text.index(start) + len(start) if start in text else 0
    j = text.index(end) if end in text else len(text)
    prompt = text[i:j].strip().replace("**", "")
    if len(prompt) > 1:
        prompt = prompt[0].upper() + prompt[1:]
    return [prompt] if prompt else []


def ipo_valid(count_tokens: Callable[[str], int] | None = None, context_length: int = 77, max_chars: int = 500):
    """The reference's checks on a candidate: skip it when it holds ``INS``, has more than ``max_chars`` characters
    or more than ``context_length`` tokens (``count_tokens``: the CLIP tokenizer's count with start/end tokens)."""

    def valid(prompt: str) -> str | None:
        if "INS" in prompt:
            return "contains 'INS'"
        if len(prompt) > max_chars:
            return f"longer than {max_chars} characters"
        if count_tokens is not None and count_tokens(prompt) > context_length:
            return f"more than {context_length} tokens"
        return None

    return valid


def load_image_descriptions(source: str | Path, dataset: str = "") -> str:
    """The user's IPO image descriptions: a file, or a folder holding ``<dataset>_1_shot_image.txt``.

    Raises:
        FileNotFoundError: naming the file and where the official repository keeps it.
    """
    path = image_descriptions_file(source, dataset)
    if "eurosat" in path.name.lower():
        warnings.warn(f"{path.name}: the file {IPO_REPO} ships for EuroSAT describes cars (a copy of Stanford Cars); "
                      "check your copy", stacklevel=2)
    return path.read_text(encoding="utf-8").strip()


def image_descriptions_file(source: str | Path, dataset: str = "") -> Path:
    """The file ``load_image_descriptions`` reads (``source`` itself, or ``<dataset>_1_shot_image.txt`` in it).

    Raises:
        FileNotFoundError: naming the file and where the official repository keeps it. ValueError: a folder and
            no ``dataset``.
    """
    path = Path(source)
    if path.is_dir():
        if not dataset:
            raise ValueError(f"image_descriptions={source} is a folder: set dataset=NAME to pick its file")
        path = path / f"{dataset}_1_shot_image.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"IPO image descriptions {path} not found: they are desc/{dataset or '<dataset>'}_1_shot_image.txt in "
            f"{IPO_REPO} (no licence, not shipped with ctta): put your copy there or pass its path"
        )
    return path


def clip_token_count(tokenizer) -> Callable[[str], int] | None:
    """Tokens of a text with CLIP's start and end tokens (``None`` when the tokenizer cannot tell)."""
    encode = getattr(tokenizer, "encode", None)
    return None if encode is None else (lambda text: len(encode(text)) + 2)


@dataclass(frozen=True)
class IPOConfig(LLMSearchConfig):
    """IPO settings at the reference's defaults (``train.py``: gpt-3.5-turbo, 100 steps, 8 per step, ...)."""

    steps: int = ranged(100, ge=0)  # search steps after scoring the initial prompt
    per_step: int = ranged(8, ge=1)  # completions (candidate prompts) per step
    n_per_call: int = ranged(1, ge=1)  # completions per request (the reference: 1, eight calls per step)
    temperature: float = ranged(1.0, ge=0)
    max_tokens: int = ranged(40, ge=1)  # the reference's max_decode_steps
    max_retries: int = ranged(0, ge=0)  # completions per step that may replace ones without a prompt
    score_threshold: float = 20.0  # prompts scoring below it are not shown
    max_shown: int = ranged(30, ge=0)  # prompts shown in the meta-prompt
    score_buckets: int = ranged(100, ge=0)  # shown score = round(score * buckets / 100); 0: the raw percentage
    initial: str = IPO_INITIAL
    image_descriptions: str = ""  # the user's desc/<dataset>_1_shot_image.txt (or its folder; "": none)
    dataset: str = ""  # picks the descriptions file in a folder
    header: str = IPO_HEADER
    instruction: str = IPO_INSTRUCTION
    require_class_slot: bool = False  # skip candidates without <CLASS> (the reference scores them)
    feature_memory: bool = True  # class-incremental: score on every seen experience's cached features


@STRATEGIES.register("ipo", config=IPOConfig)
class IPO(LLMSearchTemplate):
    """IPO as an Avalanche strategy: an LLM-in-the-loop search of one prompt per train experience (module notes)."""

    config_class = IPOConfig

    @classmethod
    def check_resources(cls, cfg: IPOConfig) -> None:
        """The language model's (``LLMSearchTemplate``) and the image-descriptions file, before anything loads."""
        super().check_resources(cfg)
        if cfg.image_descriptions:
            image_descriptions_file(cfg.image_descriptions, cfg.dataset)

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames: list[str], cfg: IPOConfig) -> TextHeadModel:
        return TextHeadModel(clip_model, tokenizer, classnames, texts_for_prompt(cfg.initial, CLASS_SLOT),
                             cache=text_cache_of(cfg))  # fmt: skip

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = self.cfg
        described = cfg.image_descriptions
        self.descriptions = load_image_descriptions(described, cfg.dataset) if described else ""
        self.best_prompt = cfg.initial

    def messages(self, scored: list[Scored], step: int) -> list[dict[str, str]]:
        """The one user message of a step (``ipo_meta_prompt`` with the config's settings)."""
        cfg = self.cfg
        text = ipo_meta_prompt(scored, score_threshold=cfg.score_threshold, max_shown=cfg.max_shown,
                               score_buckets=cfg.score_buckets, descriptions=self.descriptions, header=cfg.header,
                               instruction=cfg.instruction)  # fmt: skip
        return [{"role": "user", "content": text}]

    def search(self, feats: FewShotFeatures, classnames: list[str]) -> list[list[str]]:
        cfg, tokenizer = self.cfg, self.model.tokenizer
        optimizer = self.optimize(
            list(dict.fromkeys([cfg.initial, self.best_prompt])), build_messages=self.messages, parse=parse_ipo,
            evaluate=self.scorer(feats, classnames, CLASS_SLOT), steps=cfg.steps, per_step=cfg.per_step,
            sampling={"n": cfg.n_per_call, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens},
            max_retries=cfg.max_retries, class_slot=CLASS_SLOT if cfg.require_class_slot else None,
            valid=ipo_valid(clip_token_count(tokenizer), getattr(tokenizer, "context_length", 77)),
        )
        self.best_prompt = optimizer.best().prompt  # chosen on the training features only
        return texts_for_prompt(self.best_prompt, CLASS_SLOT)(classnames)

    def fallback_texts(self, name: str) -> list[str]:
        """Classes never searched (base-to-new: the new ones) use the best prompt too."""
        return [fill_slot(self.best_prompt, name, CLASS_SLOT)]

    def run_artifacts(self) -> dict[str, Any]:
        """The search history, every language-model completion with what it gave, and the best prompt."""
        return {**super().run_artifacts(), "best_prompt": self.best_prompt}
