"""MaPLe: multi-modal prompt learning (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023,
arXiv 2210.03117). Official code: muzairkhattak/multimodal-prompt-learning@69bce21 ``trainers/maple.py`` and
``clip/model.py`` (MIT; behaviour read, re-implemented on open_clip's own modules, no code copied).

Text: ``n_ctx`` context tokens initialised from the first words of ``ctx_init`` replace them in the text, which
stays ``a photo of a <name>.``; deep text prompts ``P_1..P_{J-1}`` (N(0, 0.02^2)) replace the context states at
layers 1..J-1. Vision: ``V_0 = F_0(ctx)`` appended after the patch tokens (before ``ln_pre``), ``V_i = F_i(P_i)``
replacing them at layers 1..J-1, each ``F_i`` a ``Linear(d_text -> d_vision)`` (the deep ones start as copies of
one layer). Cross-entropy only. Defaults: the official base-to-new config ``vit_b16_c2_ep5_batch4_2ctx`` (n_ctx 2,
J = 9, SGD lr 0.0035, batch 4, 5 epochs); cross-dataset: ``depth: 3``, ``lr: 0.0026``, ``epochs: 2``.

Deviations: prompts are inserted in the running dtype (the reference rounds every inserted prompt to fp16, up to
~1e-3 on the logits); the text is truncated at the longest EOT with the class-independent prefix (SOS, context, deep
prompts, "of a") encoded once (exact); ``prec: fp16`` applies on CUDA only; ``prec: fp32`` works (it crashes in the
reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctta.clip_prompting.compound import CompoundPromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["MaPLe", "MaPLeConfig", "MaPLeModel"]


@dataclass(frozen=True)
class MaPLeConfig(PromptLearnerConfig):
    epochs: int = ranged(5, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0035, gt=0)
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9  # J: the input layer plus J-1 deep layers (both towers)


class MaPLeModel(CompoundPromptedCLIP):
    """Frozen CLIP + ``ctx`` ``(n, D)``, deep text prompts ``deep_text[i]`` ``(n, D)`` and ``coupling`` (the core's
    ``CompoundPromptedCLIP``, configured from ``MaPLeConfig``); logits of the prompted image and text towers."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: MaPLeConfig = MaPLeConfig(), *, generator=None) -> None:
        super().__init__(clip_model, tokenizer, classnames, n_ctx=cfg.n_ctx, ctx_init=cfg.ctx_init, depth=cfg.depth,
                         truncate=cfg.truncate, round_prompts=cfg.round_prompts, generator=generator)  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ctx, deep, v0, vs = self.prompts()
        g = self.text(ctx, deep)  # (C, E)
        f = encode_image(self.clip, images, v0, vs, round_prompts=self.round_prompts)  # (B, E)
        return self.logits(f, g)


@STRATEGIES.register("maple", config=MaPLeConfig)
class MaPLe(PromptLearnerTemplate):
    """MaPLe as an Avalanche strategy: ``model`` is a ``MaPLeModel``; SGD over the prompts and coupling maps."""

    config_class = MaPLeConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: MaPLeConfig) -> MaPLeModel:
        return MaPLeModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
