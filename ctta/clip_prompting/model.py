"""The prompted CLIP model every prompt learner of the family builds on: a frozen open_clip ``CLIP``, its prompted
text tower and cosine-similarity logits.

Papers: CLIP (Radford et al., ICML 2021); CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134). Reference (behaviour
read, re-implemented, no code copied): KaiyangZhou/CoOp@ff61507 ``trainers/coop.py:CustomCLIP`` (logits
``exp(logit_scale) * norm(f) @ norm(g).T``).

Deviations: none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ctta.clip_prompting.text import PromptedText

__all__ = ["PromptedCLIP", "clip_parts", "save_text_context"]


def clip_parts(model, tokenizer=None, *, require_tokenizer: str = "") -> tuple[nn.Module, object]:
    """``(open_clip model, tokenizer)`` from an open_clip CLIP, a wrapper holding one (``CLIPBackbone``: ``.model``;
    a prompted CLIP: ``.clip``) or a ``(model, tokenizer)`` pair: the one way every CLIP method unpacks its backbone.

    The tokenizer is ``tokenizer``, else the pair's or the wrapper's, else open_clip's ``SimpleTokenizer`` (bundled
    vocabulary, works offline) at the model's context length; with ``require_tokenizer`` (the caller's name) a
    missing tokenizer is an error instead.
    """
    if isinstance(model, tuple):
        model, tokenizer = model[0], tokenizer if tokenizer is not None else model[1]
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None and require_tokenizer:
        hint = "pass tokenizer= (open_clip.get_tokenizer(name))"
        raise ValueError(f"{require_tokenizer} needs the CLIP tokenizer: {hint}")
    clip = next((getattr(model, a) for a in ("model", "clip") if hasattr(model, a)), model)
    if not hasattr(clip, "encode_image") or not hasattr(clip, "encode_text"):
        raise TypeError(f"expected an open_clip CLIP model (encode_image/encode_text), got {type(model).__name__}")
    if tok is None:
        import open_clip

        tok = open_clip.SimpleTokenizer(context_length=int(getattr(clip, "context_length", 77) or 77))
    return clip, tok


class PromptedCLIP(nn.Module):
    """Frozen CLIP + prompted text tower; subclasses add their prompts and implement ``forward(images)``.

    Args:
        clip_model: frozen open_clip ``CLIP`` (kept in eval mode, never trained).
        tokenizer: its tokenizer.
        classnames: the classes the text head covers.
        layout, position, deep_block: see ``PromptedText``.
        truncate: exact truncation at the longest EOT (False: the 77-token reference path).
        shared_prefix: encode the class-independent prefix once (exact).
        round_prompts: round every inserted deep prompt (text here, vision in ``encode_image(...,
            round_prompts=self.round_prompts)``) to fp16, as the official code (``PromptLearnerConfig.round_prompts``).
        text_options: further ``PromptedText`` options (``one_token_words``, ``deep_start``: ATPrompt's slicing).

    Attributes:
        context_is_the_prompt: the prediction is CLIP with the shared context ``text_context()`` and nothing else
            (CoOp, PRE), so test-time tuning (``PromptTuner.from_prompted``) may tune that context alone; methods
            with image-conditioned or deep prompts set it False and are tuned through their own forward.
    """

    context_is_the_prompt = True

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        layout=(4,),
        *,
        position: str = "end",
        deep_block: int = -1,
        truncate: bool = True,
        shared_prefix: bool = True,
        round_prompts: bool = True,
        **text_options,
    ) -> None:
        super().__init__()
        self.clip = clip_model.requires_grad_(False)
        self.round_prompts = round_prompts
        self.tokenizer = tokenizer
        self.text = PromptedText(
            clip_model, tokenizer, classnames, layout, position=position, deep_block=deep_block,
            truncate=truncate, shared_prefix=shared_prefix, round_prompts=round_prompts, **text_options,
        )  # fmt: skip

    @property
    def classnames(self) -> list[str]:
        return self.text.classnames

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Point the text head at ``classnames`` (prompts are kept; class-specific prompts need the same count)."""
        self.text.set_classnames(classnames)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen backbone, always in eval mode
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``scale * norm(f) @ norm(g).T``: ``(B, E)`` x ``(C, E)`` or per-image ``(B, C, E)`` -> ``(B, C)``."""
        f = image_features / image_features.norm(dim=-1, keepdim=True)
        g = text_features / text_features.norm(dim=-1, keepdim=True)
        sim = f @ g.t() if g.dim() == 2 else torch.einsum("be,bce->bc", f, g)
        return self.logit_scale * sim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images) -> logits")

    def text_context(self) -> torch.Tensor:
        """The shared context ``(M, D)`` a CoOp-style text prompt ``[SOS] ctx <name>.`` uses (what TPT can tune).

        Raises:
            TypeError: the method's prompt is not of that form (deep prompts, attribute words, per-class contexts).
        """
        ctx = getattr(self, "ctx", None)
        deep = len(getattr(self, "deep_text", ()))
        if ctx is None or ctx.dim() != 2 or self.text.layout != [ctx.shape[0]] or self.text.position != "end" or deep:
            raise TypeError(f"{type(self).__name__}: the prompt is not a shared CoOp context TPT can tune")
        return ctx


def save_text_context(model: PromptedCLIP, path: str | Path) -> Path:
    """Save ``model.text_context()`` as ``{"state_dict": {"ctx": (M, D)}}`` (CoOp's checkpoint key), the file
    ``PromptTuningConfig(init="coop:<path>")`` starts TPT from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"ctx": model.text_context().detach().float().cpu()}}, path)
    return path
