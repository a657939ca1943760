"""DPL: Decoupled Prompt Learning (Xu et al., "DPL: Decoupled Prompt Learning for Vision-Language Models", arXiv
2308.10061). **Unofficial, from the paper** (its abstract: no official code was found, spec
``clip-prompt-learners.md`` section 9). Nothing is copied from any code.

The paper splits self-attention with prompts into four sub-processes, instance->instance (I->I), instance->prompt
(I->P), prompt->instance (P->I) and prompt->prompt (P->P), and strengthens some of them through approximations. For
an instance query ``i`` the exact attention output is ``alpha_i A_II + (1 - alpha_i) A_IP`` with ``A_II`` the
softmax attention over the instance keys only (what the frozen model computes without prompts), ``A_IP`` the one
over the prompt keys only and ``alpha_i`` the softmax mass on the instance keys. DPL here (``decoupled_attention``)::

    instance queries:  A_II + (1 - alpha_i) A_IP      (I->I keeps its full, prompt-free weight; approximation
                                                       alpha_i -> 1 on that term only)
    prompt queries:    standard softmax over all keys  (P->I and P->P unchanged)

so prompts add information to the instance tokens without diluting the frozen instance-to-instance attention.

Model: deep vision prompts (IVLP's vision side: ``n_vis`` tokens appended at the input layer, replaced at layers
1..J-1, ``ctta.clip_prompting.vision.encode_image``) run with the decoupled attention in every layer; the text side
is a CoOp context (``ctx_init`` words) plus **language-conditioned textual prompting** (``textual``, on by default):
class ``c``'s text ``[SOS] ctx <name_c> . [EOT]`` (the instance tokens) gets ``n_txt`` prompt tokens generated from
its class name, ``P_c = txt_prompts + txt_net(e_c)`` (``e_c`` the L2-normalised mean token embedding of the name,
``txt_net`` CoCoOp's meta-net shape ``ctta.clip_prompting.coupling.MetaNet``, the bias added to every token),
appended at the input layer of the text tower; every text block runs the decoupled attention
(``encode_text_decoupled``): the instance tokens keep CLIP's causal attention at full weight and add ``(1 - alpha)
A_IP`` from the prompts; the prompt tokens attend to their class's text (up to its EOT) and to each other. Loss:
cross-entropy.

Choices the paper (as available: the abstract) leaves open, with the value taken and why:

- Which sub-process is strengthened and how: I->I kept at full weight, as above (the reading that makes prompts
  additive to the frozen instance path); ``keep_instance: false`` gives standard attention in both towers.
- Language-conditioned textual prompting: the abstract presents it as part of DPL ("on top of" the decoupled
  attention, to keep the text input's generalisation), so ``textual: true`` is the default; ``textual: false``
  gives the earlier text side (a plain CoOp context with standard attention; smoke summary unchanged). The
  abstract does not say what conditions the prompts or how; taken: the class name's token embeddings (the only
  language input a classifier has) through a CoCoOp-shaped meta-net (E -> E/16 -> D), its last layer zero-initialised
  so that training starts from class-independent prompts ``txt_prompts`` (N(0, 0.02^2), 4 tokens like the vision
  side); the prompts enter at the input layer only (no deep text prompts) without a positional embedding, and the
  decoupled attention keeps the hand-written text path intact, which is how "preserving the text input" is read.
- Prompt sizes and init: 4 vision tokens at depth 9 (J layers), N(0, 0.02^2); text context from "a photo of a"
  (PromptSRC / IVLP's base-to-new values, the multi-modal baseline the paper compares with).
- Optimiser and budget: the family's Dassl SGD with warm-up + cosine per epoch, lr 0.0025, batch 4, 20 epochs
  (PromptSRC@bb95c77's base-to-new schedule ``vit_b16_c2_ep20_batch4_4+4ctx``, as in
  ``configs/fewshot/_base/promptsrc.yaml``), last-epoch model.

Trainable parameters on ViT-B/16: 9 x 4 x 768 + 4 x 512 = 29,696 without ``textual``; with it (the default) + 4 x 512
prompts + (512 x 32 + 32) + (32 x 512 + 512) meta-net = 65,056 (``tests/test_dpl.py``); no published count was
found in the available text.

Deviations: none from the paper as far as it is known; everything above is a choice. The vision prompts are not
fp16-rounded (``round_prompts`` applies to methods whose official code rounds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.coupling import MetaNet
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init, encode_words
from ctta.clip_prompting.tower import shared_prefix_ok
from ctta.clip_prompting.vision import encode_image, vision_width
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = [
    "DPL",
    "DPLConfig",
    "DPLModel",
    "decoupled_attention",
    "decoupled_block",
    "encode_text_decoupled",
    "text_key_mask",
]


@dataclass(frozen=True)
class DPLConfig(PromptLearnerConfig):
    """DPL settings (choices, see the module docstring)."""

    epochs: int = ranged(20, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0025, gt=0)
    ctx_init: str = "a photo of a"  # text context words ("": n_ctx random tokens)
    n_ctx: int = 4
    n_vis: int = ranged(4, ge=1)  # vision prompt tokens per layer
    depth: int = ranged(9, ge=1)  # J: input layer + J-1 deep vision layers
    keep_instance: bool = True  # decoupled attention (False: standard attention)
    textual: bool = True  # language-conditioned textual prompting (False: the text side is a plain CoOp context)
    n_txt: int = ranged(4, ge=1)  # language-conditioned text prompt tokens


def decoupled_attention(q, k, v, n: int, keep_instance: bool = True, attn_mask=None) -> torch.Tensor:
    """Attention over ``(..., L, hd)`` heads whose last ``n`` tokens are prompts: standard softmax attention, with
    each instance query's output ``alpha A_II + (1 - alpha) A_IP`` turned into ``A_II + (1 - alpha) A_IP``.
    ``attn_mask``: an additive mask broadcast to the scores ``(..., L, L)`` (``-inf``: key not attended)."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        s = s + attn_mask
    out = torch.softmax(s, dim=-1) @ v
    if not keep_instance or n == 0:
        return out
    s_ii = s[..., :-n, :-n]
    alpha = torch.exp(torch.logsumexp(s_ii, -1) - torch.logsumexp(s[..., :-n, :], -1)).unsqueeze(-1)
    a_ii = torch.softmax(s_ii, dim=-1) @ v[..., :-n, :]
    return torch.cat([out[..., :-n, :] + (1 - alpha) * a_ii, out[..., -n:, :]], dim=-2)


