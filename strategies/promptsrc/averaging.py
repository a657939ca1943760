"""Gaussian weight averaging over epochs (PromptSRC's Gaussian prompt aggregation, GPA).

Paper: PromptSRC (Khattak et al., ICCV 2023, arXiv 2307.06948) §3.3. Reference (behaviour read, re-implemented,
no code copied): muzairkhattak/PromptSRC@bb95c77 ``trainers/promptsrc.py`` (``get_gauss``, the per-epoch weighted
state accumulation in ``forward_backward`` and its loading after the last epoch).

The weight of epoch ``e`` (1-based) is ``N(e; mu, sigma)`` normalised over ``e = 1..E``; the running sum of the
weighted parameters is accumulated at each epoch end and loaded after epoch ``E``.

Deviations: only the given (trainable) tensors are averaged; the reference averages the whole state dict, frozen
CLIP weights included, whose weighted average equals the frozen weights up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["gaussian_epoch_weights", "GaussianEpochAverage"]


def gaussian_epoch_weights(n_epochs: int, mu: float, sigma: float) -> list[float]:
    """``w_e = N(e; mu, sigma) / sum_k N(k; mu, sigma)`` for ``e = 1..n_epochs``."""
    if n_epochs < 1 or sigma <= 0:
        raise ValueError(f"need n_epochs >= 1 and sigma > 0, got {n_epochs}, {sigma}")
    g = [math.exp(-0.5 * ((e - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi)) for e in range(1, n_epochs + 1)]
    total = sum(g)
    if total == 0.0:
        raise ValueError(f"Gaussian N(mu={mu}, sigma={sigma}) has no mass on epochs 1..{n_epochs}")
    return [x / total for x in g]


class GaussianEpochAverage:
    """Accumulate ``sum_e w_e * theta_e`` over epochs and load it into the parameters after the last one.

    Args:
        named_params: ``(name, parameter)`` pairs to average (a prompt learner's trainable parameters).
        n_epochs, mu, sigma: see ``gaussian_epoch_weights``.
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], n_epochs: int, mu: float, sigma: float):
        self.params = dict(named_params)
        self.weights = gaussian_epoch_weights(n_epochs, mu, sigma)
        self.sums: dict[str, torch.Tensor] = {}
        self.epoch = 0

    @torch.no_grad()
    def epoch_end(self) -> None:
        """Add this epoch's weighted parameters; after the last epoch, load the average into them."""
        if self.epoch >= len(self.weights):
            raise RuntimeError(f"GaussianEpochAverage got more than {len(self.weights)} epochs")
        w = self.weights[self.epoch]
        for k, p in self.params.items():
            term = p.detach().double() * w
            self.sums[k] = term if k not in self.sums else self.sums[k] + term
        self.epoch += 1
        if self.epoch == len(self.weights):
            for k, p in self.params.items():
                p.copy_(self.sums[k].to(p.dtype))
