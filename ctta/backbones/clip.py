"""Frozen OpenAI/open_clip CLIP backbones and a CoOp-style prompted text encoder over open_clip's own modules.

Papers: CLIP (Radford et al., ICML 2021); CoOp context vectors (Zhou et al., IJCV 2022, arXiv 2109.01134) as used
by TPT (Shu et al., NeurIPS 2022). Reference: azshue/TPT@63ecbace ``clip/custom_clip.py:{PromptLearner,
TextEncoder}`` (re-implemented from the spec ``tpt-difftpt.md`` sections 2 and 7.3, no code copied); open_clip
v3.3.0 ``CLIP.encode_text`` is the function the prompted encoder reproduces.

``create_clip`` goes through ``open_clip.create_model``; weight files are loaded by open_clip's own loader.
OpenAI weights use the QuickGELU variant: since open_clip v2.29 ``create_model('ViT-B-16', pretrained='openai')``
silently builds ``nn.GELU``, so ``create_clip`` maps such requests to ``<name>-quickgelu`` (or forces QuickGELU
when no such config exists) and refuses an explicit ``quick_gelu=False`` with an OpenAI tag unless
``allow_activation_mismatch=True``.

Deviations / implementation notes:
- Text prompts are truncated at the longest end-of-text (EOT) position of the class set, optionally split into
  length buckets (classes sorted by EOT position; bucket boundaries chosen by dynamic programming to minimise
  the number of encoded tokens, instead of equal-count buckets). Exact: the mask is causal, pooling reads the EOT
  row and everything else acts per token, so positions after a prompt's EOT never reach its pooled feature.
- ``ctta-tiny-clip`` is a tiny randomly initialised CLIP built from a config dict (tests and smoke runs).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctta.registry import BACKBONES

__all__ = [
    "CLIPConfig",
    "CLIPBackbone",
    "TINY_CLIP_CONFIGS",
    "create_clip",
    "build_clip",
    "PromptedTextEncoder",
    "bucket_plan",
]

# Tiny CLIPs built from a config dict (no download): width 64, 2 text layers, context 77, full BPE vocabulary.
TINY_CLIP_CONFIGS = {
    "ctta-tiny-clip": dict(
        embed_dim=32,
        quick_gelu=True,
        vision_cfg=dict(image_size=32, layers=2, width=48, head_width=16, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2),
    ),
}


@dataclass(frozen=True)
class CLIPConfig:
    """Backbone section of a run config (``backbone: {name: clip, ...}``).

    Attributes:
        model: open_clip model name (``ViT-B-16``, ``RN50``, ``ViT-B/16`` also accepted) or ``ctta-tiny-clip``.
        pretrained: open_clip weight tag (``openai``), a local weight file in open_clip format, or "" (random).
        precision: open_clip weight precision (``fp32``: TPT keeps fp32 weights and uses autocast).
        quick_gelu: None = what the weights were trained with (QuickGELU for OpenAI tags); True/False forces it.
        allow_activation_mismatch: allow an activation that differs from the one the weights were trained with.
        cache_dir: open_clip download cache folder (None = its default).
    """

    model: str = "ViT-B-16"
    pretrained: str = "openai"
    precision: str = "fp32"
    quick_gelu: bool | None = None
    allow_activation_mismatch: bool = False
    cache_dir: str | None = None


class CLIPBackbone(nn.Module):
    """A frozen open_clip model with its tokenizer and eval transform (what ``BACKBONES["clip"]`` builds).

    Attributes:
        model: the open_clip ``CLIP`` (eval mode, ``requires_grad=False`` everywhere).
        tokenizer: open_clip tokenizer (``tokenizer(list[str]) -> LongTensor (n, 77)``).
        preprocess: open_clip's eval image transform for this model.
        image_size: input resolution of the image tower.
        name, pretrained: the resolved open_clip model name and weight source.
    """

    def __init__(self, model: nn.Module, tokenizer, preprocess, name: str, pretrained: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name, self.pretrained = name, pretrained
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen backbone, always in eval mode
        return self


def _is_file_path(pretrained: str) -> bool:
    return os.path.isfile(pretrained) or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz")


def _resolve_activation(name: str, pretrained: str, quick_gelu: bool | None, allow_mismatch: bool):
    """``(open_clip name, force_quick_gelu)`` so that OpenAI weights get the QuickGELU activation they need."""
    import open_clip

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(
            f"unknown open_clip model {name!r}; valid: {open_clip.list_models()[:40]}... "
            f"or one of {sorted(TINY_CLIP_CONFIGS)}"
        )
    has_qg = bool(model_cfg.get("quick_gelu", False))
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained and not _is_file_path(pretrained) else {}
    wants = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else None
    if quick_gelu is None:
        quick_gelu = wants if wants is not None else has_qg
    if wants is not None and quick_gelu != wants and not allow_mismatch:
        raise ValueError(
            f"weights {name}/{pretrained!r} were trained with quick_gelu={wants}, but quick_gelu={quick_gelu} was "
            f"requested; this silently costs accuracy. Use backbone.quick_gelu=null (follow the weights) or set "
            f"backbone.allow_activation_mismatch=true."
        )
    if quick_gelu and not has_qg:
        alt = f"{name}-quickgelu"
        return (alt, False) if open_clip.get_model_config(alt) is not None else (name, True)
    if not quick_gelu and has_qg:
        base = name.removesuffix("-quickgelu")
        if open_clip.get_model_config(base) is None:
            raise ValueError(f"{name} has no GELU variant; use quick_gelu=null")
        return base, False
    return name, False


def _offline_error(name: str, tag: str, err: BaseException) -> RuntimeError:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    where = cfg.get("hf_hub") or cfg.get("url") or "the open_clip hub"
    return RuntimeError(
        f"could not fetch the CLIP weights {name!r} with pretrained tag {tag!r} ({where}): "
        f"{type(err).__name__}: {str(err)[:200]}. Offline? Download the open_clip checkpoint "
        f"(e.g. open_clip_pytorch_model.bin / open_clip_model.safetensors of {where}) and pass it with "
        f"backbone.pretrained=/path/to/file (backbone.model must then name the matching config, e.g. "
        f"{name}), or use backbone.pretrained='' for random weights."
    )


def _tokenizer_for(name: str, context_length: int = 77):
    import open_clip

    if name in TINY_CLIP_CONFIGS:
        return open_clip.SimpleTokenizer(context_length=context_length)
    return open_clip.get_tokenizer(name)


def _create_tiny(name: str, pretrained: str, precision: str):
    import open_clip

    if pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"{name} has no weight tags; pretrained must be '' or a local file, got {pretrained!r}")
    cfg = TINY_CLIP_CONFIGS[name]
    model = open_clip.CLIP(**cfg, cast_dtype=open_clip.get_cast_dtype(precision))
    if pretrained:
        open_clip.load_checkpoint(model, pretrained)
    return model


def _create_open_clip(name, pretrained, precision, quick_gelu, allow_mismatch, cache_dir):
    """``open_clip.create_model`` with checked tags/files, the QuickGELU rule and a clear offline error."""
    import open_clip

    if pretrained and _is_file_path(pretrained) and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"CLIP weight file not found: {pretrained}")
    if pretrained and not _is_file_path(pretrained) and not open_clip.get_pretrained_cfg(name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"unknown pretrained tag {pretrained!r} for {name}; valid tags: {tags} (or a file path)")
    name, force_qg = _resolve_activation(name, pretrained, quick_gelu, allow_mismatch)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            model = open_clip.create_model(
                name, pretrained=pretrained or None, precision=precision, force_quick_gelu=force_qg, cache_dir=cache_dir
            )
    except RuntimeError as e:
        if pretrained and not _is_file_path(pretrained) and "download" in str(e).lower():
            raise _offline_error(name, pretrained, e) from e
        raise
    return name, model


def create_clip(
    name: str = "ViT-B-16",
    pretrained: str = "openai",
    *,
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    allow_activation_mismatch: bool = False,
    cache_dir: str | None = None,
):
    """Build a frozen open_clip model, its eval transform and tokenizer.

    Args:
        name: open_clip model name (``/`` accepted for ``-``), or a tiny config name (``ctta-tiny-clip``).
        pretrained: a weight tag (``openai``), a local weight file (loaded by open_clip's own loader), or "" for
            random weights.
        precision: open_clip precision of the weights (``fp32`` default).
        quick_gelu: None follows the weights; see module docstring.
        allow_activation_mismatch: permit an activation other than the weights' one.
        cache_dir: open_clip download cache.

    Returns:
        ``(model, preprocess, tokenizer)``; the model is in eval mode with every parameter frozen.

    Raises:
        RuntimeError: the tag's weights cannot be downloaded (offline); the message names the tag and how to pass a
            local file (``backbone.pretrained=/path``).
        FileNotFoundError / ValueError: a missing weight file, an unknown model or tag, an activation mismatch.
    """
    import open_clip

    name = name.replace("/", "-")
    if name in TINY_CLIP_CONFIGS:
        model = _create_tiny(name, pretrained, precision)
    else:
        name, model = _create_open_clip(name, pretrained, precision, quick_gelu, allow_activation_mismatch, cache_dir)
    model.eval().requires_grad_(False)
    size = model.visual.image_size
    preprocess = open_clip.image_transform(
        size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    return model, preprocess, _tokenizer_for(name, getattr(model, "context_length", 77) or 77)


@BACKBONES.register("clip", config=CLIPConfig)
def build_clip(cfg: CLIPConfig) -> CLIPBackbone:
    """``BACKBONES["clip"]``: a frozen ``CLIPBackbone`` from a ``CLIPConfig``."""
    model, preprocess, tokenizer = create_clip(
        cfg.model,
        cfg.pretrained,
        precision=cfg.precision,
        quick_gelu=cfg.quick_gelu,
        allow_activation_mismatch=cfg.allow_activation_mismatch,
        cache_dir=cfg.cache_dir,
    )
    return CLIPBackbone(model, tokenizer, preprocess, cfg.model.replace("/", "-"), cfg.pretrained)


# ---------------------------------------------------------------------------------------------- prompted text
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
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip_model
        self.tower = _text_tower(clip_model)
        self.tokenizer = tokenizer
        self.truncate, self.bucket, self.n_buckets = truncate, bucket, n_buckets
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
