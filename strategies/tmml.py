"""Task-Oriented Multi-Modal Mutual Learning (Long et al., ICCV 2023, arXiv 2303.17169): class-aware text prompts
(CTP) and text-guided feature tuning (TFT). **Unofficial, from the paper** (its abstract: no official code was
found, spec ``clip-prompt-learners.md`` section 5). Nothing is copied from any code.

With ``f_b`` the frozen image feature, ``P_b`` its frozen patch features (projected to the joint space) and ``t_c``
the frozen text feature of "a photo of a {name}." (``^`` = L2-normalised)::

    CTP:  ctx_{b,c} = ctx + meta_net(norm(f^_b * t^_c))           (CoCoOp's meta-net, one bias per image AND class)
          g_{b,c}   = text encoder(ctx_{b,c}, name_c)
    TFT:  a_{b,c}   = softmax_p(scale * <P^_{b,p}, t^_c>)           (text-guided attention over the patches)
          f'_{b,c}  = f_b + tft(sum_p a_{b,c,p} P_{b,p})           (tft: Linear(E, E), zero-initialised)
    logits_{b,c} = scale * cos(f'_{b,c}, g_{b,c});  loss = cross-entropy

Choices the paper (as available: the abstract) leaves open, with the value taken and why:

- CTP conditioning: the element-wise product of the normalised image and label-text features, re-normalised (so
  the meta-net sees a unit vector as in CoCoOp, and each class gets its own label-related image semantics); the
  meta-net is CoCoOp's (E -> E/16 -> D); the bias is added to every context token.
- TFT: one attention step with the label-text feature as the query over the frozen patch features, at CLIP's own
  temperature (``logit_scale``), then a zero-initialised residual Linear(E, E), so training starts at CoCoOp's
  model with the frozen image feature.
- The "contrastive loss that aligns the augmented text and image features" is the image-to-text cross-entropy over
  the cosine logits of the augmented pairs (no separate text-to-image term).
- Context, optimiser and budget: CoCoOp's base-to-new setting (the baseline the paper compares with): "a photo of
  a", SGD lr 0.002, batch 1, 10 epochs, last-epoch model.

Trainable parameters on ViT-B/16: ctx 4 x 512 + meta-net (512 x 32 + 32 + 32 x 512 + 512) + tft (512 x 512 + 512) =
298,016 (``tests/test_tmml.py``); no published count was found in the available text.

Deviations: none from the paper as far as it is known; everything above is a choice. Text is encoded once per image
and class (``B x C`` prompts per step), as the method requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.coupling import MetaNet
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.patch_tokens import frozen_image_tokens, text_guided_pooling
from ctta.clip_prompting.teacher import FrozenCLIPTeacher
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["TMML", "TMMLConfig", "TMMLModel", "class_aware_input", "frozen_image_tokens", "text_guided_pooling"]


@dataclass(frozen=True)
class TMMLConfig(PromptLearnerConfig):
    """TMML settings (choices, see the module docstring)."""

    epochs: int = ranged(10, ge=1)
    batch_size: int = ranged(1, ge=1)
    lr: float = ranged(0.002, gt=0)
    ctx_init: str = "a photo of a"
    n_ctx: int = 4  # used when ctx_init is empty
    meta_reduction: int = 16  # meta-net hidden width = embed_dim // meta_reduction
    label_template: str = "a photo of a {}."  # the frozen label text t_c


def class_aware_input(f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """CTP's meta-net input ``norm(norm(f_b) * norm(t_c))``: ``(B, E)`` x ``(C, E)`` -> ``(B, C, E)``."""
    return F.normalize(F.normalize(f, dim=-1)[:, None] * F.normalize(t, dim=-1)[None], dim=-1)


class TMMLModel(PromptedCLIP):
    """Frozen CLIP + context ``ctx``, ``meta_net`` (CTP) and ``tft`` (TFT); ``labels`` holds the frozen label texts."""

    context_is_the_prompt = False  # image- and class-conditioned prompts: TPT tunes through the forward

    def __init__(self, clip_model, tokenizer, classnames, cfg: TMMLConfig, *, generator=None) -> None:
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, 0 if cfg.ctx_init else cfg.n_ctx)
        super().__init__(clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=False)
        dtype = self.text.cast_dtype
        self.ctx = nn.Parameter(ctx0.to(dtype))
        embed = self.clip.text_projection.shape[-1] if self.clip.text_projection is not None else ctx0.shape[-1]
        self.meta_net = MetaNet(embed, ctx0.shape[-1], cfg.meta_reduction, generator=generator).to(dtype)
        self.tft = nn.Linear(embed, embed).to(dtype)
        nn.init.zeros_(self.tft.weight)
        nn.init.zeros_(self.tft.bias)
        self.labels = FrozenCLIPTeacher(clip_model, tokenizer, classnames, [cfg.label_template], round_embeddings=False)

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        self.labels.set_classnames(classnames)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f, patches = frozen_image_tokens(self.clip, images)
        t = self.labels.text_features.to(f.dtype)  # (C, E)
        bias = self.meta_net(class_aware_input(f, t).to(self.ctx.dtype))  # (B, C, D)
        g = self.text(self.ctx[None, None] + bias[:, :, None])  # (B, C, E): one prompt per image and class
        pooled = text_guided_pooling(patches, t, self.logit_scale)
        f_tuned = f[:, None] + self.tft(pooled.to(self.tft.weight.dtype))  # (B, C, E)
        f_tuned, g = F.normalize(f_tuned.float(), dim=-1), F.normalize(g.float(), dim=-1)
        return self.logit_scale * (f_tuned * g).sum(-1)


@STRATEGIES.register("tmml", config=TMMLConfig)
class TMML(PromptLearnerTemplate):
    """TMML as an Avalanche strategy: ``model`` is a ``TMMLModel``; cross-entropy, SGD over ``ctx``, ``meta_net``
    and ``tft``."""

    config_class = TMMLConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: TMMLConfig) -> TMMLModel:
        return TMMLModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
