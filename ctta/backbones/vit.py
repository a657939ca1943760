"""Frozen timm Vision Transformer driven block by block, with prompt tokens and prefix prompts.

Papers: prompt tuning as in VPT (Jia et al., ECCV 2022, arXiv 2203.12119) and MVP (Moon et al., ICCV 2023,
arXiv 2308.09303); prefix prompts as in DualPrompt (Wang et al., ECCV 2022, arXiv 2204.04799).
Reference: timm 1.0.x ``timm.models.vision_transformer`` (``VisionTransformer``/``Block``/``Attention``); the
backbone is never forked: ``PromptedViT`` calls timm's own modules (``patch_embed``, ``_pos_embed``, each block's
``norm1``/``attn.qkv``/``attn.proj``/``ls1``/``drop_path1``/``norm2``/``mlp``...). With no prompts every block is
called as ``block(x)``, so the output equals ``VisionTransformer.forward_features`` exactly.

Deviations / implementation notes:
- Prompt tokens whose outputs are dropped after a block (``keep_prompts=False``) only act through the keys and
  values of that block's attention, so only their keys/values are computed (``LN1 -> W_k, W_v``); queries,
  attention rows, projection and MLP of the prompt tokens are skipped. The image-token outputs are the same as
  ``block(cat(x, prompts))[:, :N]`` (the test compares both). Prompts shared by the batch, shape ``(L, D)``,
  get their keys/values computed once.
- ``query`` and ``forward_features(cls_only=True)`` compute only the CLS output of their last block (the
  other tokens still give keys/values): the CLS result is the same, about 10/12 of a block cheaper.
- Prefix prompts ``(k, v)`` live in attention space (after the qkv projection, DualPrompt's convention) and
  are prepended to the keys/values of the image tokens, head by head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ctta.backbones.hub import hub_download_guard
from ctta.registry import BACKBONES

__all__ = ["ViTConfig", "create_vit", "build_vit", "PromptedViT", "block_forward"]

_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")


@dataclass(frozen=True)
class ViTConfig:
    """Backbone section of a run config (``backbone: {name: vit, ...}``).

    Attributes:
        model: timm model name WITH a pinned weight tag, e.g. ``vit_base_patch16_224.orig_in21k``, or
            ``ctta-tiny-vit`` (ctta's shipped tiny ViT, ``ctta.pretrained``; fixed architecture; it takes 32 px
            RGB in [-1, 1], as its timm ``pretrained_cfg`` says: ``timm.data.resolve_data_config(model=vit)``).
        pretrained: True = download that tag from the timm hub; False = random init; a string = local weight file
            (``.pth``/``.bin``/``.safetensors`` state dict in timm format, or a Google ``.npz``).
        img_size, patch_size, depth, embed_dim, num_heads: optional architecture overrides (None = model default).
        drop_path_rate: stochastic depth rate (the backbone runs in eval mode, so it is inactive).
    """

    model: str = "vit_base_patch16_224.augreg_in21k_ft_in1k"
    pretrained: bool | str = True
    img_size: int | None = None
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0


def _is_download_error(err: BaseException) -> bool:
    """True for the hub/network failures timm surfaces when weights cannot be fetched."""
    if isinstance(err, (OSError, ConnectionError, TimeoutError)):
        return True
    mod = type(err).__module__ or ""
    if mod.split(".")[0] in ("huggingface_hub", "requests", "urllib3", "httpx", "urllib"):
        return True
    return isinstance(err, RuntimeError) and "No pretrained weights exist" in str(err)


def _offline_error(name: str, err: BaseException) -> RuntimeError:
    tag = name.partition(".")[2]
    return RuntimeError(
        f"could not download the pretrained weights of {name!r} (weight tag {tag!r}): "
        f"{type(err).__name__}: {str(err)[:200]}. Offline? Download the timm checkpoint of that tag "
        f"(e.g. model.safetensors from https://huggingface.co/timm/{name}) and pass it with "
        f"backbone.pretrained=/path/to/file (.pth/.bin/.safetensors in timm format, or a Google .npz), "
        f"or use backbone.pretrained=false for random weights."
    )


def create_vit(name: str, pretrained: bool | str | os.PathLike = True, **timm_kwargs) -> nn.Module:
    """Build a frozen, eval-mode timm ``VisionTransformer`` without a classifier head (``num_classes=0``).

    Args:
        name: timm model name; a pinned weight tag (``arch.tag``) is required when ``pretrained=True``.
            ``ctta-tiny-vit`` is ctta's shipped tiny ViT (``ctta.pretrained``; True = its packaged weights).
        pretrained: True (hub download of the tag), False (random init) or a local weight file loaded through
            timm's own loading path (``pretrained_cfg_overlay=dict(file=...)``; ``.npz`` uses timm's npz loader).
        **timm_kwargs: forwarded to ``timm.create_model`` (e.g. ``img_size``, ``depth``).

    Raises:
        ValueError: ``pretrained=True`` with no weight tag in ``name``.
        FileNotFoundError: ``pretrained`` names a file that does not exist.
        RuntimeError: the weights cannot be downloaded (offline); names the tag and ``backbone.pretrained=``.
    """
    kwargs = {"num_classes": 0, **timm_kwargs}
    if name == "ctta-tiny-vit":  # ctta's own shipped tiny ViT (ctta/pretrained/, sha256-checked)
        from ctta.pretrained import create_tiny_vit

        return create_tiny_vit(pretrained, **kwargs).requires_grad_(False).eval()
    if isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weight file not found: {path} (for {name!r}; expected one of {_FILE_SUFFIXES})"
            )
        overlay = {"file": str(path), "custom_load": path.suffix == ".npz", "source": ""}
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    elif pretrained:
        if "." not in name:
            raise ValueError(
                f"model {name!r} has no pinned weight tag; use e.g. '{name}.orig_in21k' (weights differ by tag)"
            )
        try:
            with hub_download_guard():  # unreachable hub: fail at once instead of minutes of retries
                model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:
            if not _is_download_error(err):
                raise
            raise _offline_error(name, err) from err
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    return model.requires_grad_(False).eval()


def build_vit(cfg: ViTConfig) -> PromptedViT:
    """Registered builder ``BACKBONES["vit"]``: ``create_vit`` with the config's overrides, wrapped."""
    overrides = ("img_size", "patch_size", "depth", "embed_dim", "num_heads")
    kwargs = {k: getattr(cfg, k) for k in overrides if getattr(cfg, k) is not None}
    vit = create_vit(cfg.model, cfg.pretrained, drop_path_rate=cfg.drop_path_rate, **kwargs)
    return PromptedViT(vit)


