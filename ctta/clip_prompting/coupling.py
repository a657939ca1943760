"""Coupling functions between CLIP's towers: MaPLe's per-layer linear maps and CoCoOp's meta-net.

Papers: MaPLe (Khattak et al., CVPR 2023, arXiv 2210.03117) eq. 5-6; CoCoOp (Zhou et al., CVPR 2022,
arXiv 2203.05557) eq. 1-2. References (behaviour read, re-implemented, no code copied):
muzairkhattak/multimodal-prompt-learning@69bce21 ``trainers/maple.py:MultiModalPromptLearner``,
KaiyangZhou/CoOp@ff61507 ``trainers/cocoop.py:PromptLearner.meta_net``.

Deviations: none in the maps themselves. The references keep MaPLe's linear maps in fp16 under their "fp16"
setting; here they follow the dtype the model is cast to.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["MaPLeCoupling", "MetaNet", "seeded_linear"]


def seeded_linear(d_in: int, d_out: int, generator: torch.Generator | None = None) -> nn.Linear:
    """``nn.Linear(d_in, d_out)``; with ``generator`` its weight and bias are drawn from it by PyTorch's default rule
    (``U(-1/sqrt(d_in), 1/sqrt(d_in))``), so a starting point is reproducible without touching the parameters."""
    layer = nn.Linear(d_in, d_out)
    if generator is not None:
        bound = 1 / math.sqrt(d_in)
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class MaPLeCoupling(nn.Module):
    """``V_i = F_i(P_i)``: one ``Linear(d_text -> d_vision)`` per prompt depth (the input layer and J-1 deep layers).

    All deep maps start as copies of one initialised layer (the reference deep-copies one ``nn.Linear``); the
    input-layer map has its own default initialisation.

    Args:
        d_text: text width (512 for ViT-B/16).
        d_vision: vision width (768 for ViT-B/16).
        depth: prompt depth J (the input layer plus J-1 deep layers).
        generator: RNG of the initialisation (default: the global one, as the reference).
    """

    def __init__(self, d_text: int, d_vision: int, depth: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.proj = seeded_linear(d_text, d_vision, generator)  # F_0
        one = seeded_linear(d_text, d_vision, generator)
        self.deep = nn.ModuleList(copy.deepcopy(one) for _ in range(depth - 1))  # F_1..F_{J-1}

    def forward(self, ctx: torch.Tensor, deep_text: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(V_0, [V_1..V_{J-1}])`` from the text context ``P_0`` and the deep text prompts."""
        if len(deep_text) != len(self.deep):
            raise ValueError(f"{len(deep_text)} deep text prompts for {len(self.deep)} coupling maps")
        return self.proj(ctx), [f(p) for f, p in zip(self.deep, deep_text)]


class MetaNet(nn.Module):
    """CoCoOp's meta-net ``pi = Linear(E -> E/16) -> ReLU -> Linear(E/16 -> D)`` on the L2-normalised image feature.

    Args:
        d_in: image-feature width (the CLIP embedding, 512 for ViT-B/16).
        d_out: text token width (512 for ViT-B/16).
        reduction: hidden width ``d_in // reduction`` (16 in the reference).
        generator: RNG of the initialisation (default: the global one, as the reference).
    """

    def __init__(self, d_in: int, d_out: int, reduction: int = 16, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden = max(1, d_in // reduction)
        self.linear1 = seeded_linear(d_in, hidden, generator)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = seeded_linear(hidden, d_out, generator)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` normalised image features -> ``(B, D)`` bias added to every context token."""
        return self.linear2(self.relu(self.linear1(image_features)))
