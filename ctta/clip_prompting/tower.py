"""The mechanics under ``PromptedText``: open_clip's text tower, length buckets and the shared-prefix residual block.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134), TPT (Shu et al., NeurIPS 2022). The function reproduced is
open_clip v3.3.0 ``CLIP.encode_text``. Why each piece is exact is argued once, in ``ctta.clip_prompting.text``
(``PromptedText``'s docstring) and tested in ``tests/test_clip_prompted_text.py``:

- ``bucket_plan``: classes split into length buckets by dynamic programming (fewest encoded tokens);
- ``shared_prefix_block``: one open_clip ``ResidualAttentionBlock`` on ``cat(prefix, suffix_c)`` for every class c
  with the prefix computed once per context; it drives the block's own modules (``ln_1``, ``attn.in_proj_*``,
  ``attn.out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``) with ``scaled_dot_product_attention`` in place of
  ``nn.MultiheadAttention``'s call (same math); ``shared_prefix_ok`` says when a block is of that form;
- ``text_tower``: the text modules of an open_clip ``CLIP`` or ``CustomTextCLIP``.

Deviations: none (no reference code is reproduced here beyond open_clip's own modules).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["bucket_plan", "shared_prefix_block", "shared_prefix_ok", "text_tower"]


def bucket_plan(eot: Sequence[int], n_buckets: int = 4, context_length: int | None = None):
    """Split classes into at most ``n_buckets`` length buckets minimising the number of encoded tokens.

    Args:
        eot: end-of-text position of every class prompt.
        n_buckets: maximum number of buckets (1 = truncate every prompt at the longest EOT).
        context_length: if given, a single bucket of that length (no truncation: the straightforward path).

    Returns:
        list of ``(class indices, length)``; lengths are ``max EOT + 1`` within each bucket.
    """
    n = len(eot)
    if n == 0:
        raise ValueError("no classes to encode")
    if context_length is not None:
        return [(list(range(n)), int(context_length))]
    order = sorted(range(n), key=lambda c: eot[c])
    lens = [eot[c] + 1 for c in order]
    ends = [i + 1 for i in range(n) if i == n - 1 or lens[i] != lens[i + 1]]  # run ends (exclusive)
    starts = [0] + ends[:-1]
    k_runs, b_max = len(ends), max(1, min(n_buckets, len(ends)))
    inf = float("inf")
    dp = [[inf] * (b_max + 1) for _ in range(k_runs + 1)]
    arg = [[0] * (b_max + 1) for _ in range(k_runs + 1)]
    dp[0][0] = 0
    for k in range(1, k_runs + 1):
        for b in range(1, b_max + 1):
            for j in range(k):
                cost = dp[j][b - 1] + (ends[k - 1] - starts[j]) * lens[ends[k - 1] - 1]
                if cost < dp[k][b]:
                    dp[k][b], arg[k][b] = cost, j
    b = min(range(1, b_max + 1), key=lambda bb: (dp[k_runs][bb], bb))
    plan, k = [], k_runs
    while k > 0:
        j = arg[k][b]
        plan.append((order[starts[j] : ends[k - 1]], lens[ends[k - 1] - 1]))
        k, b = j, b - 1
    return plan[::-1]


def shared_prefix_ok(blk: nn.Module) -> bool:
    """Whether ``blk`` is open_clip's ``ResidualAttentionBlock`` with a plain self-attention (shared prefix works)."""
    attn = getattr(blk, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and not hasattr(blk, "ln_1_kv")
        and all(hasattr(blk, a) for a in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
    )


def _causal(n_rows: int, n_prefix: int, like: torch.Tensor) -> torch.Tensor:
    """Additive mask ``(n_rows, n_prefix + n_rows)``: every prefix key visible, causal among the rows."""
    causal = torch.full((n_rows, n_rows), float("-inf"), dtype=like.dtype, device=like.device).triu(1)
    return torch.cat([causal.new_zeros(n_rows, n_prefix), causal], dim=1)


def shared_prefix_block(blk: nn.Module, pre: torch.Tensor, suf: torch.Tensor, n_cls: int):
    """``blk`` on ``cat(prefix, suffix_c)`` for every class c, with the prefix computed once per context.

    Args:
        blk: an open_clip ``ResidualAttentionBlock`` (its own modules are used; the math of its forward).
        pre: ``(S, P, D)`` prefix hidden states (attend only to themselves, causally).
        suf: ``(S*Cb, M, D)`` class-token hidden states, sample-major.
        n_cls: Cb, classes per context.
    """
    attn = blk.attn
    n_heads, width = attn.num_heads, pre.shape[-1]

    def heads(x):  # (..., T, D) -> (..., H, T, hd)
        return x.unflatten(-1, (n_heads, width // n_heads)).transpose(-3, -2)

    def merge(x):  # (..., H, T, hd) -> (..., T, D)
        return x.transpose(-3, -2).flatten(-2)

    qp, kp, vp = (heads(z) for z in F.linear(blk.ln_1(pre), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    qs, ks, vs = (heads(z) for z in F.linear(blk.ln_1(suf), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    out_p = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=_causal(pre.shape[1], 0, qp))  # (S, H, P, hd)
    k = torch.cat([kp.repeat_interleave(n_cls, dim=0), ks], dim=-2)  # (S*Cb, H, P+M, hd)
    v = torch.cat([vp.repeat_interleave(n_cls, dim=0), vs], dim=-2)
    out_s = F.scaled_dot_product_attention(qs, k, v, attn_mask=_causal(suf.shape[1], pre.shape[1], qs))
    pre = pre + blk.ls_1(attn.out_proj(merge(out_p)))
    suf = suf + blk.ls_1(attn.out_proj(merge(out_s)))
    pre = pre + blk.ls_2(blk.mlp(blk.ln_2(pre)))
    suf = suf + blk.ls_2(blk.mlp(blk.ln_2(suf)))
    return pre, suf


class _TextTower:
    """The text modules of an open_clip model (``CLIP`` keeps them on the model, ``CustomTextCLIP`` on ``.text``).

    Attributes are looked up on the module at every access, so buffers moved by ``.to(device)`` stay current.
    """

    def __init__(self, m: nn.Module) -> None:
        self._m = m

    def __getattr__(self, name: str):
        m = self.__dict__["_m"]
        if name == "pool_type":
            return getattr(m, "text_pool_type", getattr(m, "pool_type", "argmax"))
        if name == "attn_mask":
            return getattr(m, "attn_mask", None)
        return getattr(m, name)


def text_tower(model: nn.Module) -> _TextTower:
    m = model
    if not hasattr(m, "token_embedding") and hasattr(m, "text"):
        m = m.text
    missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final") if not hasattr(m, a)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not an open_clip CLIP with a built-in text transformer "
            f"(missing {missing}); Hugging Face text towers are not supported"
        )
    tower = _TextTower(m)
    if tower.attn_mask is None or tower.pool_type != "argmax" or getattr(m, "cls_emb", None) is not None:
        raise ValueError(
            f"{type(model).__name__}: the prompted encoder needs a causal text mask and argmax (EOT) "
            f"pooling (got mask={tower.attn_mask is not None}, pool_type={tower.pool_type!r})"
        )
    return tower
