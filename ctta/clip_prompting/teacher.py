"""Frozen-CLIP teacher: hand-crafted and template-ensemble text classifiers, frozen image features.

Papers: PromptSRC (Khattak et al., ICCV 2023, arXiv 2307.06948) §3.2 (the frozen CLIP the prompted model is
regularised towards); CLIP (Radford et al., ICML 2021) prompt ensembling. Reference (behaviour read,
re-implemented, no code copied): muzairkhattak/PromptSRC@bb95c77 ``trainers/promptsrc.py:CustomCLIP.__init__``
(``fixed_embeddings``) and ``ZS_image_encoder``.

The teacher's text feature of a class is the mean over templates of the *unnormalised* frozen text features
(normalised only where it is used), as in the reference. The teacher reuses the frozen backbone (every weight is
frozen, so it equals a second copy) and runs under ``no_grad``.

Shared with wave 2: CoPrompt, HiCroPL and MSGCoOp distil towards a frozen-CLIP teacher's text classifier too
(``clip-prompt-learners.md`` sections 20 (T1) and 23), so it stays in the core rather than in PromptSRC's package.

fp16 embeddings (``round_embeddings=True``, the default): the official PromptSRC teacher keeps its fixed text
embeddings in fp16 in every precision, so the stored class features are rounded to fp16 (``False``: kept in fp32).

Deviations: the teacher's text features are computed by the frozen backbone in the run's precision and then rounded
(the reference computes them with an fp16 CLIP throughout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctta.clip_prompting.vision import encode_image

__all__ = ["FrozenCLIPTeacher", "HAND_CRAFTED"]

#: the single hand-crafted template CoOp's zero-shot baseline uses for most datasets
HAND_CRAFTED = ("a photo of a {}.",)


class FrozenCLIPTeacher(nn.Module):
    """Frozen CLIP text classifier over ``templates`` and frozen image features.

    Args:
        clip_model: the frozen open_clip ``CLIP`` (shared with the student; never trained).
        tokenizer: its tokenizer.
        classnames: class names (``_`` becomes a space).
        templates: format strings with one ``{}``; the class feature is their mean (unnormalised).
        round_embeddings: store the class features rounded to fp16 (the official fixed embeddings).
    """

    def __init__(
        self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], templates=HAND_CRAFTED, *,
        round_embeddings: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.round_embeddings = round_embeddings
        if not templates:
            raise ValueError("templates is empty")
        self.clip = [clip_model]  # not a submodule: the teacher owns no state of its own
        self.tokenizer, self.templates = tokenizer, tuple(templates)
        self.set_classnames(classnames)

    @torch.no_grad()
    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Recompute the text classifier ``(C, E)`` (mean of unnormalised template features) for ``classnames``."""
        clip = self.clip[0]
        dev = next(clip.parameters()).device
        feats = []
        for t in self.templates:
            tokens = self.tokenizer([t.format(c.replace("_", " ")) for c in classnames]).to(dev)
            feats.append(clip.encode_text(tokens).float())  # (C, E)
        mean = torch.stack(feats).mean(0)  # (C, E)
        mean = mean.half().float() if self.round_embeddings else mean
        self.register_buffer("text_features", mean, persistent=False)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen (unprompted) image features ``(B, E)``."""
        return encode_image(self.clip[0], images).float()

    @torch.no_grad()
    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``scale * norm(f) @ norm(g).T`` for frozen image features ``(B, E)``."""
        f = image_features.float()
        f = f / f.norm(dim=-1, keepdim=True)
        g = self.text_features.float()
        g = g / g.norm(dim=-1, keepdim=True)
        return self.clip[0].logit_scale.exp().float() * f @ g.t()
