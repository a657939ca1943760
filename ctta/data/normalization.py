"""Image normalisation statistics: which mean/std a stream applied, which a backbone expects, and the affine map
between the two.

open_clip records the normalisation of each set of weights in its pretrained configuration
(``open_clip.get_pretrained_cfg(name, tag)["mean"/"std"]``) and sets it on the model it creates
(``model.visual.image_mean`` / ``image_std``, OpenAI's statistics when the weights name none). Scenarios record the
statistics they normalised with in the benchmark's record (``benchmark.info.normalization = (mean, std)``); a
strategy whose backbone expects other statistics maps the images with ``renormalize`` (a no-op, returning the same
tensor, when they are equal, so runs with OpenAI weights are unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "Stats", "clip_image_stats", "pretrained_clip_stats", "renormalize"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Stats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel


def _stats(mean: Sequence[float], std: Sequence[float]) -> Stats:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std) or not mean or min(std) <= 0:
        raise ValueError(f"normalisation needs per-channel mean and positive std of equal length, got {mean}, {std}")
    return mean, std


def clip_image_stats(clip) -> Stats:
    """The mean/std a CLIP model's image encoder expects: ``visual.image_mean``/``image_std`` (open_clip sets them
    from the weights' pretrained config), else ``visual.preprocess_cfg``, else OpenAI's."""
    visual = getattr(clip, "visual", None)
    mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
    if mean is None or std is None:
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return _stats(mean, std)


def pretrained_clip_stats(name: str, tag: str) -> Stats | None:
    """The mean/std open_clip's pretrained config gives weights ``tag`` of model ``name`` (None if it names none)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name.replace("/", "-"), tag) or {}
    if cfg.get("mean") is None or cfg.get("std") is None:
        return None
    return _stats(cfg["mean"], cfg["std"])


def renormalize(x: torch.Tensor, src: Stats, dst: Stats) -> torch.Tensor:
    """Images ``(..., C, H, W)`` normalised with ``src`` -> normalised with ``dst``: ``(x * s_std + s_mean - d_mean)
    / d_std``. Returns ``x`` itself when the statistics are equal."""
    src, dst = _stats(*src), _stats(*dst)
    if src == dst:
        return x
    (s_mean, s_std), (d_mean, d_std) = src, dst
    shape = (len(s_mean), 1, 1)

    def t(v):
        return torch.tensor(v, dtype=torch.float64).view(shape)

    scale = t(s_std) / t(d_std)
    shift = (t(s_mean) - t(d_mean)) / t(d_std)
    return x * scale.to(x) + shift.to(x)
