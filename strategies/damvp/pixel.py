"""Pixel-space pad prompts (VP / DAM-VP ``PadPrompter``) and a bank of them applied per sample.

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138), building on
Bahng et al., "Exploring Visual Prompts for Adapting Large-Scale Models" (arXiv 2203.17274).
Reference: shikiw/DAM-VP@dec5821 ``models/prompters.py::PadPrompter`` (re-implemented, no code copied).

A prompt is a learnable frame of width ``w`` around an ``S x S`` image (interior zero), added to the
*already normalised* image without clipping: ``x~ = x + p``. At ``S=224, w=30`` it has 69,840 parameters.

Deviations from the reference code: the reference applies the K cluster prompts in a per-sample Python loop;
``PadPromptBank.forward`` builds only the frames of the prompts used in the batch and adds them with one
gather (identical values; ``forward_loop`` keeps the per-sample loop for tests and benchmarks).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["PadPrompter", "PadPromptBank", "load_prompter", "pad_prompt_numel", "save_prompter", "scaled_pad_width"]


def pad_prompt_numel(image_size: int = 224, pad_width: int = 30, channels: int = 3) -> int:
    """Number of parameters of one pad prompt: ``2*C*w*S + 2*C*(S-2w)*w`` (69,840 at 224/30)."""
    return 2 * channels * pad_width * image_size + 2 * channels * (image_size - 2 * pad_width) * pad_width


def scaled_pad_width(image_size: int, ref_width: int = 30, ref_size: int = 224) -> int:
    """The pad width for ``image_size`` keeping the reference ratio ``30/224`` (at least 1 pixel)."""
    return max(1, round(ref_width * image_size / ref_size))


def _check_geometry(image_size: int, pad_width: int, channels: int) -> None:
    if image_size < 1 or channels < 1:
        raise ValueError(f"image_size and channels must be positive, got {image_size}, {channels}")
    if pad_width < 1 or 2 * pad_width > image_size:
        raise ValueError(f"pad_width must be in [1, image_size/2]; got pad_width={pad_width}, image_size={image_size}")


class PadPrompter(nn.Module):
    """One additive pad prompt: a frame of width ``pad_width`` around an ``image_size`` square image.

    Parameters ``pad_up``/``pad_down`` are ``(1, C, w, S)``, ``pad_left``/``pad_right`` ``(1, C, S-2w, w)``,
    initialised with ``randn``. ``forward(x)`` returns ``x + frame`` (no clipping).

    Args:
        image_size: side ``S`` of the (square, normalised) input images.
        pad_width: frame width ``w``.
        channels: image channels ``C``.
        generator: optional ``torch.Generator`` for the ``randn`` initialisation.
    """

    def __init__(
        self, image_size: int = 224, pad_width: int = 30, channels: int = 3, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        _check_geometry(image_size, pad_width, channels)
        self.image_size, self.pad_width, self.channels = image_size, pad_width, channels
        side = (1, channels, image_size - 2 * pad_width, pad_width)
        rnd = lambda *shape: nn.Parameter(torch.randn(*shape, generator=generator))  # noqa: E731
        self.pad_up = rnd(1, channels, pad_width, image_size)
        self.pad_down = rnd(1, channels, pad_width, image_size)
        self.pad_left = rnd(*side)
        self.pad_right = rnd(*side)

    def frame(self) -> torch.Tensor:
        """The full prompt image ``(1, C, S, S)`` with a zero interior."""
        s, w = self.image_size, self.pad_width
        base = self.pad_up.new_zeros(1, self.channels, s - 2 * w, s - 2 * w)
        mid = torch.cat([self.pad_left, base, self.pad_right], dim=3)  # (1, C, S-2w, S)
        return torch.cat([self.pad_up, mid, self.pad_down], dim=2)  # (1, C, S, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.channels, self.image_size)
        return x + self.frame().to(x.dtype)


def _check_input(x: torch.Tensor, channels: int, image_size: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(
            f"pad prompt expects images (B, {channels}, {image_size}, {image_size}), got {tuple(x.shape)}; "
            "set the prompt image_size to the backbone input size"
        )


class PadPromptBank(nn.Module):
    """``K`` pad prompts (one per cluster); ``forward(x, idx)`` adds prompt ``idx[b]`` to image ``b``.

    Each prompt is its own ``PadPrompter`` module so an optimiser can hold one parameter group per prompt
    and prompts never routed in a batch get no gradient.

    Args:
        n_prompts: ``K``.
        image_size, pad_width, channels: geometry of every prompt.
        init: optional ``PadPrompter`` (e.g. the meta-prompt theta_meta) every prompt starts as a copy of;
            otherwise all prompts are copies of one ``randn`` draw (the reference deep-copies one prompter).
        generator: optional generator for the ``randn`` draw.
    """

    def __init__(
        self,
        n_prompts: int,
        image_size: int = 224,
        pad_width: int = 30,
        channels: int = 3,
        init: PadPrompter | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
        if init is None:
            init = PadPrompter(image_size, pad_width, channels, generator=generator)
        elif (init.image_size, init.pad_width, init.channels) != (image_size, pad_width, channels):
            raise ValueError(
                f"init prompt geometry (S={init.image_size}, w={init.pad_width}, C={init.channels}) differs from "
                f"the bank's (S={image_size}, w={pad_width}, C={channels})"
            )
        self.image_size, self.pad_width, self.channels = image_size, pad_width, channels
        self.prompters = nn.ModuleList(_copy_prompter(init) for _ in range(n_prompts))

    def __len__(self) -> int:
        return len(self.prompters)

    def frames(self, indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Stacked frames ``(len(indices), C, S, S)`` of the given prompts (all if None)."""
        if indices is None:
            indices = range(len(self.prompters))
        return torch.cat([self.prompters[int(k)].frame() for k in indices], dim=0)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``x[b] + frame[idx[b]]`` for every ``b``, vectorised. ``x`` (B, C, S, S), ``idx`` (B,) long."""
        _check_input(x, self.channels, self.image_size)
        idx = self._check_idx(idx, len(x))
        used, inverse = torch.unique(idx, return_inverse=True)  # build only the routed prompts' frames
        frames = self.frames(used.tolist())  # (U, C, S, S)
        return x + frames.to(x.dtype)[inverse.to(x.device)]  # (B, C, S, S)

    def forward_loop(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Reference per-sample loop (the official implementation); equals ``forward``."""
        idx = self._check_idx(idx, len(x))
        return torch.cat([self.prompters[int(k)](x[b : b + 1]) for b, k in enumerate(idx.tolist())], dim=0)

    def _check_idx(self, idx: torch.Tensor, batch: int) -> torch.Tensor:
        idx = torch.as_tensor(idx).long().flatten()
        if len(idx) != batch:
            raise ValueError(f"{len(idx)} prompt indices for a batch of {batch} images")
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self.prompters)):
            raise IndexError(f"prompt index out of range [0, {len(self.prompters)}): {idx.tolist()[:10]}")
        return idx

    @torch.no_grad()
    def load_from(self, init: PadPrompter) -> None:
        """Reset every prompt to a copy of ``init`` (e.g. the meta-prompt)."""
        for p in self.prompters:
            p.load_state_dict(init.state_dict())


