"""Prompted CLIP image tower: vision prompts appended after the patch tokens, replaced at deeper layers.

Papers: MaPLe (Khattak et al., CVPR 2023, arXiv 2210.03117), PromptSRC / IVLP (Khattak et al., ICCV 2023,
arXiv 2307.06948). References (behaviour read, re-implemented, no code copied):
muzairkhattak/multimodal-prompt-learning@69bce21 ``clip/model.py:{VisionTransformer_MaPLe,
ResidualAttentionBlock_MaPLe}``, muzairkhattak/PromptSRC@bb95c77 ``clip/model.py:ResidualAttentionBlock_IVLP``.

The input-layer prompts ``V_0`` are appended after the positional embedding (so they get none) and pass through
``ln_pre`` with the image tokens; at layer ``i >= 1`` the last ``n`` tokens are replaced by ``V_i``. The tower is
open_clip's own ``VisionTransformer`` modules (``conv1``, ``class_embedding``, ``positional_embedding``,
``patch_dropout``, ``ln_pre``, the residual blocks, ``_pool``, ``proj``), never a fork; with no prompts the output
equals ``visual(x)``.

fp16 rounding (``round_prompts=True``, the default): every inserted vision prompt (``V_0`` and each ``V_i``,
MaPLe's coupled prompts included) is ``V.expand(B, ...).half()`` cast back to the running dtype, as the official
MaPLe / PromptSRC code computes in every precision; ``round_prompts=False`` inserts them unrounded.

Deviations: none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["encode_image", "vision_width"]


def vision_width(clip_model: nn.Module) -> int:
    """Token width of the image transformer (768 for ViT-B/16)."""
    visual = clip_model.visual
    if not hasattr(visual, "conv1") or not hasattr(visual, "class_embedding"):
        raise TypeError(f"{type(visual).__name__}: vision prompts need an open_clip VisionTransformer")
    return int(visual.class_embedding.shape[-1])


def encode_image(
    clip_model: nn.Module,
    images: torch.Tensor,
    prompts: torch.Tensor | None = None,
    deep: Sequence[torch.Tensor] = (),
    *,
    normalize: bool = False,
    round_prompts: bool = True,
    block=None,
) -> torch.Tensor:
    """Image features with vision prompts.

    Args:
        clip_model: a frozen open_clip ``CLIP`` with a ``VisionTransformer`` image tower.
        images: ``(B, 3, H, W)``.
        prompts: input-layer prompts ``V_0``: ``(n, W)`` (shared) or ``(B, n, W)``; None: no prompts.
        deep: ``V_1..V_{J-1}``, each ``(n, W)``, replacing the last ``n`` tokens at layers 1..J-1.
        normalize: L2-normalise the features.
        round_prompts: round every inserted prompt to fp16 (the official code's ``.half()``).
        block: ``block(blk, x, n) -> x`` run in place of each residual block ``blk(x)`` (``n``: prompt tokens at
            the end of ``x``), e.g. DPL's decoupled attention; None: the block itself.
    """
    visual = clip_model.visual
    if prompts is None and not len(deep):
        feats = visual(images.to(_dtype(visual)))
        return feats / feats.norm(dim=-1, keepdim=True) if normalize else feats
    vision_width(clip_model)
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise TypeError("vision prompts support open_clip ViTs with token pooling (no attention pooling)")
    if prompts is None:
        raise ValueError("deep vision prompts need input-layer prompts V_0")
    blocks = visual.transformer.resblocks
    if len(deep) >= len(blocks):
        raise ValueError(f"{len(deep)} deep vision prompts for {len(blocks)} layers")
    x = visual.conv1(images.to(_dtype(visual)))  # (B, W, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g*g, W)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+g*g, W)
    x = visual.patch_dropout(x)
    p = _insert(prompts if prompts.dim() == 3 else prompts.expand(x.shape[0], -1, -1), x.dtype, round_prompts)
    n = p.shape[1]
    x = visual.ln_pre(torch.cat([x, p], dim=1))  # (B, T+n, W): prompts carry no positional embedding
    for i, blk in enumerate(blocks):
        if 1 <= i <= len(deep):  # V_i replaces the last n tokens
            x = torch.cat([x[:, :-n], _insert(deep[i - 1].expand(x.shape[0], -1, -1), x.dtype, round_prompts)], dim=1)
        x = blk(x) if block is None else block(blk, x, n)
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled / pooled.norm(dim=-1, keepdim=True) if normalize else pooled


def _insert(p: torch.Tensor, dtype: torch.dtype, round_prompts: bool) -> torch.Tensor:
    """An expanded prompt ``(B, n, W)`` as inserted: fp16-rounded with ``round_prompts``, in ``dtype``."""
    return (p.half() if round_prompts else p).to(dtype)


def _dtype(visual: nn.Module) -> torch.dtype:
    return visual.conv1.weight.dtype