BACKBONES.register("vit", config=ViTConfig)(build_vit)


# ----------------------------------------------------------------------------------------------------------
# Block-level forward with prompts / prefixes
# ----------------------------------------------------------------------------------------------------------
def _check_block(block: nn.Module) -> None:
    needed = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    missing = [a for a in needed if not hasattr(block, a)]
    if missing or not hasattr(block.attn, "qkv"):
        raise TypeError(
            f"prompted forward supports timm's pre-norm vision_transformer.Block; {type(block).__name__} "
            f"lacks {missing or ['attn.qkv']}"
        )


def _heads(t: torch.Tensor, batch: int, num_heads: int) -> torch.Tensor:
    """``(B or 1, L, H*hd)`` or ``(L, H*hd)`` -> ``(B, H, L, hd)`` (broadcast over the batch if shared)."""
    if t.ndim == 2:
        t = t.unsqueeze(0)
    b, length, dim = t.shape
    t = t.reshape(b, length, num_heads, dim // num_heads).transpose(1, 2)  # (b, H, L, hd)
    return t.expand(batch, -1, -1, -1) if b != batch else t


def _prompt_kv(block: nn.Module, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``(B or 1, L, H*hd)`` of prompt tokens ``(B, L, D)``/``(L, D)`` in ``block``'s attention."""
    attn = block.attn
    h = block.norm1(prompt if prompt.ndim == 3 else prompt.unsqueeze(0))  # (B|1, L, D)
    a = attn.qkv.out_features // 3
    bias = attn.qkv.bias[a:] if attn.qkv.bias is not None else None
    k, v = F.linear(h, attn.qkv.weight[a:], bias).split(a, dim=-1)  # (B|1, L, a) each
    if not isinstance(attn.k_norm, nn.Identity):
        nh = attn.num_heads
        k = attn.k_norm(k.unflatten(-1, (nh, a // nh))).flatten(-2)
    return k, v


def _attention(block: nn.Module, h: torch.Tensor, pre_kv=None, post_kv=None, n_out: int | None = None):
    """timm ``Attention.forward`` on normed tokens ``h`` (B, N, D) with extra keys/values before/after.

    With ``n_out`` only the first ``n_out`` tokens are queried (output ``(B, n_out, D)``); keys/values still
    come from all tokens.
    """
    attn = block.attn
    b, n, _ = h.shape
    nh = attn.num_heads
    if n_out is None:
        qkv = attn.qkv(h).reshape(b, n, 3, nh, -1).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)
        hq = h
    else:
        a = attn.qkv.out_features // 3
        w, bias = attn.qkv.weight, attn.qkv.bias
        hq = h[:, :n_out]
        q = F.linear(hq, w[:a], bias[:a] if bias is not None else None)  # (B, n_out, a)
        kv = F.linear(h, w[a:], bias[a:] if bias is not None else None)  # (B, N, 2a)
        q = q.reshape(b, n_out, nh, -1).transpose(1, 2)  # (B, H, n_out, hd)
        k, v = kv.reshape(b, n, 2, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    ks, vs = [k], [v]
    if pre_kv is not None:
        ks.insert(0, _heads(pre_kv[0], b, nh))
        vs.insert(0, _heads(pre_kv[1], b, nh))
    if post_kv is not None:
        ks.append(_heads(post_kv[0], b, nh))
        vs.append(_heads(post_kv[1], b, nh))
    if len(ks) > 1:
        k, v = torch.cat(ks, dim=2), torch.cat(vs, dim=2)  # (B, H, Lpre+N+Lpost, hd)
    p = attn.attn_drop.p if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), dropout_p=p, scale=attn.scale)
    o = attn.norm(o.transpose(1, 2).reshape(b, q.shape[2], -1))  # (B, Nq, H*hd)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(hq).sigmoid()
    return attn.proj_drop(attn.proj(o))


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    prompt: torch.Tensor | None = None,
    keep_prompt: bool = False,
    n_out: int | None = None,
) -> torch.Tensor:
    """One timm ViT block on tokens ``x`` (B, N, D) with optional prefix prompts and prompt tokens.

    Args:
        block: a timm ``vision_transformer.Block`` (pre-norm).
        x: tokens ``(B, N, D)``.
        prefix: ``(k, v)``, each ``(B, L, A)`` or ``(L, A)`` with ``A`` the attention width (= D for ViT-B),
            prepended to the keys/values of the block's attention (DualPrompt prefix tuning).
        prompt: tokens ``(B, L, D)`` or ``(L, D)`` appended after ``x`` (no positional embedding).
        keep_prompt: return ``(B, N+L, D)`` including the prompt outputs; otherwise ``(B, N, D)`` (the prompt
            outputs are dropped, so only their keys/values are computed).
        n_out: compute only the outputs of the first ``n_out`` tokens (e.g. 1 = CLS in the last block); the
            other tokens still provide keys/values. Returns ``(B, n_out, D)``.

    Returns:
        The block output; with neither ``prefix``, ``prompt`` nor ``n_out`` it is exactly ``block(x)``.
    """
    if prompt is not None and keep_prompt:
        p = prompt if prompt.ndim == 3 else prompt.unsqueeze(0)
        x = torch.cat([x, p.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)  # (B, N+L, D)
        prompt = None
    if prefix is None and prompt is None and n_out is None:
        return block(x)
    _check_block(block)
    post_kv = _prompt_kv(block, prompt) if prompt is not None else None
    o = _attention(block, block.norm1(x), prefix, post_kv, n_out)
    x = (x if n_out is None else x[:, :n_out]) + block.drop_path1(block.ls1(o))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


# ----------------------------------------------------------------------------------------------------------
# PromptedViT
# ----------------------------------------------------------------------------------------------------------
class PromptedViT(nn.Module):
    """A frozen timm ``VisionTransformer`` with prompt-aware forwards (it drives ``vit.blocks[i]``).

    Args:
        vit: a timm ``VisionTransformer`` (e.g. from ``create_vit``); it is frozen and kept in eval mode.

    Attributes:
        vit: the wrapped timm model.
        embed_dim: token width D.
        depth: number of blocks.
        num_tokens: tokens after embedding, 1 + N (prefix tokens + patches).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        for attr in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head"):
            if not hasattr(vit, attr):
                raise TypeError(f"PromptedViT needs a timm VisionTransformer; {type(vit).__name__} lacks {attr!r}")
        self.vit = vit.requires_grad_(False).eval()

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_tokens(self) -> int:
        return int(self.vit.patch_embed.num_patches) + int(self.vit.num_prefix_tokens)

    def train(self, mode: bool = True) -> PromptedViT:
        """The frozen backbone always stays in eval mode (no dropout / drop-path)."""
        super().train(mode)
        self.vit.eval()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> tokens ``(B, 1+N, D)`` (patch embedding, CLS, positional embedding)."""
        v = self.vit
        return v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))

    @torch.no_grad()
    def query(
        self,
        x: torch.Tensor | None,
        n_blocks: int | None = None,
        final_norm: bool = False,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Frozen query feature ``(B, D)``: the CLS token after the first ``n_blocks`` blocks (no gradient).

        Args:
            x: images, or None when ``tokens`` (the output of ``embed``) are given.
            n_blocks: number of blocks to run (None: all).
            final_norm: apply the final LayerNorm.
            tokens: precomputed ``embed(x)`` (shared with a prompted pass on the same images).
        """
        t = self.embed(x) if tokens is None else tokens
        n = self.depth if n_blocks is None else int(n_blocks)
        if not 0 <= n <= self.depth:
            raise ValueError(f"n_blocks={n_blocks} outside [0, {self.depth}]")
        for i, blk in enumerate(self.vit.blocks[:n]):
            t = block_forward(blk, t, n_out=1 if i == n - 1 else None)  # last block: CLS row only
        return (self.vit.norm(t) if final_norm else t)[:, 0]

    def forward_features(
        self,
        x: torch.Tensor | None,
        prompts: dict[int, torch.Tensor] | None = None,
        prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        keep_prompts: bool = False,
        tokens: torch.Tensor | None = None,
        cls_only: bool = False,
    ) -> torch.Tensor:
        """Tokens after the final norm, ``(B, T, D)`` (``(B, 1, D)`` with ``cls_only``).

        Args:
            x: images ``(B, C, H, W)`` (or None with ``tokens``).
            prompts: ``{layer: (B, L, D) or (L, D)}`` appended before block ``layer``; dropped after that block
                unless ``keep_prompts`` (then they stay in the sequence and ``T`` grows).
            prefixes: ``{layer: (k, v)}`` prepended to block ``layer``'s attention keys/values (see
                ``block_forward``).
            keep_prompts: keep prompt tokens in the sequence after their block.
            tokens: precomputed ``embed(x)``.
            cls_only: the last block computes only the CLS output (exact for CLS-token pooling, and cheaper).
        """
        if cls_only and self.vit.global_pool != "token":
            raise ValueError(f"cls_only needs CLS-token pooling; this model pools with {self.vit.global_pool!r}")
        prompts, prefixes = prompts or {}, prefixes or {}
        bad = sorted(k for k in (*prompts, *prefixes) if not 0 <= k < self.depth)
        if bad:
            raise ValueError(f"prompt/prefix layers {bad} outside [0, {self.depth})")
        t = self.embed(x) if tokens is None else tokens  # (B, 1+N, D)
        last = self.depth - 1
        for i, blk in enumerate(self.vit.blocks):
            n_out = 1 if cls_only and i == last else None
            t = block_forward(blk, t, prefixes.get(i), prompts.get(i), keep_prompts, n_out)
        return self.vit.norm(t)

    def pre_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits ``(B, D)`` from ``forward_features`` output (timm's pooling, e.g. CLS token)."""
        return self.vit.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``pre_logits(forward_features(x, **kwargs))`` -> ``(B, D)``."""
        return self.pre_logits(self.forward_features(x, **kwargs))
