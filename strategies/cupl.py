"""CuPL: customized prompts via language models (Pratt et al., "What does a platypus look like? Generating
customized prompts for zero-shot image classification", ICCV 2023, arXiv 2209.03320). Official code
sarahpratt/CuPL@719619c (no licence file): ``classify_imagenet.py:{zeroshot_classifier, zeroshot_classifier_gpt}``,
``generate_image_prompts.py``; behaviour read, re-implemented, no code copied (spec ``remaining-seed-systems.md`` C1,
§22).

Classifier (a ``ZeroShotTemplate``: nothing trains): per class, every text embedded, L2-normalised, averaged,
re-normalised; logits = ``logit_scale * cos``. ``variant``: ``cupl`` (the class's LLM descriptions), ``templates``
(the 80 CLIP ImageNet templates filled with the class name) or ``both`` (templates then descriptions pooled in one
mean, as the official ``use_both``). Descriptions: the official GPT-3 files (no licence: user-supplied,
``descriptions:`` = a file or the repository folder with ``dataset:``; ``description_format: json`` for any
``{class: [texts]}`` file), ``builtin:digits_cupl`` (ctta's own tiny bank), and/or generated with a language model
(``llm:``, ``ctta.llm``: recorded in ``llm_log`` and replayable offline) for classes the bank lacks: five questions per
class (``cupl_questions``), ``n = 10`` completions each at temperature 0.99, 50 tokens, stop ".", each with "\\n\\n"
removed and "." appended (the official ``text-davinci-002`` settings; a chat request here). The official article test
looks at capital vowels only (``"an"`` iff the name starts with A, E, I, O or U: "a apple"), reproduced by default
(``article: official``; ``english`` tests lower-case vowels too).

Continual learning: the head covers the classes the benchmark names for each stream (base-to-new: base, then new
classes; cross-dataset: each dataset's); class-incremental: the classes seen so far (the others masked), nothing is
forgotten since nothing is learnt; a test-time benchmark is evaluated directly.

Deviations: the official tokenizer truncates descriptions at 77 tokens (open_clip's does too); texts are embedded in
chunks through ``ctta.clip_prompting.text_cache`` (same arithmetic); class names are matched to the bank's keys
exactly, case-insensitively, or through ``classname_map`` (the official code indexes by its own name list); template
class names are ctta's with ``_`` -> space.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctta.clip_prompting.descriptions import (
    align_classnames,
    check_descriptions,
    load_alignment,
    load_descriptions,
    load_templates,
)
from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotConfig, ZeroShotTemplate, text_cache_of
from ctta.registry import STRATEGIES

__all__ = ["CUPL_QUESTIONS", "CUPL_SAMPLING", "CuPL", "CuPLConfig", "CuPLTexts", "article", "cupl_questions",
           "generate_descriptions"]

VARIANTS = ("cupl", "templates", "both")
#: the five generation questions (official order); ``{a}`` = the article, ``{c}`` = the class name
CUPL_QUESTIONS = ("Describe what {a} {c} looks like", "How can you identify {a} {c}?", "What does {a} {c} look like?",
                  "Describe an image from the internet of {a} {c}", "A caption of an image of {a} {c}:")  # fmt: skip
#: the official GPT-3 sampling (text-davinci-002)
CUPL_SAMPLING = {"n": 10, "temperature": 0.99, "max_tokens": 50, "stop": ["."]}


def article(name: str, rule: str = "official") -> str:
    """``"an"`` or ``"a"``: ``official`` tests ``name[0]`` against capital vowels only (CuPL's quirk), ``english``
    against vowels of either case."""
    if rule not in ("official", "english"):
        raise ValueError(f"article={rule!r}; valid: official, english")
    vowels = "AEIOU" if rule == "official" else "AEIOUaeiou"
    return "an" if name[:1] in tuple(vowels) else "a"


def cupl_questions(name: str, rule: str = "official") -> list[str]:
    """CuPL's five generation questions for class ``name``."""
    a = article(name, rule)
    return [q.format(a=a, c=name) for q in CUPL_QUESTIONS]


def generate_descriptions(llm, names, rule: str = "official", sampling=None) -> dict[str, list[str]]:
    """``{name: [sentences]}`` from ``llm`` (a ``ctta.llm`` language model): per question ``n`` completions, each
    with "\\n\\n" removed and "." appended (the official post-processing)."""
    sampling = dict(CUPL_SAMPLING if sampling is None else sampling)
    out = {}
    for name in names:
        texts = []
        for q in cupl_questions(name, rule):
            texts += [r.replace("\n\n", "") + "." for r in llm.generate([{"role": "user", "content": q}], **sampling)]
        out[name] = texts
    return out


@dataclass(frozen=True)
class CuPLConfig(ZeroShotConfig):
    """CuPL settings (official: ``variant`` cupl / both, the 80 CLIP templates)."""

    variant: str = "cupl"  # cupl | templates | both
    descriptions: str = ""  # description bank: file, CuPL repository folder (with dataset) or builtin:digits_cupl
    description_format: str = "cupl"  # cupl (official "full" files) | cupl_base | json (any {class: [texts]} file)
    dataset: str = ""  # ctta catalogue name, to find the official file in a folder
    classname_map: str = ""  # class-name alignment table (JSON {ctta class name: bank key})
    templates: str = "builtin:clip_imagenet"  # template list (variants templates / both)
    llm: str = ""  # generate missing descriptions with this language model (ctta.llm spec, e.g. replay, hf:<id>)
    llm_log: str = ""  # its record/replay log (JSONL)
    article: str = "official"  # article rule of the generation questions: official (capital vowels) | english

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}; valid: {VARIANTS}")
        article("x", self.article)