def _copy_prompter(src: PadPrompter) -> PadPrompter:
    """A trainable deep copy of ``src`` (detached from it)."""
    dst = copy.deepcopy(src)
    for p in dst.parameters():
        p.requires_grad_(True)
        p.grad = None
    return dst


def save_prompter(prompter: PadPrompter, path: str | Path, **meta) -> None:
    """Save ``{"state_dict": ..., **meta}`` (the reference checkpoint layout, readable by ``load_prompter``)."""
    state = {k: v.detach().cpu().clone() for k, v in prompter.state_dict().items()}
    torch.save({"state_dict": state, **meta}, Path(path))


def load_prompter(path: str | Path, map_location: str | torch.device = "cpu") -> PadPrompter:
    """A ``PadPrompter`` from a checkpoint with ``state_dict`` (ours or the reference's released meta-prompts).

    The geometry is read from the tensor shapes (``pad_up`` is ``(1, C, w, S)``).

    Raises:
        FileNotFoundError: no such file. KeyError: not a pad-prompt checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"meta-prompt checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "pad_up" not in state:
        raise KeyError(f"{path} is not a pad-prompt checkpoint (expected a state_dict with pad_up/pad_down/...)")
    _, channels, width, size = state["pad_up"].shape
    prompter = PadPrompter(int(size), int(width), int(channels))
    prompter.load_state_dict(state)
    return prompter
