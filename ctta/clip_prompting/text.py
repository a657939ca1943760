"""Prompted CLIP text tower: learnable token segments, class-token position, deep prompts, exact truncation.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134) context segments, class-specific context (CSC) and the
class-token position end / middle / front; MaPLe (Khattak et al., CVPR 2023, arXiv 2210.03117) and PromptSRC
(Khattak et al., ICCV 2023, arXiv 2307.06948) deep text prompts; ATPrompt (Li et al., arXiv 2412.09442) hard
attribute words between soft tokens. References (behaviour read, re-implemented, no code copied):
KaiyangZhou/CoOp@ff61507 ``trainers/coop.py:{PromptLearner, TextEncoder}``, muzairkhattak/multimodal-prompt-learning
@69bce21 ``clip/model.py:ResidualAttentionBlock_MaPLe``, zhengli97/ATPrompt@86980a1 ``trainers/coop_atp.py``.

The prompt of class ``c`` is ``[SOS] <layout> <name_c> . [EOT]`` where the layout is a sequence of learnable
blocks (an int: that many soft tokens) and hard words (a string). The text is tokenised as the references do
(soft tokens as ``X`` placeholders, every soft token one BPE token), so the class-name tokens, the full stop and
the EOT position are the references'. Soft tokens are scattered into the embedded text at their positions; with
``position="middle"``/``"front"`` (one soft block only) each class's token ids are permuted as CoOp does
(``SOS ctx[:n//2] name ctx[n//2:] .`` / ``SOS name ctx .``).

Deep prompts (MaPLe / IVLP): at layer ``i >= 1`` the hidden states of one soft block are replaced by ``P_i``
(no positional embedding at deeper layers); the input layer gets the positional embedding on all positions.

Exactness (this class is the one place every speed-up is argued; ``tests/test_clip_prompted_text.py`` checks each
against the straightforward computation; ``ctta.clip_prompting.tower`` holds the mechanics):

- truncation at the longest EOT and length buckets: the text mask is causal, pooling reads the EOT row and everything
  else acts per token, so positions after a prompt's EOT never reach its pooled feature; bucket boundaries are
  chosen by dynamic programming to minimise the encoded tokens (``tower.bucket_plan``);
- shared prefix: with the class token at the end and one context shared by all classes, every token before the class
  name (SOS, soft tokens, hard words, deep prompts included) is the same for all classes and attends only to itself,
  so its hidden states, keys and values are computed once per context instead of once per class
  (``tower.shared_prefix_block``); the class tokens attend to the shared keys/values plus their own;
- ``ln_final`` and the projection act per token, so applying them to the EOT rows only is exact.

``truncate=False`` is the straightforward 77-token path of the references: every class encoded on its own over all
77 positions (no buckets, no shared prefix), a reference for tests and benchmarks.

fp16 rounding (``round_prompts=True``, the default): as the official MaPLe / PromptSRC / ATPrompt code, every deep
prompt is inserted as ``P_i.expand(B, ...).half()`` and cast back to the running dtype, so even an fp32 run sees
fp16-rounded values (and per-sample fp16 gradients); the input-layer soft tokens are not rounded (they escape it in
the references too). Rounding is elementwise, so the speed-ups above stay exact with it. ``round_prompts=False``
inserts the prompts unrounded (ctta's earlier behaviour; logits differ by about 1e-3).

Deviations: with the shared prefix a deep prompt is inserted once per context, so its gradient is summed over the
classes before the rounding of the fp16 cast (the references round each class's gradient first); the forward
values are identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctta.clip_prompting.tower import bucket_plan, shared_prefix_block, shared_prefix_ok, text_tower

__all__ = ["PromptedText", "context_init", "encode_words"]

Layout = Sequence["int | str"]


def _encode(tokenizer, text: str) -> list[int]:
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "eot_token_id"):
        raise TypeError(f"{type(tokenizer).__name__}: the prompted text tower needs open_clip's SimpleTokenizer (BPE)")
    return list(tokenizer.encode(text))


@torch.no_grad()
def encode_words(clip_model: nn.Module, tokenizer, words: str) -> torch.Tensor:
    """Token embeddings ``(n, D)`` of ``words`` (SOS/EOT excluded): the reference's context initialisation."""
    tower = text_tower(clip_model)
    ids = torch.tensor(_encode(tokenizer, words), device=tower.token_embedding.weight.device)
    return tower.token_embedding(ids).float()


