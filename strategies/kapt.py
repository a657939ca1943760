"""KAPT: Knowledge-Aware Prompt Tuning (Kan et al., ICCV 2023, arXiv 2308.11186). **Unofficial, from the paper**
(its abstract: no official code was found, spec ``clip-prompt-learners.md`` section 6). Nothing is copied from any
code.

Three parts, as the abstract names them:

- discrete knowledge-aware prompt: key words of each class's external descriptions appended to its name,
  ``[SOS] ctx <name>, <kw_1> .. <kw_k> . [EOT]`` (``keywords``);
- continuous knowledge prompt: the context ``ctx``, learned with a pull towards the description context (the mean
  frozen-CLIP feature ``d_c`` of the class's descriptions);
- adaptation head on the image encoder: attention pooling of the frozen patch features with a learned query ``q``
  (``ctta.strategies.tmml.text_guided_pooling``), added through a zero-initialised Linear(E, E):
  ``f' = f + head(sum_p softmax_p(scale <P^_p, q^>) P_p)``.

Loss: ``CE(scale * cos(f', g_c)) + w * mean_c (1 - cos(g_c, d_c))``.

Choices the paper (as available: the abstract) leaves open, with the value taken and why:

- Descriptions: any ``{class name: [descriptions]}`` JSON of ctta's description formats (the paper's Wikipedia
  texts are not public); ``builtin:digits`` for the smoke run.
- Classes the description file lacks (e.g. cross-dataset targets when only the source's file is given) get no
  key words: their prompt is ``ctx <name>.``; the description pull needs descriptions of the training classes only.
- Key words: the ``n_keywords`` = 3 most frequent words of a class's descriptions (lower-cased, alphabetic,
  English stop words and the class name's own words removed; ties by first appearance): simple, deterministic.
- Continuous prompt: CoOp's context from "a photo of a", pulled towards ``d_c`` with weight ``w`` = 8.0
  (KgCoOp-style consistency, the weight MSGCoOp's official scripts use for the same cosine term).
- Adaptation head: one learned query, CLIP's temperature, a zero-initialised residual Linear, so training starts
  at CoOp with the frozen image feature.
- Optimiser and budget: CoOp's base-to-new setting (SGD lr 0.002, batch 32, warm-up + cosine), 50 epochs (half
  CoOp's 200, as the extra head converges with the context), last-epoch model.

Trainable parameters on ViT-B/16: ctx 4 x 512 + query 512 + head (512 x 512 + 512) = 265,216 (``tests/test_kapt.py``);
no published count was found in the available text.

Deviations: none from the paper as far as it is known; everything above is a choice.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.descriptions import DescriptionBank, load_descriptions, match_classnames
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.patch_tokens import frozen_image_tokens, text_guided_pooling
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.fields import ranged
from ctta.losses import cosine_consistency
from ctta.registry import STRATEGIES

__all__ = ["KAPT", "KAPTConfig", "KAPTModel", "keywords"]

STOP_WORDS = frozenset(
    "a an the of and or in on at to for with by from as is are was were be been it its this that these those which "
    "who whom whose has have had can may often usually typically very also into over under than then there their "
    "they them he she his her one photo image picture kind type".split()
)


@dataclass(frozen=True)
class KAPTConfig(PromptLearnerConfig):
    """KAPT settings (choices, see the module docstring)."""

    epochs: int = ranged(50, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.002, gt=0)
    ctx_init: str = "a photo of a"
    n_ctx: int = 4  # used when ctx_init is empty
    n_keywords: int = ranged(3, ge=0)  # key words per class in the discrete prompt
    w: float = 8.0  # weight of the pull towards the description context
    descriptions: str = ""  # description JSON, a folder with the official layout, or builtin:digits
    description_format: str = "coprompt"  # coprompt | msgcoop (the file layout of ``descriptions``)
    dataset: str = ""  # catalogue name picking the file inside a descriptions folder


def keywords(descriptions: Sequence[str], classname: str, k: int) -> list[str]:
    """The ``k`` most frequent words of ``descriptions`` (lower-cased, alphabetic, stop words and the class name's
    words removed; ties by first appearance)."""
    own = set(re.findall(r"[a-z]+", classname.lower().replace("_", " ")))
    words = [w for d in descriptions for w in re.findall(r"[a-z]+", d.lower()) if w not in STOP_WORDS | own]
    counts = Counter(words)
    first = {w: i for i, w in reversed(list(enumerate(words)))}
    return sorted(counts, key=lambda w: (-counts[w], first[w]))[:k]


class KAPTModel(PromptedCLIP):
    """Frozen CLIP + context ``ctx``, the head's ``query`` and ``head``; ``knowledge`` holds the frozen description
    features. The text head encodes ``"<name>, <key words>"`` for each class; ``classnames`` stays the plain names."""

    context_is_the_prompt = False  # the adaptation head is part of the prediction

    def __init__(self, clip_model, tokenizer, classnames, cfg: KAPTConfig, *, generator=None) -> None:
        if not cfg.descriptions:
            raise ValueError("KAPT needs class descriptions: set descriptions= to a description JSON or builtin:digits")
        self.n_keywords = cfg.n_keywords
        self.bank = load_descriptions(cfg.descriptions, cfg.description_format, cfg.dataset)
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, 0 if cfg.ctx_init else cfg.n_ctx)
        super().__init__(clip_model, tokenizer, self._knowledge_names(classnames), layout, truncate=cfg.truncate,
                         round_prompts=False)  # fmt: skip
        self._names = list(classnames)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))
        embed = self.clip.text_projection.shape[-1] if self.clip.text_projection is not None else ctx0.shape[-1]
        self.query = nn.Parameter(torch.randn(embed, generator=generator) * 0.02)
        self.head = nn.Linear(embed, embed)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.knowledge = DescriptionBank(clip_model, tokenizer, self.bank, classnames, reduce="mean")
        self.features: dict[str, torch.Tensor] = {}

    def _knowledge_names(self, classnames: Sequence[str]) -> list[str]:
        kws = [keywords(self._descriptions(c), c, self.n_keywords) for c in classnames]
        return [f"{c}, {' '.join(k)}" if k else c for c, k in zip(classnames, kws)]

    def _descriptions(self, classname: str) -> list[str]:
        """The class's descriptions; none (so no key words) for a class the description file lacks."""
        try:
            return match_classnames(self.bank, [classname])[0]
        except KeyError:
            return []

    @property
    def classnames(self) -> list[str]:
        return self._names

    def set_classnames(self, classnames) -> None:
        self.text.set_classnames(self._knowledge_names(classnames))
        self._names = list(classnames)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f, patches = frozen_image_tokens(self.clip, images)
        pooled = text_guided_pooling(patches, self.query[None].to(patches.dtype), self.logit_scale)[:, 0]
        f = f + self.head(pooled.to(self.head.weight.dtype))
        g = self.text(self.ctx)  # (C, E)
        if self.training:
            self.features = {"text": g}
        return self.logits(f, g)


@STRATEGIES.register("kapt", config=KAPTConfig)
class KAPT(PromptLearnerTemplate):
    """KAPT as an Avalanche strategy: ``model`` is a ``KAPTModel``; CE + ``w`` * description-context pull, SGD over
    ``ctx``, ``query`` and ``head``."""

    config_class = KAPTConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: KAPTConfig) -> KAPTModel:
        return KAPTModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def criterion(self) -> torch.Tensor:
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training:
            return ce
        m = self.model
        d = m.knowledge.features_for(m.classnames)
        return ce + self.cfg.w * cosine_consistency(F.normalize(m.features["text"].float(), dim=-1), d.float())
