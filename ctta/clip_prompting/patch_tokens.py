"""Patch-level image features of a frozen open_clip ViT and text-guided pooling over them.

Used by TMML (TFT's text-guided feature tuning), KAPT (attention pooling over patches) and DiSa (saliency of patches
under the label's text); all three are unofficial re-implementations from their papers (see their module docstrings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["frozen_image_tokens", "text_guided_pooling"]


def text_guided_pooling(patches: torch.Tensor, t: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """TFT's ``sum_p softmax_p(scale <P^_{b,p}, t^_c>) P_{b,p}``: ``(B, N, E)`` x ``(C, E)`` -> ``(B, C, E)``."""
    s = scale * torch.einsum("bne,ce->bcn", F.normalize(patches, dim=-1), F.normalize(t, dim=-1))
    return torch.einsum("bcn,bne->bce", torch.softmax(s, dim=-1), patches)


@torch.no_grad()
def frozen_image_tokens(clip_model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen image feature ``(B, E)`` and patch features ``(B, N, E)`` (open_clip's pooled and token outputs,
    both through the image projection)."""
    visual = clip_model.visual
    if not hasattr(visual, "_embeds") or getattr(visual, "attn_pool", None) is not None:
        raise TypeError("TFT needs an open_clip VisionTransformer with token pooling")
    x = visual.transformer(visual._embeds(images.to(visual.conv1.weight.dtype)))
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
    return pooled, tokens
