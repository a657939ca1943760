"""Residual feature modules on CLIP's joint embedding with a mix ratio: CoPrompt's bottleneck adapters and RESTORE's
FFN calibrators (wave 2).

Papers: CoPrompt (Roy & Etemad, ICLR 2024, arXiv 2306.01195) §3 (adapters, after CLIP-Adapter, Gao et al. 2021);
RESTORE (2024/2025; Yaphabates/RESTORE_) feature calibrators. References (behaviour read, re-implemented, no code
copied; spec ``clip-prompt-learners.md`` sections 4, 17, 23.1, 23.2): ShuvenduRoy/CoPrompt@a2a6c12
``trainers/coprompt.py:{Adapter, CustomCLIP.forward}``; Yaphabates/RESTORE_@4c64a17
``trainers/maple_fsa.py:{Feature_Calibrator, CustomCLIP.forward, update_calib}``.

Shared with wave 2: CoPrompt and RESTORE. API (W2b's RESTORE uses ``FeatureCalibrator`` and ``ResidualMix``):

* ``BottleneckAdapter(E, reduction=4)``: ``ReLU(W2 ReLU(W1 x))``, ``W1: E -> E/reduction``, ``W2: E/reduction -> E``,
  both without bias (CoPrompt; parameter names ``fc.0.weight``, ``fc.2.weight`` as the reference's).
* ``FeatureCalibrator(E, expansion=4)``: ``x + W2 QuickGELU(W1 LN(x) + b1) + b2`` (RESTORE; ``post_ln``, ``FFN.0``,
  ``FFN.2``; the LayerNorm named ``post_ln`` runs first, as in the reference).
* ``ResidualMix(module, ratio)``: ``r * module(x) + (1 - r) * x`` with ``r`` a plain Python float read from the
  float64 buffer ``ratio`` (saved in the state dict; never trained, the references read ``.item()`` / a float).
  ``set_ratio(value, dtype=None)`` replaces it (RESTORE's scheduled raise stores a float32-rounded value: pass
  ``dtype=torch.float32``). The mix is not normalised; the methods normalise after it.

Deviations: the modules follow the model's dtype (the references cast them to fp16 under their fp16 setting; RESTORE
also in fp32, where it crashes: its methods may initialise from fp16-rounded values instead).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BottleneckAdapter", "FeatureCalibrator", "ResidualMix", "seeded_uniform_"]


def seeded_uniform_(weight: torch.Tensor, fan_in: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """PyTorch's default ``nn.Linear`` draw ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` from ``generator`` (None: keep the
    layer's own default draw from the global RNG)."""
    if generator is not None:
        bound = 1 / math.sqrt(fan_in)
        with torch.no_grad():
            weight.uniform_(-bound, bound, generator=generator)
    return weight


class BottleneckAdapter(nn.Module):
    """CoPrompt's adapter ``ReLU(Linear(E/r -> E)(ReLU(Linear(E -> E/r)(x))))``, no biases."""

    def __init__(self, dim: int, reduction: int = 4, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden = dim // reduction
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=False), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )
        seeded_uniform_(self.fc[0].weight, dim, generator)
        seeded_uniform_(self.fc[2].weight, hidden, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class FeatureCalibrator(nn.Module):
    """RESTORE's calibrator ``x + FFN(LN(x))``, ``FFN = Linear(E -> eE) -> QuickGELU -> Linear(eE -> E)``."""

    def __init__(self, dim: int, expansion: int = 4, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.post_ln = nn.LayerNorm(dim)
        self.FFN = nn.Sequential(nn.Linear(dim, dim * expansion), _QuickGELU(), nn.Linear(dim * expansion, dim))
        for lin in (self.FFN[0], self.FFN[2]):
            seeded_uniform_(lin.weight, lin.in_features, generator)
            seeded_uniform_(lin.bias, lin.in_features, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.FFN(self.post_ln(x))


class ResidualMix(nn.Module):
    """``r * module(x) + (1 - r) * x`` with a fixed (scheduled, never trained) ratio ``r``.

    Args:
        module: the residual branch (``BottleneckAdapter``, ``FeatureCalibrator``).
        ratio: the initial mix ratio ``r``.
    """

    def __init__(self, module: nn.Module, ratio: float) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("ratio", torch.tensor(float(ratio), dtype=torch.float64))

    @property
    def r(self) -> float:
        """The ratio as a Python float (what the references multiply by)."""
        return float(self.ratio.item())

    def set_ratio(self, value: float, dtype: torch.dtype | None = None) -> None:
        """Replace the ratio; with ``dtype`` the value is first rounded to it (RESTORE's float32 re-creation)."""
        v = float(torch.tensor(float(value), dtype=dtype).item()) if dtype is not None else float(value)
        self.ratio = torch.tensor(v, dtype=torch.float64, device=self.ratio.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.r
        return r * self.module(x) + (1 - r) * x

    def _apply(self, fn, recurse=True):
        ratio = self.ratio
        out = super()._apply(fn, recurse)
        self.ratio = ratio.to(device=self.ratio.device, dtype=torch.float64)  # .half() must not round the ratio
        return out