def context_init(
    clip_model: nn.Module, tokenizer, ctx_init: str = "", n_ctx: int = 4, *, std: float = 0.02, generator=None
) -> tuple[list, torch.Tensor]:
    """Layout and initial values of a context block (the references' rule).

    With ``ctx_init`` words: ``n_ctx`` <= 0 means one token per word (CoOp: ``N_CTX`` is ignored); the context is
    the embedding of the first ``n_ctx`` words and the remaining words stay in the text as hard tokens (MaPLe: 2
    context tokens from "a photo" and the text "a photo of a <name>."). Without: ``n_ctx`` random N(0, std^2)
    vectors.

    Returns:
        ``(layout, ctx0)``: e.g. ``([2, "of a"], (2, D))``.
    """
    width = text_tower(clip_model).token_embedding.embedding_dim
    if not ctx_init:
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1 without ctx_init, got {n_ctx}")
        return [n_ctx], torch.randn(n_ctx, width, generator=generator) * std
    words = ctx_init.replace("_", " ").split()
    n = len(words) if n_ctx <= 0 else n_ctx
    if n > len(words):
        raise ValueError(f"n_ctx={n} context tokens but ctx_init={ctx_init!r} has {len(words)} words")
    if hasattr(tokenizer, "require_known"):  # compact vocabulary (ctta.pretrained.VocabTokenizer): name unknown words
        tokenizer.require_known(" ".join(words), "ctx_init")
    emb = encode_words(clip_model, tokenizer, " ".join(words))
    if len(emb) != len(words):
        raise ValueError(f"ctx_init={ctx_init!r}: every word must be one BPE token ({len(emb)} tokens)")
    rest = " ".join(words[n:])
    return ([n, rest] if rest else [n]), emb[:n].clone()


