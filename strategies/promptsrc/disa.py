"""DiSa: Directional Saliency-Aware Prompt Learning (Talemi et al., KDD 2025, arXiv 2505.19373). **Unofficial, from
the paper** (its summary: no official code was found, spec ``clip-prompt-learners.md`` section 15). Nothing is copied
from any code.

Built on PromptSRC's IVLP prompts, teacher, self-regulating loss and GPA (``ctta.strategies.promptsrc``), with::

    L = CE + L_SR + cir_weight * L_CIR + dir_weight * L_DiR
    L_CIR = CE(scale * cos(f_mask, t_zs), y) + CE(scale * cos(f_zs, g), y)     (cross-interactive alignment)
    L_DiR = mean_b (1 - cos(f_b, mu_{y_b}))                                 (directional prototype loss)

``f`` / ``g`` are the prompted image / text features, ``f_zs`` / ``t_zs`` the frozen ones, ``f_mask`` the prompted
feature of the saliency-masked image and ``mu_c`` the class prototype.

Choices the paper (as available: summary pages) leaves open, with the value taken and why:

- Saliency: of patch ``p`` of image ``b``, ``cos(P_{b,p}, t_zs[y_b])`` between the frozen patch feature (projected
  to the joint space, ``ctta.clip_prompting.patch_tokens.frozen_image_tokens``) and the frozen text feature of the
  label; the ``keep_ratio`` = 0.5 most salient patches are kept, the others zeroed in pixel space (``saliency_mask``).
- Prototypes: the running mean of the frozen image features of each class over the batches seen so far in the
  experience (the class mean of frozen features, without an extra pass over the data); orientation only (cosine).
- Weights: ``cir_weight`` 1.0 and ``dir_weight`` 1.0 (no values available); PromptSRC's settings otherwise
  (4 + 4 tokens, depth 9, SGD lr 0.0025, batch 4, 20 epochs, GPA 15 / 1).

Trainable parameters on ViT-B/16: PromptSRC's, 9 x 4 x 512 + 9 x 4 x 768 = 46,080 (``tests/test_disa.py``); no
published count was found.

Deviations: none from the paper as far as it is known; everything above is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ctta.strategies.promptsrc.strategy import PromptSRC, PromptSRCConfig, PromptSRCModel

from ctta.clip_prompting.patch_tokens import frozen_image_tokens
from ctta.clip_prompting.template import init_generator
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["DiSa", "DiSaConfig", "DiSaModel", "directional_loss", "saliency_mask"]


@dataclass(frozen=True)
class DiSaConfig(PromptSRCConfig):
    """DiSa settings: PromptSRC's plus the two new terms (choices, see the module docstring)."""

    cir_weight: float = 1.0
    dir_weight: float = 1.0
    keep_ratio: float = ranged(0.5, gt=0, le=1)  # fraction of the most salient patches kept


def saliency_mask(saliency: torch.Tensor, keep_ratio: float, patch: int) -> torch.Tensor:
    """Pixel mask ``(B, 1, g*patch, g*patch)``: 1 on the ``round(keep_ratio * N)`` most salient of the ``N = g*g``
    patches (``saliency`` ``(B, N)``, row-major grid), 0 elsewhere."""
    b, n = saliency.shape
    g = int(round(n**0.5))
    k = max(1, int(round(keep_ratio * n)))
    keep = torch.zeros_like(saliency).scatter_(1, saliency.topk(k, dim=1).indices, 1.0)
    return keep.view(b, 1, g, g).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def directional_loss(features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_b (1 - cos(f_b, mu_{y_b}))``."""
    return (1 - F.cosine_similarity(features.float(), prototypes[labels].float(), dim=-1)).mean()


class DiSaModel(PromptSRCModel):
    """PromptSRC's model with the prompted image encoder exposed (``prompted_image``) for the masked view."""

    def prompted_image(self, images: torch.Tensor) -> torch.Tensor:
        f = encode_image(self.clip, images, self.vpt, list(self.deep_vision), round_prompts=self.round_prompts)
        return F.normalize(f, dim=-1)

    def masked_view(self, images: torch.Tensor, label_text: torch.Tensor, keep_ratio: float) -> torch.Tensor:
        """``images`` with the least salient patches zeroed (saliency against ``label_text`` ``(B, E)``)."""
        _, patches = frozen_image_tokens(self.clip, images)
        sal = F.cosine_similarity(patches.float(), label_text[:, None].float(), dim=-1)  # (B, N)
        size = self.clip.visual.patch_size
        mask = saliency_mask(sal, keep_ratio, size[0] if isinstance(size, tuple) else int(size))
        return images * mask[..., : images.shape[-2], : images.shape[-1]].to(images.dtype)


@STRATEGIES.register("disa", config=DiSaConfig)
class DiSa(PromptSRC):
    """DiSa as an Avalanche strategy: PromptSRC's loss and GPA plus the cross-interactive and directional terms."""

    config_class = DiSaConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: DiSaConfig) -> DiSaModel:
        return DiSaModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def make_optimizer(self, **kwargs) -> None:
        super().make_optimizer(**kwargs)
        self.proto_sum, self.proto_count = None, None  # running class means, per experience

    def _prototypes(self, zs_image: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
        if self.proto_sum is None or self.proto_sum.shape[0] != n_classes:
            self.proto_sum = zs_image.new_zeros(n_classes, zs_image.shape[-1])
            self.proto_count = zs_image.new_zeros(n_classes)
        self.proto_sum.index_add_(0, y, F.normalize(zs_image.float(), dim=-1))
        self.proto_count.index_add_(0, y, torch.ones_like(y, dtype=zs_image.dtype))
        return self.proto_sum / self.proto_count.clamp_min(1)[:, None]

    def criterion(self) -> torch.Tensor:
        base = super().criterion()
        if not self.is_training:
            return base
        m, cfg = self.model, self.cfg
        y = self.mb_y if self.seen is None else torch.searchsorted(torch.tensor(self.seen, device=self.mb_y.device),
                                                                   self.mb_y)  # fmt: skip
        t_zs = F.normalize(m.teacher.text_features.float(), dim=-1)  # (C, E) the head's classes
        with torch.no_grad():
            zs_image = m.teacher.image_features(self.mb_x)
            masked = m.masked_view(self.mb_x, t_zs[y], cfg.keep_ratio)
        f_mask = m.prompted_image(masked).float()
        scale = m.logit_scale.float()
        cir = F.cross_entropy(scale * f_mask @ t_zs.t(), y)
        cir = cir + F.cross_entropy(scale * F.normalize(zs_image, dim=-1) @ m.features["text"].float().t(), y)
        protos = self._prototypes(zs_image.detach(), y, t_zs.shape[0])
        return base + cfg.cir_weight * cir + cfg.dir_weight * directional_loss(m.features["image"], protos, y)
