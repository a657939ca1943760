"""Entropy losses and view selection shared by the test-time prompt-tuning strategies (TPT, DiffTPT); the
L1-feature and KL distillation terms of the CLIP prompt learners (PromptSRC and wave 2; see the section at the end).

Papers: TPT (Shu et al., NeurIPS 2022, arXiv 2209.07511), DiffTPT (Feng et al., ICCV 2023, arXiv 2308.06038).
Reference code (read for behaviour only, re-implemented from the spec ``tpt-difftpt.md``): azshue/TPT@63ecbace
``tpt_classification.py:{select_confident_samples, avg_entropy}``, chunmeifeng/DiffTPT@03f11696
``select_confident_samples_cosine``.

Every function takes logits with the views on the second-to-last axis, ``(..., N, C)``, so one call serves one
sample ``(N, C)`` or a batch of samples ``(B, N, C)``.

Deviations from the reference code:
- ``confident_indices`` sorts stably (``torch.argsort(stable=True)``), so ties keep view order; the reference's
  unstable sort may break ties differently. The kept count is ``max(1, int(N * p))`` (the reference crashes on 0).
- ``cosine_keep_indices`` also accepts image features instead of logits (the paper's reading, option
  ``cosine_space="image_features"`` of DiffTPT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "entropy",
    "avg_entropy",
    "n_confident",
    "confident_indices",
    "cosine_keep_indices",
    "gather_views",
    "kl_to_teacher",
    "l1_feature_loss",
    "cosine_consistency",
]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-view Shannon entropy ``H_i = -sum_c softmax(z_i)_c * log_softmax(z_i)_c`` (spec section 3.3).

    Args:
        logits: ``(..., N, C)`` logits.

    Returns:
        ``(..., N)`` entropies (fp32 or wider).
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -(z.softmax(dim=-1) * z.log_softmax(dim=-1)).sum(dim=-1)


def avg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Marginal entropy: entropy of the mean probability over the views (TPT's loss, spec section 3.4).

    ``l_i = z_i - logsumexp(z_i)``; ``lbar = logsumexp_i(l_i) - log(n)``, clamped at the dtype's minimum so that
    ``exp(lbar) * lbar`` stays finite when a probability underflows; ``loss = -sum_c exp(lbar_c) * lbar_c``.

    Args:
        logits: ``(..., n, C)`` logits of the selected views.

    Returns:
        ``(...)`` losses.
    """
    n = logits.shape[-2]
    if n == 0:
        raise ValueError("avg_entropy needs at least one view, got an empty selection")
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)  # (..., n, C)
    avg = logp.logsumexp(dim=-2) - math.log(n)
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)  # (..., C)
    return -(avg.exp() * avg).sum(dim=-1)


def n_confident(n_views: int, p: float) -> int:
    """Number of views kept by confidence selection: ``max(1, int(n_views * p))`` (64 views, p=0.1 -> 6)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"selection fraction must be in (0, 1], got {p}")
    if n_views < 1:
        raise ValueError(f"need at least one view, got {n_views}")
    return max(1, int(n_views * p))


def confident_indices(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Indices of the ``n_confident(N, p)`` lowest-entropy views, lowest first (stable sort).

    Args:
        logits: ``(..., N, C)`` logits.
        p: fraction of views to keep (TPT: 0.1).

    Returns:
        ``(..., k)`` long indices into the view axis.
    """
    k = n_confident(logits.shape[-2], p)
    return torch.argsort(entropy(logits), dim=-1, stable=True)[..., :k]


def cosine_keep_indices(x: torch.Tensor, frac: float) -> torch.Tensor:
    """DiffTPT's cosine filtration: view 0 plus the ``int((N-1) * frac)`` views most similar to view 0.

    ``s_i = cos(x_0, x_i)`` for ``i = 1..N-1``; the kept views are ``[0] + (argsort(s, descending)[:k] + 1)``
    (spec section 4.4; with ``N = 128`` and ``frac = 0.8``: 1 + 101 views). Sorting is stable.

    Args:
        x: ``(..., N, D)`` vectors per view: logits (reference) or image features (paper).
        frac: fraction of the non-original views to keep.

    Returns:
        ``(..., 1 + k)`` long indices into the view axis, view 0 first.
    """
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"cosine keep fraction must be in (0, 1], got {frac}")
    n = x.shape[-2]
    if n < 2:
        raise ValueError(f"cosine filtration needs the original view and at least one more, got {n} views")
    k = int((n - 1) * frac)
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    sim = F.cosine_similarity(x[..., :1, :], x[..., 1:, :], dim=-1)  # (..., N-1)
    top = torch.argsort(sim, dim=-1, descending=True, stable=True)[..., :k] + 1
    zero = torch.zeros(*top.shape[:-1], 1, dtype=top.dtype, device=top.device)
    return torch.cat([zero, top], dim=-1)


def gather_views(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of the view axis: ``x (..., N, D)``, ``idx (..., k)`` -> ``(..., k, D)``."""
    return torch.gather(x, -2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


# ------------------------------------------------------------------------------------------------------------------
# Distillation terms of PromptSRC (Khattak et al., ICCV 2023, arXiv 2307.06948, §3.1 eq. 2-4), shared with wave 2
# (CoPrompt, HiCroPL, MSGCoOp, RESTORE; clip-prompt-learners.md §20 L1); PromptSRC's weighted sum of them is
# ``ctta.strategies.promptsrc.losses.promptsrc_consistency``.
# Reference (behaviour read, re-implemented, no code copied): muzairkhattak/PromptSRC@bb95c77
# ``trainers/promptsrc.py:PromptSRC.forward_backward``. Deviations: none.


def l1_feature_loss(features: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of L2-normalised features: ``mean |f / ||f|| - t / ||t|| |`` (``F.l1_loss``)."""
    return F.l1_loss(F.normalize(features, dim=-1), F.normalize(teacher, dim=-1), reduction="mean")


def kl_to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(logits))`` summed over the batch and classes and divided by ``logits.numel()``
    (PromptSRC's ``L_SCL-logits``, temperature 1)."""
    log_p = F.log_softmax(logits, dim=-1)
    log_q = F.log_softmax(teacher_logits, dim=-1)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()


def cosine_consistency(features: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_rows (1 - cos(f, t))`` over the rows of ``(..., E)`` features: the cosine distillation of wave 2
    (CoPrompt's text and image terms, HiCroPL's, MSGCoOp's score ``1 - mean cos``; ``teacher`` broadcasts).

    References (behaviour read, re-implemented): ShuvenduRoy/CoPrompt@a2a6c12 ``trainers/coprompt.py``
    (``1 - torch.mean(cos(...))``), Rain-Bus/MSGCoOp@a298669 ``MSGCoOp/trainers/msgcoop.py``.
    """
    return 1.0 - F.cosine_similarity(features, teacher.to(features.dtype), dim=-1).mean()
