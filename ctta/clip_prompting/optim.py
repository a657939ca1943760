"""Training conventions of the Dassl-based CLIP prompt learners: SGD and the per-epoch warm-up + cosine schedule.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134) and the methods built on its code base. References
(behaviour read, re-implemented, no code copied): KaiyangZhou/Dassl.pytorch@c61a1b5 ``dassl/optim/optimizer.py``
(SGD, momentum 0.9, weight decay 5e-4) and ``dassl/optim/lr_scheduler.py:ConstantWarmupScheduler`` over
``CosineAnnealingLR(T_max=MAX_EPOCH)``, stepped once per epoch after its last batch.

Schedule: epoch ``e`` (0-based) runs at ``warmup_lr`` for ``e < warmup_epochs``, else at
``lr * (1 + cos(pi * (e - warmup_epochs) / n_epochs)) / 2`` (the cosine restarts after the warm-up and keeps
``T_max = n_epochs``, so the last epoch never reaches zero).

Deviations: none (the closed form equals the recursive ``CosineAnnealingLR`` up to rounding).
"""

from __future__ import annotations

import math

import torch

__all__ = ["epoch_lr", "make_sgd", "warmup_cosine"]


def epoch_lr(epoch: int, lr: float, n_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate of 0-based ``epoch`` (see the module docstring)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / n_epochs)) / 2


def make_sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """Dassl's SGD (every trainable parameter decays, biases included)."""
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_cosine(opt: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5):
    """A ``LambdaLR`` over ``opt`` following ``epoch_lr``; call ``.step()`` once per epoch."""
    base = [g["lr"] for g in opt.param_groups]

    def factor(i):
        return lambda e: epoch_lr(e, base[i], n_epochs, warmup_epochs, warmup_lr) / base[i]

    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(i) for i in range(len(base))])
