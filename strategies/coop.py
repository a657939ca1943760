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

import torch
from torch import nn

from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image
from ctta.registry import STRATEGIES

__all__ = ["CoOp", "CoOpConfig", "CoOpModel"]


@dataclass(frozen=True)
class CoOpConfig(PromptLearnerConfig):
    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.002
    n_ctx: int = 16  # used when ctx_init is empty
    ctx_init: str = "a photo of a"
    csc: bool = False  # class-specific context (needs ctx_init "")
    class_token_position: str = "end"  # end | middle | front


class CoOpModel(PromptedCLIP):
    """Frozen CLIP + CoOp context ``ctx``: ``(M, D)`` shared or ``(C, M, D)`` class-specific."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: CoOpConfig = CoOpConfig()) -> None:
        if cfg.csc and cfg.ctx_init:
            raise ValueError("csc=True needs ctx_init='' (class-specific contexts start random, as in CoOp)")
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, 0 if cfg.ctx_init else cfg.n_ctx)
        super().__init__(
            clip_model, tokenizer, classnames, layout, position=cfg.class_token_position, truncate=cfg.truncate
        )
        if cfg.csc:
            ctx0 = torch.randn(len(classnames), *ctx0.shape) * 0.02  # (C, M, D)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))

    def set_classnames(self, classnames) -> None:
        if self.ctx.dim() == 3 and len(classnames) != self.ctx.shape[0]:
            raise ValueError(f"class-specific context for {self.ctx.shape[0]} classes, got {len(classnames)} names")
        super().set_classnames(classnames)

    def text_features(self) -> torch.Tensor:
        return self.text(self.ctx)  # (C, E)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(encode_image(self.clip, images), self.text_features())


@STRATEGIES.register("coop", config=CoOpConfig)
class CoOp(PromptLearnerTemplate):
    """CoOp as an Avalanche strategy: ``model`` is a ``CoOpModel``; SGD over ``ctx`` with the per-epoch schedule."""

    config_class = CoOpConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: CoOpConfig) -> CoOpModel:
        return CoOpModel(clip_model, tokenizer, classnames, cfg)
