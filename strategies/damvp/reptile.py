"""Reptile meta-learning of a pixel pad prompt with per-cluster fast weights (DAM-VP meta-prompt theta_meta).

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138), §3.3; Reptile:
Nichol et al., "On First-Order Meta-Learning Algorithms" (arXiv 1803.02999).
Reference: shikiw/DAM-VP@dec5821 ``meta-training/meta_{hf,ht,clip}.py::Meta`` and ``main_*.py``
(re-implemented; no code copied).

One meta-step: for every source task d (its own clusters/prototypes and read-out), copy theta into K_d fast
prompts, take ``update_step`` optimiser steps on the SAME batch (support = query) routing each sample to its
cluster's fast prompt (Adam for ``hf``/``clip``; SGD with weight decay plus the task's persistent linear head at
lr 0.1 for ``ht``), then move theta toward the mean of ALL fast weights (every fast prompt counts, routed or not):

    theta <- theta - eps * sum_d sum_k (theta - theta_{d,k}) / sum_d K_d

The inner learning rate follows ``0.5 (1 + cos(pi g / G)) meta_lr`` over the global meta-steps g = 1..G.

Deviations from the reference code: (1) the reference iterates its loaders with ``it.next()`` inside a bare
``try/except: break``; on torch >= 1.13 that raises AttributeError, so every epoch breaks immediately and NO
meta-update ever happens. Here ``next(it)`` is used, so theta really moves. (2) The reference recomputes the
routing features and several monitoring losses inside the inner loop; they are ``no_grad`` and deterministic,
so routing is computed once per task batch and only the post-update loss (used for checkpoint selection) is
evaluated (identical updates). (3) The ``best_test_finetune`` checkpoint is produced only if a callback is given
(the reference fine-tunes on a TEST split each epoch and keeps the best: selection on test data).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from ctta.strategies.damvp.clustering import route
from ctta.strategies.damvp.pixel import PadPromptBank, PadPrompter
from torch import nn

__all__ = ["MetaResult", "MetaTask", "ReptileMetaTrainer", "meta_inner_lr", "reptile_update"]

_VARIANTS = ("hf", "ht", "clip")


def meta_inner_lr(step: int, total: int, meta_lr: float) -> float:
    """Inner (fast-weight) learning rate at global meta-step ``step`` (1-based) of ``total``: cosine, no warm-up."""
    if total <= 0:
        raise ValueError(f"total meta-steps must be positive, got {total}")
    return 0.5 * (1.0 + math.cos(math.pi * step / total)) * meta_lr


@torch.no_grad()
def reptile_update(theta: PadPrompter, fast: Sequence[PadPromptBank | Sequence[PadPrompter]], step_size: float):
    """Outer Reptile step in place: ``theta -= eps * mean over all fast prompts of (theta - theta_{d,k})``.

    Args:
        theta: the meta-prompt.
        fast: per task, its K_d fast prompts (a ``PadPromptBank`` or a list of ``PadPrompter``).
        step_size: epsilon (``meta_step_size``).
    """
    prompters = [p for bank in fast for p in (bank.prompters if isinstance(bank, PadPromptBank) else bank)]
    if not prompters:
        raise ValueError("reptile_update needs at least one fast prompt")
    for name, t in theta.named_parameters():
        fast_sum = torch.stack([dict(p.named_parameters())[name].detach().to(t.device) for p in prompters]).sum(0)
        diff = (len(prompters) * t - fast_sum) / len(prompters)  # mean_k (theta - theta_k)
        t.sub_(step_size * diff)


@dataclass
class MetaTask:
    """One source dataset for meta-training.

    Attributes:
        name: dataset name (for logs).
        loader: re-iterable batches ``(x, y, ...)`` (e.g. a shuffled DataLoader of the augmented train split).
        prototypes: ``(K_d, D)`` cluster prototypes of the task (``ctta.strategies.damvp.clustering``).
        features_fn: raw images -> routing features phi ``(B, D)`` (CLIP: the task's zero-shot logits).
        logits_fn: prompted images ``(B, C, H, W)`` -> logits ``(B, C_d)`` (read-out, CLIP, or ``head(phi)``).
        head: the persistent linear head of a head-tuning task (trained in the inner loop; ``ht`` only).
    """

    name: str
    loader: Iterable
    prototypes: torch.Tensor
    features_fn: Callable[[torch.Tensor], torch.Tensor]
    logits_fn: Callable[[torch.Tensor], torch.Tensor]
    head: nn.Module | None = None


@dataclass
class MetaResult:
    """Outputs of ``ReptileMetaTrainer.fit``: the final theta and the two reference checkpoints."""

    theta: PadPrompter
    best_train_loss: PadPrompter
    best_test_finetune: PadPrompter | None = None
    history: list[dict] = field(default_factory=list)


class ReptileMetaTrainer:
    """Reptile over several source tasks with per-cluster fast prompts.

    Args:
        theta: the meta-prompt (updated in place).
        meta_lr: base inner learning rate (0.5 for vit-b-1k/swin/moco/rn50, 1.0 for vit-b-22k/CLIP).
        variant: ``hf`` (Adam), ``clip`` (Adam) or ``ht`` (SGD with weight decay + the task head at ``head_lr``).
        meta_step_size: epsilon of the outer update (README 0.5).
        update_step: inner steps per task and meta-step (default 8; the README uses 4).
        weight_decay: prompt weight decay in the ``ht`` inner SGD.
        head_lr: learning rate of the task heads in the ``ht`` inner SGD.
        diversity_adaptive: False = one fast prompt per task, no routing (``--wo_da``).
        device: where batches are moved.
    """

    def __init__(
        self,
        theta: PadPrompter,
        *,
        meta_lr: float,
        variant: str = "hf",
        meta_step_size: float = 0.5,
        update_step: int = 8,
        weight_decay: float = 1e-4,
        head_lr: float = 0.1,
        diversity_adaptive: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if variant not in _VARIANTS:
            raise ValueError(f"variant={variant!r}; valid: {list(_VARIANTS)}")
        if update_step < 1:
            raise ValueError(f"update_step must be >= 1, got {update_step}")
        self.theta = theta
        self.meta_lr, self.variant, self.meta_step_size = float(meta_lr), variant, float(meta_step_size)
        self.update_step, self.weight_decay, self.head_lr = int(update_step), float(weight_decay), float(head_lr)
        self.diversity_adaptive, self.device = diversity_adaptive, torch.device(device)

    def _optimizer(self, bank: PadPromptBank, task: MetaTask, lr: float) -> torch.optim.Optimizer:
        if self.variant != "ht":
            return torch.optim.Adam([{"params": p.parameters()} for p in bank.prompters], lr=lr)
        groups = [{"params": p.parameters(), "lr": lr, "weight_decay": self.weight_decay} for p in bank.prompters]
        if task.head is not None:
            groups.append({"params": task.head.parameters(), "lr": self.head_lr, "weight_decay": 0.0})
        return torch.optim.SGD(groups, lr=lr)  # plain SGD, no momentum (reference)

    def task_step(self, task: MetaTask, x: torch.Tensor, y: torch.Tensor, lr: float) -> PadPromptBank:
        """Inner loop on one batch of one task; returns its fast prompts (theta is unchanged)."""
        k = len(task.prototypes) if self.diversity_adaptive else 1
        bank = PadPromptBank(k, self.theta.image_size, self.theta.pad_width, self.theta.channels, init=self.theta)
        bank.to(self.device)
        if self.diversity_adaptive:
            with torch.no_grad():
                idx = route(task.features_fn(x), task.prototypes.to(self.device))  # (B,)
        else:
            idx = torch.zeros(len(x), dtype=torch.long, device=self.device)
        opt = self._optimizer(bank, task, lr)
        for _ in range(self.update_step):
            loss = F.cross_entropy(task.logits_fn(bank(x, idx)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return bank

    def meta_step(self, tasks: Sequence[MetaTask], batches: Sequence[tuple], lr: float) -> float:
        """One meta-step over one batch per task; returns the mean post-update loss of theta over the tasks."""
        data = [(b[0].to(self.device), b[1].to(self.device)) for b in batches]
        fast = [self.task_step(t, x, y, lr) for t, (x, y) in zip(tasks, data)]
        reptile_update(self.theta, fast, self.meta_step_size)
        with torch.no_grad():
            losses = [F.cross_entropy(t.logits_fn(self.theta(x)), y) for t, (x, y) in zip(tasks, data)]
        return float(torch.stack(losses).mean())

    def fit(
        self,
        tasks: Sequence[MetaTask],
        epochs: int,
        finetune_eval: Callable[[PadPrompter], float] | None = None,
    ) -> MetaResult:
        """Meta-train for ``epochs`` epochs of ``min_d len(loader_d)`` meta-steps each.

        Args:
            tasks: the source tasks (one batch of each per meta-step).
            epochs: number of epochs.
            finetune_eval: optional callback scoring a prompt (the reference fine-tunes it on a held-out
                dataset and returns TEST accuracy); after every epoch the current ``best_train_loss`` prompt is
                scored and kept as ``best_test_finetune`` when the score is >= the best so far (reference).

        Returns:
            ``MetaResult`` with theta, ``best_train_loss`` (lowest post-update loss, the default theta_meta) and
            ``best_test_finetune`` (None without a callback).
        """
        if not tasks:
            raise ValueError("meta-training needs at least one source task")
        steps = min(_len(t.loader, t.name) for t in tasks)
        total, g = epochs * steps, 0
        best_loss, best = math.inf, copy.deepcopy(self.theta)
        best_score, best_ft, history = -math.inf, None, []
        for epoch in range(epochs):
            iters = [iter(t.loader) for t in tasks]
            for _ in range(steps):
                g += 1
                lr = meta_inner_lr(g, total, self.meta_lr)
                loss = self.meta_step(tasks, [next(it) for it in iters], lr)
                history.append({"epoch": epoch, "step": g, "inner_lr": lr, "loss": loss})
                if loss < best_loss:
                    best_loss, best = loss, copy.deepcopy(self.theta)
            if finetune_eval is not None:
                score = float(finetune_eval(copy.deepcopy(best)))
                history[-1]["finetune_score"] = score
                if score >= best_score:
                    best_score, best_ft = score, copy.deepcopy(best)
        return MetaResult(self.theta, best, best_ft, history)


def _len(loader: Iterable, name: str) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"meta task {name!r}: the loader needs a len() (e.g. a DataLoader)") from None
    if n == 0:
        raise ValueError(f"meta task {name!r} has an empty loader")
    return n
