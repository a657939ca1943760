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

__all__ = ["PromptedCLIP", "clip_and_tokenizer", "save_text_context"]


def clip_and_tokenizer(backbone) -> tuple[nn.Module, object]:
    """``(open_clip model, tokenizer)`` from a ``CLIPBackbone`` (or ``(model, tokenizer)`` as given)."""
    if isinstance(backbone, tuple):
        return backbone
    model, tok = getattr(backbone, "model", None), getattr(backbone, "tokenizer", None)
    if model is None or tok is None:
        raise TypeError(f"expected a CLIPBackbone (backbone: {{name: clip}}), got {type(backbone).__name__}")
    return model, tok


class PromptedCLIP(nn.Module):
    """Frozen CLIP + prompted text tower; subclasses add their prompts and implement ``forward(images)``.

    Args:
        clip_model: frozen open_clip ``CLIP`` (kept in eval mode, never trained).
        tokenizer: its tokenizer.
        classnames: the classes the text head covers.
        layout, position, deep_block: see ``PromptedText``.
        truncate: exact truncation at the longest EOT (False: the 77-token reference path).
        shared_prefix: encode the class-independent prefix once (exact).
    """

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
    ) -> None:
        super().__init__()
        self.clip = clip_model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.text = PromptedText(
            clip_model, tokenizer, classnames, layout, position=position, deep_block=deep_block,
            truncate=truncate, shared_prefix=shared_prefix,
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
