"""PromptSRC's self-regulating consistency loss (Khattak et al., ICCV 2023, arXiv 2307.06948): the KL to the frozen
teacher's logits plus the weighted L1 distances of the text and image features to the teacher's.

Reference: muzairkhattak/PromptSRC@bb95c77 ``trainers/promptsrc.py`` (behaviour read, re-implemented, no code
copied; the order of the sum as in spec section 21). The two terms are ctta's shared ``l1_feature_loss`` and
``kl_to_teacher`` (``ctta.losses``; wave 2's CoPrompt, HiCroPL, MSGCoOp and RESTORE distil with them too).

Deviations: none.
"""

from __future__ import annotations

import torch

from ctta.losses import kl_to_teacher, l1_feature_loss

__all__ = ["promptsrc_consistency"]


def promptsrc_consistency(
    text: torch.Tensor,
    teacher_text: torch.Tensor,
    image: torch.Tensor,
    teacher_image: torch.Tensor,
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    text_weight: float = 25.0,
    image_weight: float = 10.0,
) -> torch.Tensor:
    """``L_SCL = KL + text_weight * L1(text) + image_weight * L1(image)`` (the reference adds them in this order).

    Args:
        text, teacher_text: ``(C, E)`` prompted and frozen text features of every class.
        image, teacher_image: ``(B, E)`` prompted and frozen image features of the batch.
        logits, teacher_logits: ``(B, C)`` prompted and zero-shot logits.
    """
    kl = kl_to_teacher(logits, teacher_logits)
    return kl + l1_feature_loss(text, teacher_text) * text_weight + l1_feature_loss(image, teacher_image) * image_weight
