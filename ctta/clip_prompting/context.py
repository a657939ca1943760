"""CoOp's learnable text context on a frozen CLIP, shared by CoOp and PRE (which re-parameterises it).

Paper: Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022 (arXiv 2109.01134); official code
KaiyangZhou/CoOp@ff61507 ``trainers/coop.py`` (MIT; behaviour read, re-implemented on open_clip, no code copied).
The prompt of class ``c`` is ``[SOS] ctx_1..ctx_M <name_c> . [EOT]``; ``ctx`` is shared by all classes ``(M, D)`` or
class-specific ``(C, M, D)`` (``csc``), initialised from words (``ctx_init``) or N(0, 0.02^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged

__all__ = ["ContextConfig", "ContextModel"]


@dataclass(frozen=True)
class ContextConfig(PromptLearnerConfig):
    """The learnable text context's settings (CoOp's official base-to-new defaults ``vit_b16_ctxv1``)."""

    epochs: int = ranged(200, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.002, gt=0)
    n_ctx: int = 16  # used when ctx_init is empty
    ctx_init: str = "a photo of a"
    csc: bool = False  # class-specific context (needs ctx_init "")
    class_token_position: str = "end"  # end | middle | front


class ContextModel(PromptedCLIP):
    """Frozen CLIP + CoOp context ``ctx``: ``(M, D)`` shared or ``(C, M, D)`` class-specific."""

    def __init__(
        self, clip_model, tokenizer, classnames, cfg: ContextConfig = ContextConfig(), *, generator=None
    ) -> None:
        if cfg.csc and cfg.ctx_init:
            raise ValueError("csc=True needs ctx_init='' (class-specific contexts start random, as in CoOp)")
        n_ctx = 0 if cfg.ctx_init else cfg.n_ctx
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, n_ctx, generator=generator)
        super().__init__(
            clip_model, tokenizer, classnames, layout, position=cfg.class_token_position, truncate=cfg.truncate
        )
        if cfg.csc:
            ctx0 = torch.randn(len(classnames), *ctx0.shape, generator=generator) * 0.02  # (C, M, D)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))

    def set_classnames(self, classnames) -> None:
        if self.ctx.dim() == 3 and len(classnames) != self.ctx.shape[0]:
            raise ValueError(f"class-specific context for {self.ctx.shape[0]} classes, got {len(classnames)} names")
        super().set_classnames(classnames)

    def text_features(self) -> torch.Tensor:
        return self.text(self.ctx)  # (C, E)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(encode_image(self.clip, images), self.text_features())
