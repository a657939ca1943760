"""CoCoOp: conditional context for CLIP (Zhou et al., "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022, arXiv 2203.05557). Official code: KaiyangZhou/CoOp@ff61507 ``trainers/cocoop.py`` (MIT; behaviour
read, re-implemented on open_clip, no code copied).

Each image ``x`` shifts every context token by ``pi(x) = meta_net(norm(f(x)))`` (Linear E -> E/16, ReLU,
Linear E/16 -> D); the class prompts are encoded once per image and the logits are
``exp(logit_scale) * cos(f(x), g_c(x))``. Trained: ``ctx`` and the meta-net (weight decay on every parameter).
Defaults: the official base-to-new config ``vit_b16_c4_ep10_batch1_ctxv1`` (M = 4 from "a photo of a", SGD lr
0.002, batch 1, 10 epochs).

Deviations: per-image text is encoded as one batch (the reference loops over the images; same values), truncated
at the longest EOT with the class-independent prefix encoded once per image (exact); ``prec: fp16`` applies on
CUDA only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.clip_prompting.coupling import MetaNet
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["CoCoOp", "CoCoOpConfig", "CoCoOpModel"]


@dataclass(frozen=True)
class CoCoOpConfig(PromptLearnerConfig):
    epochs: int = ranged(10, ge=1)
    batch_size: int = ranged(1, ge=1)
    lr: float = ranged(0.002, gt=0)
    n_ctx: int = 4  # used when ctx_init is empty
    ctx_init: str = "a photo of a"
    meta_reduction: int = 16  # meta-net hidden width = embed_dim // meta_reduction


class CoCoOpModel(PromptedCLIP):
    """Frozen CLIP + context ``ctx`` ``(M, D)`` + ``meta_net`` (image-conditioned bias of every context token)."""

    context_is_the_prompt = False  # the meta-net conditions the context on the image: TPT tunes both

    def __init__(
        self, clip_model, tokenizer, classnames, cfg: CoCoOpConfig = CoCoOpConfig(), *, generator=None
    ) -> None:
        n_ctx = 0 if cfg.ctx_init else cfg.n_ctx
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, n_ctx, generator=generator)
        super().__init__(
            clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=cfg.round_prompts
        )
        dtype = self.text.cast_dtype
        self.ctx = nn.Parameter(ctx0.to(dtype))
        embed_dim = self.clip.text_projection.shape[-1] if self.clip.text_projection is not None else ctx0.shape[-1]
        self.meta_net = MetaNet(embed_dim, ctx0.shape[-1], cfg.meta_reduction, generator=generator).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = encode_image(self.clip, images, normalize=True)  # (B, E)
        bias = self.meta_net(f.to(self.ctx.dtype))  # (B, D)
        ctx = self.ctx[None] + bias[:, None]  # (B, M, D): ctx_m + pi(x)
        g = self.text(ctx[:, None], normalize=True)  # (B, C, E): one text encoding per image
        return self.logit_scale * torch.einsum("be,bce->bc", f, g.to(f.dtype))


@STRATEGIES.register("cocoop", config=CoCoOpConfig)
class CoCoOp(PromptLearnerTemplate):
    """CoCoOp as an Avalanche strategy: ``model`` is a ``CoCoOpModel``; SGD over ``ctx`` and the meta-net."""

    config_class = CoCoOpConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: CoCoOpConfig) -> CoCoOpModel:
        return CoCoOpModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
