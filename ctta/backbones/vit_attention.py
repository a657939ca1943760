"""Explicit-attention ViT blocks: attention-map export, head ablation, post-softmax group masks, class-token prompts.

Shared by Prompt-CAM (Chowdhury et al., "Prompt-CAM: Making Vision Transformers Interpretable for Fine-Grained
Analysis", CVPR 2025; reference Imageomics/Prompt_CAM @ 7722fc2, ``model/attention.py:AttentionPETL``,
``model/vision_transformer.py``) and TCPA (ICML 2025; zhoujiahuan1991/ICML2025-TCPA @ dce8b3a, its post-softmax
attention mask). Re-implemented from ``/work/shared/specs/remaining-seed-systems.md`` A1/A2 and §19 (V2, V3); no
code copied. Like ``ctta.backbones.vit`` these functions drive timm's own block modules (``norm1``, ``attn.qkv``,
``attn.proj``, ``ls1``, ``mlp``...); only the attention product is written out explicitly so that the
probabilities can be read and edited.

Hooks:
- ``blur``: ``(heads, rows)``: in the listed heads, the **pre-softmax** scores of the listed query rows are set to 0,
  so those rows attend uniformly (Prompt-CAM's head "blurring" used to rank heads; not a -inf mask).
- ``post_mask``: a 0/1 (or real) tensor broadcastable to ``(B, H, Nq, Nk)`` multiplied onto the attention
  probabilities **after** the softmax, without renormalising (TCPA's group mask: e.g. prompts act as keys/values
  only for the token group they belong to).

Deviations: timm's fused ``scaled_dot_product_attention`` is replaced by the explicit product (equal up to float
rounding; the test compares both); attention dropout is not applied (frozen backbones run in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctta.backbones.vit import _check_block, _heads, _prompt_kv, block_forward

__all__ = ["explicit_attention", "explicit_block", "class_token_forward"]

Blur = tuple[Sequence[int], Sequence[int]]


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, blur: Blur | None = None,
    post_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale) v`` with the hooks above; returns ``(out (B, H, Nq, hd), probs (B, H, Nq, Nk))``.

    Args:
        q, k, v: ``(B, H, Nq, hd)``, ``(B, H, Nk, hd)``, ``(B, H, Nk, hd)``.
        scale: score scale (``hd ** -0.5`` in timm).
        blur: ``(heads, rows)`` whose pre-softmax scores are set to 0 (uniform attention for those rows).
        post_mask: multiplied onto the probabilities after the softmax (broadcast to ``(B, H, Nq, Nk)``).
    """
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if blur is not None and len(blur[0]) and len(blur[1]):
        heads = torch.as_tensor(list(blur[0]), device=q.device)
        rows = torch.as_tensor(list(blur[1]), device=q.device)
        keep = torch.ones(scores.shape[1:3], dtype=scores.dtype, device=q.device)  # (H, Nq)
        keep[heads.unsqueeze(1), rows.unsqueeze(0)] = 0.0
        scores = scores * keep[None, :, :, None]
    probs = scores.softmax(dim=-1)
    if post_mask is not None:
        probs = probs * post_mask.to(probs.dtype)
    return probs @ v, probs


def explicit_block(
    block: nn.Module, x: torch.Tensor, blur: Blur | None = None, post_mask: torch.Tensor | None = None,
    prompt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm pre-norm ViT block on ``x`` (B, N, D) with explicit attention; returns ``(out, probs)``.

    With no hooks ``out`` equals ``block(x)`` (up to float rounding) and ``probs`` is the block's attention
    ``(B, H, N, N)``. ``prompt`` tokens ``(B or 1, L, D)``/``(L, D)`` act as keys/values only (appended after the
    ``N`` keys, no outputs): ``probs`` is then ``(B, H, N, N+L)`` and ``post_mask`` covers those ``N+L`` keys.
    """
    _check_block(block)
    attn = block.attn
    b, n, _ = x.shape
    h = block.norm1(x)
    q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prompt is not None:
        pk, pv = _prompt_kv(block, prompt)
        k = torch.cat([k, _heads(pk, b, attn.num_heads)], dim=2)
        v = torch.cat([v, _heads(pv, b, attn.num_heads)], dim=2)
    o, probs = explicit_attention(q, k, v, attn.scale, blur, post_mask)
    o = attn.norm(o.transpose(1, 2).reshape(b, n, -1))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    x = x + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(o))))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))), probs


def class_token_forward(
    backbone: nn.Module, x: torch.Tensor, prompts: torch.Tensor, blur_heads: Sequence[int] = (),
    blur_rows: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep prompts read at the output as class tokens (Prompt-CAM's forward); returns ``(feats, probs)``.

    At block ``i < depth-1`` the layer-``i`` prompts ``prompts[i]`` (P, D) join the sequence and their outputs are
    dropped (they act through keys/values only, ``block_forward``). At the last block they are prepended
    (``[prompts, CLS, patches]``), the block runs with explicit attention and every output is kept.

    Args:
        backbone: a ``PromptedViT``.
        x: images ``(B, C, H, W)``.
        prompts: ``(depth, P, D)``.
        blur_heads: last-block heads whose query rows ``blur_rows`` are blurred (pre-softmax scores set to 0).
        blur_rows: query rows to blur (default: all P prompt rows).

    Returns:
        ``feats``: the P prompt outputs after the final norm, ``(B, P, D)``; ``probs``: the last block's attention
        ``(B, H, P+1+N, P+1+N)`` (rows/columns ordered prompts, CLS, patches).
    """
    depth, n_p = backbone.depth, prompts.shape[1]
    if prompts.shape[0] != depth:
        raise ValueError(f"prompts have {prompts.shape[0]} layers; the backbone has {depth} blocks")
    t = backbone.embed(x)
    for i, blk in enumerate(backbone.vit.blocks[:-1]):
        t = block_forward(blk, t, prompt=prompts[i] if n_p else None)
    p = prompts[-1].unsqueeze(0).expand(t.shape[0], -1, -1).to(t.dtype)
    rows = range(n_p) if blur_rows is None else blur_rows
    t, probs = explicit_block(backbone.vit.blocks[-1], torch.cat([p, t], dim=1), (blur_heads, rows))
    return backbone.vit.norm(t)[:, :n_p], probs