def decoupled_block(blk: nn.Module, x: torch.Tensor, n: int, keep_instance: bool = True, attn_mask=None):
    """An open_clip ``ResidualAttentionBlock`` on ``(B, L, W)`` (last ``n`` tokens prompts) with its own modules and
    ``decoupled_attention`` (with ``attn_mask``, broadcast to ``(B, heads, L, L)``) in place of its self-attention."""
    if not shared_prefix_ok(blk):
        raise TypeError("decoupled attention needs open_clip's ResidualAttentionBlock with a plain self-attention")
    attn = blk.attn
    h, width = attn.num_heads, x.shape[-1]
    qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (z.unflatten(-1, (h, width // h)).transpose(-3, -2) for z in qkv.chunk(3, dim=-1))
    o = decoupled_attention(q, k, v, n, keep_instance, attn_mask).transpose(-3, -2).flatten(-2)
    x = x + blk.ls_1(attn.out_proj(o))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def text_key_mask(eot: torch.Tensor, length: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask ``(C, 1, L + n, L + n)`` of the textual prompting (``-inf``: not attended): instance queries
    (positions ``< L``) see the instance keys up to themselves (CLIP's causal mask) and every prompt key; the prompt
    queries of class ``c`` see its text up to its EOT ``eot[c]`` and every prompt key."""
    i = torch.arange(length + n, device=device)
    prompt_key = i[None, :] >= length  # (1, L + n)
    instance_rows = prompt_key | (i[None, :] <= i[:, None])  # (L + n, L + n)
    prompt_rows = prompt_key | (i[None, :] <= eot.to(device)[:, None])  # (C, L + n)
    allowed = torch.where((i < length)[None, :, None], instance_rows[None], prompt_rows[:, None, :])
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))[:, None]


def encode_text_decoupled(text, ctx: torch.Tensor, prompts: torch.Tensor, keep_instance: bool = True):
    """Text features ``(C, E)`` of ``[SOS] ctx <name_c> . [EOT]`` (the instance tokens, with the positional
    embedding) and class ``c``'s prompts ``prompts[c]`` ``(n, D)`` appended as further tokens at the input layer
    (no positional embedding), every block running ``decoupled_block`` under ``text_key_mask``; EOT pooling.

    ``text`` is the model's ``PromptedText`` (its token buffers, soft positions and projection). Truncation at the
    longest EOT is exact: no query that reaches an EOT row sees a later position.
    """
    tower, dtype = text.tower, text.cast_dtype
    n_cls, n = prompts.shape[:2]
    length = int(text.eot.max()) + 1
    x = text.token_embedding[:, :length]  # (C, L, D)
    if text.n_soft:
        at = text.soft_pos[:, :, None].expand(-1, -1, x.shape[-1])
        x = x.scatter(1, at, ctx.to(dtype).expand(n_cls, -1, -1))
    x = torch.cat([x + tower.positional_embedding[:length].to(dtype), prompts.to(dtype)], dim=1)  # (C, L + n, D)
    mask = text_key_mask(text.eot, length, n, x.dtype, x.device)
    for blk in tower.transformer.resblocks:
        x = decoupled_block(blk, x, n, keep_instance, mask)
    return text._project(x[torch.arange(n_cls, device=x.device), text.eot])


class DPLModel(PromptedCLIP):
    """Frozen CLIP + text context ``ctx`` and vision prompts ``vis`` (``vis[0]`` input layer, ``vis[i]`` layer i);
    with ``textual``, the language-conditioned text prompts ``txt_prompts + txt_net(name embedding)``."""

    context_is_the_prompt = False  # vision prompts too: TPT tunes through the forward

    def __init__(self, clip_model, tokenizer, classnames, cfg: DPLConfig, *, generator=None) -> None:
        n_layers = len(clip_model.visual.transformer.resblocks)
        if not 1 <= cfg.depth <= n_layers:
            raise ValueError(f"depth must be in 1..{n_layers} (vision layers), got {cfg.depth}")
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, 0 if cfg.ctx_init else cfg.n_ctx)
        super().__init__(clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=False)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))
        width = vision_width(clip_model)
        self.vis = nn.ParameterList(
            nn.Parameter(torch.randn(cfg.n_vis, width, generator=generator) * 0.02) for _ in range(cfg.depth)
        )
        self.block = partial(decoupled_block, keep_instance=cfg.keep_instance)
        self.keep_instance, self.textual = cfg.keep_instance, cfg.textual
        if cfg.textual:  # created after the vision prompts: the start of the other prompts does not change
            d = ctx0.shape[-1]
            self.txt_prompts = nn.Parameter(torch.randn(cfg.n_txt, d, generator=generator) * 0.02)
            self.txt_net = MetaNet(d, d, generator=generator)
            nn.init.zeros_(self.txt_net.linear2.weight)  # start: the same prompts for every class
            nn.init.zeros_(self.txt_net.linear2.bias)
            self._embed_names()

    def _embed_names(self) -> None:
        """``name_emb`` ``(C, D)``: each class name's mean token embedding, L2-normalised (the conditioning)."""
        e = [encode_words(self.clip, self.tokenizer, c.replace("_", " ")).mean(0) for c in self.classnames]
        self.register_buffer("name_emb", F.normalize(torch.stack(e), dim=-1), persistent=False)

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        if self.textual:
            self._embed_names()

    def text_prompts(self) -> torch.Tensor:
        """The language-conditioned prompts ``(C, n_txt, D)``: ``txt_prompts + txt_net(name_emb[c])``."""
        bias = self.txt_net(self.name_emb.to(self.txt_prompts.dtype))  # (C, D)
        return self.txt_prompts[None] + bias[:, None]

    def text_features(self) -> torch.Tensor:
        if not self.textual:
            return self.text(self.ctx)
        return encode_text_decoupled(self.text, self.ctx, self.text_prompts(), self.keep_instance)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vis = list(self.vis)
        f = encode_image(self.clip, images, vis[0], vis[1:], round_prompts=False, block=self.block)
        return self.logits(f, self.text_features())


@STRATEGIES.register("dpl", config=DPLConfig)
class DPL(PromptLearnerTemplate):
    """DPL as an Avalanche strategy: ``model`` is a ``DPLModel``; cross-entropy, SGD over ``ctx`` and ``vis``."""

    config_class = DPLConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: DPLConfig) -> DPLModel:
        return DPLModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
