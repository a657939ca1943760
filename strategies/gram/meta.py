"""GRAM's gradient-regulating function and its first-order bi-level meta-update (Li et al., ICCV 2023, arXiv
2303.06571; unofficial, from the paper).

Regulating function (element-wise, bounded, the identity at ``beta = 0``)::

    r_beta(g) = 2 * sigmoid(beta) * g          # each gradient entry scaled by a factor in (0, 2)

Bi-level update on one meta-task (support set S, query set Q), ``K = inner_steps``::

    theta_0 = the meta-learned context;  theta_{k+1} = theta_k - alpha * r_beta(g_k),  g_k = grad L_S(theta_k)
    meta-loss = L_Q(theta_K)

First order: the inner gradients ``g_k`` are constants (no second derivatives), so ``theta_K = theta_0 - alpha *
sum_k r_beta(g_k)`` and the meta-gradients are::

    d L_Q / d theta_0 = h                                                  (h = grad L_Q(theta_K); FOMAML)
    d L_Q / d beta    = -2 alpha sigmoid(beta) (1 - sigmoid(beta)) * h * sum_k g_k

``meta_loss`` builds exactly that graph, so ``meta_loss(...).backward()`` leaves those two gradients
(``tests/test_gram.py`` checks them on hand-made quadratics).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["REG_MAX", "caption_set_loss", "inner_adapt", "meta_loss", "regulate", "split_task"]

REG_MAX = 2.0  # r_beta scales each gradient entry by REG_MAX * sigmoid(beta) in (0, REG_MAX); 1 at beta = 0

Loss = Callable[[torch.Tensor], torch.Tensor]


def regulate(grad: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The regulated gradient ``r_beta(g) = REG_MAX * sigmoid(beta) * g`` (element-wise)."""
    return REG_MAX * torch.sigmoid(beta.to(grad.dtype)) * grad


def inner_adapt(theta0: torch.Tensor, beta: torch.Tensor | None, support: Loss, steps: int, lr: float) -> torch.Tensor:
    """``theta_K`` after ``steps`` regulated SGD steps on ``support`` (``beta`` None: unregulated), differentiable in
    ``theta0`` and ``beta`` with the inner gradients held constant (first order)."""
    theta = theta0
    for _ in range(steps):
        t = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(support(t), t)
        theta = theta - lr * (g if beta is None else regulate(g, beta))
    return theta


def meta_loss(theta0, beta, support: Loss, query: Loss, steps: int, lr: float) -> torch.Tensor:
    """The query loss after inner adaptation on the support set; its backward gives the first-order
    meta-gradients of ``theta0`` and ``beta`` (module docstring)."""
    return query(inner_adapt(theta0, beta, support, steps, lr))


def split_task(task: np.ndarray, rng: np.random.Generator, size: int) -> tuple[list[int], list[int]]:
    """A random half of the task's pairs as the support set, the other half as the query set (each at most
    ``size`` pairs; a task of ``n >= 2`` pairs gives ``n // 2`` support pairs)."""
    order = rng.permutation(task)
    half = len(order) // 2
    return order[:half][:size].tolist(), order[half:][:size].tolist()


def caption_set_loss(model, feats: torch.Tensor, captions: list[str], idx: list[int]) -> Loss:
    """``theta -> CE`` of the images ``idx`` over the set's distinct captions prompted with context ``theta``
    (``[SOS] theta <caption> .``): the captions are the set's classes, each image's own caption its label."""
    names = sorted({captions[i] for i in idx})
    y = torch.tensor([names.index(captions[i]) for i in idx], device=feats.device)
    f = feats[idx]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        if model.classnames != names:
            model.set_classnames(names)
        return F.cross_entropy(model.logits(f, model.text(theta).float()), y)

    return loss