class PromptedText(nn.Module):
    """Text features of every class for given soft-token values (the text tower of the prompted CLIP).

    Args:
        clip_model: a frozen open_clip ``CLIP`` (causal mask, argmax pooling).
        tokenizer: its ``SimpleTokenizer``.
        classnames: class names (``_`` becomes a space).
        layout: soft blocks (ints) and hard words (strings) before the class name, e.g. ``[4]`` (CoOp),
            ``[2, "of a"]`` (MaPLe: the text stays ``a photo of a <name>.``), ``[2, "color", 2, "shape", 4]``
            (ATPrompt).
        position: class-token position ``end`` | ``middle`` | ``front`` (the last two need ``layout=[n]``).
        deep_block: index (among the soft blocks) of the block deep prompts replace (default: the last one).
        truncate: truncate at the longest EOT (False: the straightforward per-class 77-token path).
        n_buckets: length buckets when truncating.
        shared_prefix: encode the class-independent prefix once per context (exact; used when possible, never with
            ``truncate=False``).
        round_prompts: round every inserted deep prompt to fp16 as the official code does (see the module notes).
        one_token_words: place the soft tokens as if every hard word were one BPE token (ATPrompt's official
            slicing): the soft tokens overwrite those nominal positions of the tokenised text, so the remaining
            tokens of a multi-token word shift right and the text keeps its full length and EOT position.
        deep_start: position where deep prompts are inserted (default: the deep block's first soft position).

    Attributes:
        n_soft: soft tokens per prompt; ``blocks``: ``(start, length)`` of each soft block within them.
        tokens: ``(C, T)`` token ids; ``eot``: ``(C,)``; ``soft_pos``: ``(C, n_soft)`` positions of the soft tokens.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        layout: Layout = (4,),
        *,
        position: str = "end",
        deep_block: int = -1,
        truncate: bool = True,
        n_buckets: int = 4,
        shared_prefix: bool = True,
        round_prompts: bool = True,
        one_token_words: bool = False,
        deep_start: int | None = None,
    ) -> None:
        super().__init__()
        if one_token_words and position != "end":
            raise ValueError("one_token_words needs position='end'")
        self.one_token_words, self.deep_start = one_token_words, deep_start
        if position not in ("end", "middle", "front"):
            raise ValueError(f"position must be end, middle or front, got {position!r}")
        if position != "end" and (len(layout) != 1 or not isinstance(layout[0], int)):
            raise ValueError(f"position={position!r} needs a single soft block (layout=[n]), got {list(layout)}")
        self.tower = text_tower(clip_model)
        self.tokenizer, self.layout, self.position = tokenizer, list(layout), position
        self.truncate, self.n_buckets = truncate, n_buckets
        self.round_prompts = round_prompts
        self.shared_ok = shared_prefix and position == "end" and truncate
        self.shared_ok = self.shared_ok and all(shared_prefix_ok(b) for b in self.tower.transformer.resblocks)
        sizes = [x for x in self.layout if isinstance(x, int)]
        if any(n < 0 for n in sizes):
            raise ValueError(f"soft blocks must have >= 0 tokens: {list(layout)}")
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.blocks = list(zip(starts, sizes))
        self.n_soft = sum(sizes)
        self.deep_block = deep_block % len(sizes) if sizes else None
        self.set_classnames(classnames)

    @property
    def cast_dtype(self) -> torch.dtype:
        return self.tower.transformer.get_cast_dtype()

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    # ------------------------------------------------------------------ class set
    def _prefix_text(self) -> str:
        return " ".join(("X " * x).strip() if isinstance(x, int) else str(x) for x in self.layout if x != 0).strip()

    def _class_ids(self, name: str, ids: list[int]) -> tuple[list[int], list[int]]:
        """Token ids of one class (permuted for middle/front) and the positions of its soft tokens."""
        if self.position == "end":
            pos, cur = [], 1
            for x in self.layout:
                n = x if isinstance(x, int) else self._word_slots(str(x))
                if isinstance(x, int):
                    pos += list(range(cur, cur + n))
                cur += n
            return ids, pos
        n, n_name = self.n_soft, len(_encode(self.tokenizer, name))
        ctx, name_ids, rest = ids[1 : 1 + n], ids[1 + n : 1 + n + n_name], ids[1 + n + n_name :]
        if self.position == "middle":
            h = n // 2
            out = [ids[0], *ctx[:h], *name_ids, *ctx[h:], *rest]
            return out, [*range(1, 1 + h), *range(1 + h + n_name, 1 + n + n_name)]
        return [ids[0], *name_ids, *ctx, *rest], list(range(1 + n_name, 1 + n_name + n))

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """(Re)build the token buffers and the bucket plan for ``classnames`` (soft tokens are untouched)."""
        if len(classnames) == 0:
            raise ValueError("classnames is empty")
        self.classnames = [str(c) for c in classnames]
        names = [c.replace("_", " ") for c in self.classnames]
        prefix = self._prefix_text()
        tokens = self.tokenizer([f"{prefix} {n}." if prefix else f"{n}." for n in names])  # (C, T)
        rows, pos = [], []
        for name, ids in zip(names, tokens.tolist()):
            r, p = self._class_ids(name, ids)
            rows.append(r)
            pos.append(p)
        tokens = torch.tensor(rows, dtype=torch.long)
        x_id = _encode(self.tokenizer, "X")[0]
        placed = self.one_token_words or all(tokens[c, p].eq(x_id).all() for c, p in enumerate(pos))
        if pos[0] and not placed:
            raise ValueError(f"soft-token positions do not match the tokenised text of layout {self.layout}")
        dev = self.tower.token_embedding.weight.device
        with torch.no_grad():
            emb = self.tower.token_embedding(tokens.to(dev)).to(self.cast_dtype)  # (C, T, D)
        self.register_buffer("tokens", tokens.to(dev), persistent=False)
        self.register_buffer("token_embedding", emb, persistent=False)
        self.register_buffer("eot", tokens.argmax(-1).to(dev), persistent=False)  # (C,)
        self.register_buffer("soft_pos", torch.tensor(pos, dtype=torch.long, device=dev).view(len(pos), -1), False)
        self.name_start = 1 + self.n_soft + sum(self._word_slots(str(x)) for x in self.layout if isinstance(x, str))
        ctx_len = None if self.truncate else tokens.shape[1]
        plan = bucket_plan(self.eot.tolist(), self.n_buckets if self.truncate else 1, ctx_len)
        self.plan = [(torch.as_tensor(i, dtype=torch.long, device=dev), length) for i, length in plan]
        self.register_buffer("inverse_order", torch.argsort(torch.cat([i for i, _ in self.plan])), persistent=False)

    @property
    def tokens_encoded(self) -> int:
        """Token positions one context's forward encodes (for speed reports; the shared prefix counts per class)."""
        return sum(len(idx) * length for idx, length in self.plan)

    # ------------------------------------------------------------------ encoding
    def forward(
        self, soft: torch.Tensor | None, deep: Sequence[torch.Tensor] = (), *, normalize: bool = False
    ) -> torch.Tensor:
        """Text features of every class.

        Args:
            soft: soft-token values: shared ``(n, D)`` -> ``(C, E)``; class-specific ``(C, n, D)`` -> ``(C, E)``;
                ``S`` contexts (per image, or parallel prompts) ``(S, 1 or C, n, D)`` -> ``(S, C, E)``. None: no
                soft tokens (``n_soft == 0``).
            deep: deep prompts ``P_1..P_{J-1}``, each ``(n_b, D)`` for the deep block, replacing its hidden states
                at layers 1..J-1.
            normalize: L2-normalise the features.
        """
        soft4, squeeze = self._canonical(soft)
        if len(deep) >= len(self.tower.transformer.resblocks):
            raise ValueError(f"{len(deep)} deep prompts for {len(self.tower.transformer.resblocks)} text layers")
        if len(deep) and self.deep_block is None:
            raise ValueError("deep prompts need a soft block to replace")
        parts = [self._encode_bucket(soft4, deep, idx, length) for idx, length in self.plan]
        feats = torch.cat(parts, dim=1)[:, self.inverse_order]  # (S, C, E)
        if normalize:
            feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats[0] if squeeze else feats

    def _canonical(self, soft: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        d = self.token_embedding.shape[-1]
        if soft is None:
            if self.n_soft:
                raise ValueError(f"{self.n_soft} soft tokens expected, got None")
            soft = self.token_embedding.new_zeros(0, d)
        if soft.shape[-2:] != (self.n_soft, d):
            raise ValueError(f"soft tokens must end with shape {(self.n_soft, d)}, got {tuple(soft.shape)}")
        if soft.dim() == 2:
            return soft[None, None], True
        if soft.dim() == 3:
            if soft.shape[0] != self.n_classes:
                raise ValueError(f"class-specific soft tokens need {self.n_classes} rows, got {soft.shape[0]}")
            return soft[None], True
        if soft.dim() == 4 and soft.shape[1] in (1, self.n_classes):
            return soft, False
        raise ValueError(f"soft tokens of shape {tuple(soft.shape)} not understood")

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tower.ln_final(x)  # LayerNorm acts per token: applying it to the EOT rows only is exact
        proj = self.tower.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def _insert(self, p: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """A deep prompt ``(n, D)`` as inserted: ``(batch, n, D)``, fp16-rounded with ``round_prompts``."""
        p = p.expand(batch, -1, -1)
        return (p.half() if self.round_prompts else p).to(dtype)

    def _word_slots(self, word: str) -> int:
        """Token positions a hard word takes when placing the soft tokens (1 with ``one_token_words``)."""
        return 1 if self.one_token_words else len(_encode(self.tokenizer, word))

    def _deep_slice(self) -> tuple[int, int]:
        start, n = self.blocks[self.deep_block]
        a = int(self.soft_pos[0, start]) if n else 0
        a = a if self.deep_start is None else self.deep_start
        return a, a + n

    def _encode_bucket(self, soft4, deep, idx: torch.Tensor, length: int) -> torch.Tensor:
        s, n_cls, dtype = soft4.shape[0], len(idx), self.cast_dtype
        deep_in_prefix = not len(deep) or self._deep_slice()[1] <= self.name_start
        if self.shared_ok and soft4.shape[1] == 1 and self.name_start < length and deep_in_prefix:
            return self._encode_bucket_shared(soft4, deep, idx, length)
        t = self.tower
        x = self.token_embedding[idx, :length].expand(s, -1, -1, -1)  # (S, Cb, L, D)
        if self.n_soft:
            v = soft4 if soft4.shape[1] == 1 else soft4[:, idx]
            v = v.to(dtype).expand(s, n_cls, -1, -1)  # (S, Cb, n, D)
            pos = self.soft_pos[idx][None, :, :, None].expand(s, -1, -1, x.shape[-1])
            x = x.scatter(2, pos, v)
        x = x.reshape(s * n_cls, length, -1) + t.positional_embedding[:length].to(dtype)
        mask = t.attn_mask[:length, :length]
        a, b = self._deep_slice() if len(deep) else (0, 0)
        for i, blk in enumerate(t.transformer.resblocks):
            if 1 <= i <= len(deep):  # deep prompt P_i replaces the block's hidden states (no positional embedding)
                p = self._insert(deep[i - 1], x.shape[0], x.dtype)
                x = torch.cat([x[:, :a], p, x[:, b:]], dim=1)
            x = blk(x, attn_mask=mask)
        rows = x[torch.arange(x.shape[0], device=x.device), self.eot[idx].repeat(s)]  # (S*Cb, D) EOT rows
        return self._project(rows).reshape(s, n_cls, -1)

    def _encode_bucket_shared(self, soft4, deep, idx: torch.Tensor, length: int) -> torch.Tensor:
        """Prefix ``[SOS, layout]`` (identical for every class) encoded once per context."""
        t, dtype = self.tower, self.cast_dtype
        s, n_cls, p = soft4.shape[0], len(idx), self.name_start
        pos = t.positional_embedding.to(dtype)
        pre = self.token_embedding[0, :p].expand(s, -1, -1)  # (S, P, D)
        if self.n_soft:
            at = self.soft_pos[0][None, :, None].expand(s, -1, pre.shape[-1])
            pre = pre.scatter(1, at, soft4[:, 0].to(dtype))
        pre = pre + pos[:p]
        suf = (self.token_embedding[idx, p:length] + pos[p:length]).repeat(s, 1, 1)  # (S*Cb, M, D)
        a, b = self._deep_slice() if len(deep) else (0, 0)
        for i, blk in enumerate(t.transformer.resblocks):
            if 1 <= i <= len(deep):
                pre = torch.cat([pre[:, :a], self._insert(deep[i - 1], s, pre.dtype), pre[:, b:]], dim=1)
            pre, suf = shared_prefix_block(blk, pre, suf, n_cls)
        rows = suf[torch.arange(s * n_cls, device=suf.device), (self.eot[idx] - p).repeat(s)]
        return self._project(rows).reshape(s, n_cls, -1)