class CuPLTexts:
    """``texts_for`` of CuPL: per class, the templates and/or its descriptions (see the module notes).

    Args:
        cfg: the ``CuPLConfig``.
        llm: the language model generating descriptions for classes the bank lacks (None: none generated).
    """

    def __init__(self, cfg: CuPLConfig, llm=None) -> None:
        if cfg.variant != "templates" and not (cfg.descriptions or llm is not None):
            raise ValueError(f"CuPL variant={cfg.variant!r} needs descriptions (a file or folder) or an llm")
        self.cfg, self.llm, self.generated = cfg, llm, []
        self.bank = load_descriptions(cfg.descriptions, cfg.description_format, cfg.dataset) if cfg.descriptions else {}
        self.table = load_alignment(cfg.classname_map)
        self.templates = load_templates(cfg.templates) if cfg.variant != "cupl" else []

    def descriptions(self, names: list[str]) -> list[list[str]]:
        """The descriptions of each class (generated first for classes without any when an ``llm`` is set)."""
        if self.llm is not None:
            missing = [n for n in names if not self._known(n)]
            self.generated += [n.replace("_", " ") for n in missing]
            self.bank.update(generate_descriptions(self.llm, [n.replace("_", " ") for n in missing], self.cfg.article))
        return [list(self.bank[k]) for k in align_classnames(list(self.bank), names, self.table)]

    def _known(self, name: str) -> bool:
        try:
            align_classnames(list(self.bank), [name], self.table)
        except KeyError:
            return False
        return True

    def __call__(self, names: list[str]) -> list[list[str]]:
        per_class = [[t.format(c.replace("_", " ")) for t in self.templates] for c in names]
        if self.cfg.variant != "templates":
            per_class = [t + d for t, d in zip(per_class, self.descriptions(names))]  # official: templates first
        return per_class


def _llm(cfg: CuPLConfig):
    if not cfg.llm:
        return None
    from ctta.llm import make_llm

    return make_llm(cfg.llm, cfg.llm_log or None)


@STRATEGIES.register("cupl", config=CuPLConfig)
class CuPL(ZeroShotTemplate):
    """CuPL as an Avalanche strategy (zero-shot: a frozen CLIP, a head built from texts)."""

    config_class = CuPLConfig

    @classmethod
    def check_resources(cls, cfg: CuPLConfig) -> None:
        """The description bank, alignment table and template list resolve; the language model's log/folder/key."""
        if cfg.descriptions:
            check_descriptions(cfg.descriptions, cfg.description_format, cfg.dataset)
        load_alignment(cfg.classname_map)
        if cfg.variant != "cupl":
            load_templates(cfg.templates)
        if cfg.llm:
            from ctta.llm import check_llm

            check_llm(cfg.llm, cfg.llm_log or None)

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: CuPLConfig) -> TextHeadModel:
        return TextHeadModel(clip_model, tokenizer, classnames, CuPLTexts(cfg, _llm(cfg)), cache=text_cache_of(cfg))

    def run_artifacts(self) -> dict:
        """``cupl_generated``: the descriptions generated by the language model (``{class: [texts]}``), if any."""
        texts = self.model.texts_for
        return {"cupl_generated": {n: texts.bank[n] for n in texts.generated}} if texts.generated else {}
