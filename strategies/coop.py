"""CoOp: learnable text context for CLIP (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022,
arXiv 2109.01134). Official code: KaiyangZhou/CoOp@ff61507 ``trainers/coop.py`` (MIT; behaviour read,
re-implemented on open_clip, no code copied).

The prompt of class ``c`` is ``[SOS] ctx_1..ctx_M <name_c> . [EOT]``; ``ctx`` is shared by all classes or
class-specific (``csc``), initialised from words (``ctx_init``, M = their count) or N(0, 0.02^2); the class token
sits at the end, in the middle or in front. Only ``ctx`` is trained, with cross-entropy on
``exp(logit_scale) * cos(f, g_c)``. Defaults: the official base-to-new config ``vit_b16_ctxv1`` (M = 4 from
"a photo of a", SGD lr 0.002, batch 32, 200 epochs; ImageNet uses 50); the CoOp paper's few-shot setting is
``ctx_init: ""``, ``n_ctx: 16``.

Deviations: text is truncated at the longest EOT and the class-independent prefix is encoded once (both exact;
``truncate: false`` gives the 77-token path); ``csc`` with ``ctx_init`` is refused (the reference silently ignores
``csc`` then); ``prec: fp16`` applies on CUDA only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctta.clip_prompting.context import ContextConfig, ContextModel
from ctta.clip_prompting.template import PromptLearnerTemplate, init_generator
from ctta.registry import STRATEGIES

__all__ = ["CoOp", "CoOpConfig", "CoOpModel"]


@dataclass(frozen=True)
class CoOpConfig(ContextConfig):
    """CoOp settings: ``ctta.clip_prompting.context.ContextConfig`` at the official base-to-new defaults."""


CoOpModel = ContextModel  # frozen CLIP + CoOp context ``ctx``


@STRATEGIES.register("coop", config=CoOpConfig)
class CoOp(PromptLearnerTemplate):
    """CoOp as an Avalanche strategy: ``model`` is a ``CoOpModel``; SGD over ``ctx`` with the per-epoch schedule."""

    config_class = CoOpConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: CoOpConfig) -> CoOpModel:
        return CoOpModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
