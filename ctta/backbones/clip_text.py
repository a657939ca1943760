"""CoOp-style prompted text encoder for CLIP over open_clip's own text modules, with exact truncation/bucketing.

Papers: CoOp context vectors (Zhou et al., IJCV 2022, arXiv 2109.01134) as used by TPT (Shu et al., NeurIPS 2022).
Reference: azshue/TPT@63ecbace ``clip/custom_clip.py:{PromptLearner, TextEncoder}`` (re-implemented,
no code copied); open_clip v3.3.0 ``CLIP.encode_text`` is
the function reproduced (the test compares both within 1e-5). Re-exported by ``ctta.backbones.clip``.

Exact speed-ups (equal in exact arithmetic; results differ at rounding level only):
- truncation at the longest end-of-text (EOT) position and length buckets: the mask is causal, pooling reads the EOT
  row and everything else acts per token, so positions after a prompt's EOT never reach its pooled feature;
  bucket boundaries are chosen by dynamic programming to minimise the encoded tokens (equal-count buckets would
  also be exact);
- shared prefix (``shared_prefix=True``): SOS and the context tokens are the same for every class and attend only
  to each other, so their hidden states (and keys/values) are computed once per context instead of once per class;
  the class tokens attend to the shared keys/values plus their own. This drives each residual block's own modules
  (``ln_1``, ``attn.in_proj_*``, ``attn.out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``) with
  ``scaled_dot_product_attention`` in place of ``nn.MultiheadAttention``'s call (same math); it falls back to the
  plain path for other block types.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PromptedTextEncoder", "bucket_plan"]


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


class PromptedTextEncoder(nn.Module):
    """Learnable CoOp context in front of class prompts, encoded with open_clip's own text modules.

    The prompt of class ``c`` is ``[SOS] ctx_1..ctx_n <name_c> . [EOT]``; with ``ctx`` at its initial value
    (the embedding of ``ctx_init``) the features equal ``clip.encode_text(tokenizer("a photo of a <name>."))``.

    Args:
        clip_model: a frozen open_clip ``CLIP`` (causal text mask, argmax pooling).
        tokenizer: its open_clip tokenizer.
        classnames: class names (``_`` is replaced by a space).
        n_ctx: number of context vectors when ``ctx_init`` is empty (random N(0, 0.02^2) init).
        ctx_init: initial phrase; ``n_ctx`` becomes its word count (reference behaviour).
        bucket: split classes into length buckets (exact speed-up).
        truncate: truncate prompts at the longest EOT (False = full context length, the straightforward path).
        n_buckets: maximum number of length buckets.
        shared_prefix: encode SOS + context once per context, not once per class (exact; needs ``truncate``).
        generator: RNG for the random context init.

    Attributes:
        ctx: ``(n_ctx, D)`` learnable parameter; ``ctx0`` its initial value (buffer).
        eot: ``(C,)`` EOT positions; ``plan``: list of ``(class indices, length)``.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        bucket: bool = True,
        *,
        truncate: bool = True,
        n_buckets: int = 4,
        shared_prefix: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip_model
        self.tower = _text_tower(clip_model)
        self.tokenizer = tokenizer
        self.truncate, self.bucket, self.n_buckets = truncate, bucket, n_buckets
        self.shared_prefix = shared_prefix and all(_shared_prefix_ok(b) for b in self.tower.transformer.resblocks)
        width = self.tower.token_embedding.embedding_dim
        if ctx_init:
            words = ctx_init.replace("_", " ").split()
            self.prompt_prefix = " ".join(words)
            n_ctx = len(words)
            ctx0 = self._embed(self.tokenizer([self.prompt_prefix]))[0, 1 : 1 + n_ctx].float()
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
            self.prompt_prefix = " ".join(["X"] * n_ctx)
            ctx0 = torch.randn(n_ctx, width, generator=generator) * 0.02
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx0.clone())  # (n_ctx, D)
        self.register_buffer("ctx0", ctx0.clone())
        self.set_classnames(classnames)

    # ------------------------------------------------------------------ class set
    @torch.no_grad()
    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.tower.token_embedding
        return emb(tokens.to(emb.weight.device)).to(self.cast_dtype)

    @property
    def cast_dtype(self) -> torch.dtype:
        return self.tower.transformer.get_cast_dtype()

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """(Re)build the class-prompt buffers and the bucket plan for ``classnames``; ``ctx`` is untouched."""
        if len(classnames) == 0:
            raise ValueError("classnames is empty")
        self.classnames = [str(c) for c in classnames]
        prompts = [f"{self.prompt_prefix} {c.replace('_', ' ')}." for c in self.classnames]
        tokens = self.tokenizer(prompts)  # (C, T)
        emb = self._embed(tokens)  # (C, T, D)
        self.register_buffer("tokens", tokens.to(emb.device), persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # (C, 1, D) SOS
        self.register_buffer("token_suffix", emb[:, 1 + self.n_ctx :].clone(), persistent=False)  # (C, T-1-n, D)
        self.register_buffer("eot", tokens.argmax(dim=-1).to(emb.device), persistent=False)  # (C,)
        self._make_plan()

    def _make_plan(self) -> None:
        eot = self.eot.tolist()
        ctx_len = None if self.truncate else self.tokens.shape[1]
        plan = bucket_plan(eot, self.n_buckets if self.bucket else 1, ctx_len)
        dev = self.eot.device
        self.plan = [(torch.as_tensor(idx, dtype=torch.long, device=dev), length) for idx, length in plan]
        order = torch.cat([idx for idx, _ in self.plan])
        self.register_buffer("inverse_order", torch.argsort(order), persistent=False)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def tokens_encoded(self) -> int:
        """Number of token positions one context's forward encodes (for speed reports)."""
        return sum(len(idx) * length for idx, length in self.plan)

    # ------------------------------------------------------------------ encoding
    def forward(
        self, ctx: torch.Tensor | None = None, *, per_class: bool = False, normalize: bool = False
    ) -> torch.Tensor:
        """Text features for every class.

        Args:
            ctx: ``(n_ctx, D)`` (default ``self.ctx``) -> ``(C, E)``; stacked per-sample contexts ``(S, n_ctx, D)``
                -> ``(S, C, E)``; with ``per_class=True`` one context per class ``(C, n_ctx, D)`` -> ``(C, E)``.
            per_class: treat the first axis of a 3-D ``ctx`` as the class axis.
            normalize: L2-normalise the features.
        """
        ctx = self.ctx if ctx is None else ctx
        if ctx.shape[-2:] != self.ctx.shape:
            raise ValueError(f"ctx must end with shape {tuple(self.ctx.shape)}, got {tuple(ctx.shape)}")
        stacked = ctx.dim() == 3 and not per_class
        ctx3 = ctx if ctx.dim() == 3 else ctx[None]  # (S, n, D)
        if per_class and ctx3.shape[0] != self.n_classes:
            raise ValueError(f"per_class ctx needs {self.n_classes} contexts, got {ctx3.shape[0]}")
        parts = [self._encode_bucket(ctx3, idx, length, per_class) for idx, length in self.plan]
        feats = torch.cat(parts, dim=-2)[..., self.inverse_order, :]  # (S, C, E) in class order
        if normalize:
            feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats if stacked else feats[0]

    def _encode_bucket(self, ctx3: torch.Tensor, idx: torch.Tensor, length: int, per_class: bool) -> torch.Tensor:
        if self.shared_prefix and not per_class:
            return self._encode_bucket_shared(ctx3, idx, length)
        t = self.tower
        dtype = self.cast_dtype
        n_cls = len(idx)
        s = 1 if per_class else ctx3.shape[0]
        pre = self.token_prefix[idx].expand(s, -1, -1, -1)  # (S, Cb, 1, D)
        suf = self.token_suffix[idx, : length - 1 - self.n_ctx].expand(s, -1, -1, -1)  # (S, Cb, L-1-n, D)
        ctx = ctx3[idx][None] if per_class else ctx3[:, None].expand(-1, n_cls, -1, -1)  # (S, Cb, n, D)
        x = torch.cat([pre, ctx.to(dtype), suf], dim=2).reshape(s * n_cls, length, -1)  # (S*Cb, L, D)
        x = x + t.positional_embedding[:length].to(dtype)
        x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot[idx].repeat(s)]  # (S*Cb, D) EOT rows
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.reshape(s, n_cls, -1)  # (S, Cb, E)

    def _encode_bucket_shared(self, ctx3: torch.Tensor, idx: torch.Tensor, length: int) -> torch.Tensor:
        """One bucket with the SOS + context tokens encoded once per context (``shared_prefix``)."""
        t, dtype = self.tower, self.cast_dtype
        s, n_cls, p = ctx3.shape[0], len(idx), 1 + self.n_ctx
        pos = t.positional_embedding.to(dtype)
        sos = self.token_prefix[0].expand(s, -1, -1)  # (S, 1, D): SOS is the same token for every class
        pre = torch.cat([sos, ctx3.to(dtype)], dim=1) + pos[:p]  # (S, P, D)
        suf = self.token_suffix[idx, : length - p] + pos[p:length]  # (Cb, M, D)
        suf = suf.expand(s, -1, -1, -1).reshape(s * n_cls, length - p, -1)  # (S*Cb, M, D)
        for blk in t.transformer.resblocks:
            pre, suf = _shared_prefix_block(blk, pre, suf, n_cls)
        rows = suf[torch.arange(s * n_cls, device=suf.device), (self.eot[idx] - p).repeat(s)]  # (S*Cb, D) EOT rows
        x = t.ln_final(rows)  # LayerNorm acts per token, so picking the EOT rows first is exact
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.reshape(s, n_cls, -1)  # (S, Cb, E)


def _shared_prefix_ok(blk: nn.Module) -> bool:
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


def _shared_prefix_block(blk: nn.Module, pre: torch.Tensor, suf: torch.Tensor, n_cls: int):
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


def _text_tower(model: nn.Module) -> _TextTower:
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
