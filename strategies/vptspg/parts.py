"""VPTSP-G's small parts: Proxy-Anchor loss, the proxy GRU cell and the class-balanced batch sampler.

References (re-implemented from reading, not copied): Noahsark/ParameterEfficient-DML @ c7c9416
``criteria/dml_proxy_peft.py:Criterion`` (Proxy-Anchor with ``proxy_data_range: both_all``),
``architectures/peft_vit.py:Simple_GRUCell`` and ``datasampler/class_random_sampler.py:Sampler``.
Proxy-Anchor: Kim et al., "Proxy Anchor Loss for Deep Metric Learning" (CVPR 2020).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["masked_logsumexp", "proxy_anchor_loss", "ProxyGRUCell", "ClassBalancedBatchSampler", "cosine_lr"]

POS_MEANS = ("all", "present")


def masked_logsumexp(sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per column ``log(1 + sum_{i: mask[i, c]} exp(sims[i, c]))`` (a zero appended), 0 for empty columns.

    Args:
        sims: ``(B, C)`` scaled similarities.
        mask: bool ``(B, C)``, the rows that count in each column.

    Returns:
        ``(C,)``.
    """
    filled = sims.masked_fill(~mask, torch.finfo(sims.dtype).min)
    zeros = torch.zeros_like(filled[:1])  # (1, C): the "1 +" inside the log
    lse = torch.logsumexp(torch.cat([filled, zeros]), dim=0)  # (C,)
    return lse.masked_fill(~mask.any(dim=0), 0.0)


def proxy_anchor_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    proxies: torch.Tensor,
    alpha: float = 32.0,
    delta: float = 0.1,
    pos_mean: str = "all",
) -> torch.Tensor:
    """Proxy-Anchor loss over all class proxies (the reference's ``both_all`` range).

    ``pos = log(1 + sum_{x in X+_c} exp(-alpha (s(x, p_c) - delta)))`` and
    ``neg = log(1 + sum_{x in X-_c} exp(alpha (s(x, p_c) + delta)))`` per class ``c`` (cosine ``s``); the loss is
    ``mean_c pos + mean_c neg``. The negative mean runs over every class; the positive mean over every class too
    (``pos_mean="all"``: classes without a positive in the batch add 0, the reference code's ``.mean()``), or over the
    classes with positives (``"present"``, the paper's ``1/|P+|``).

    Args:
        emb: ``(B, E)`` embeddings; labels: ``(B,)`` in ``[0, C)``; proxies: ``(C, E)`` (both normalised here).
    """
    if pos_mean not in POS_MEANS:
        raise ValueError(f"pos_mean must be one of {POS_MEANS}, got {pos_mean!r}")
    sims = F.normalize(emb, dim=-1) @ F.normalize(proxies, dim=-1).T  # (B, C)
    pos_mask = F.one_hot(labels.long(), proxies.shape[0]).bool()  # (B, C)
    pos = masked_logsumexp(-alpha * (sims - delta), pos_mask)  # (C,)
    neg = masked_logsumexp(alpha * (sims + delta), ~pos_mask)  # (C,)
    present = pos_mask.any(dim=0)
    pos_term = pos.sum() / present.sum().clamp_min(1) if pos_mean == "present" else pos.mean()
    return pos_term + neg.mean()


class ProxyGRUCell(nn.Module):
    """The reference's GRU cell (``Simple_GRUCell``): no hidden-side biases; ``relu`` (``gru_relu``) or ``tanh``.

    ``z = sig(x Wiz + h Whz + biz)``, ``r = sig(x Wir + h Whr + bir)``, ``n = act(x Win + r * (h Whn) + bin)``,
    ``h' = (1 - z) n + z h``. Weights xavier-uniform, biases zero. With ``tanh`` it equals ``torch.nn.GRUCell``
    whose hidden biases are zero. (The reference's unused ``W_ia`` is not built.)
    """

    def __init__(self, input_size: int, hidden_size: int, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        self.activation = activation
        self.w_i = nn.Parameter(torch.empty(3, input_size, hidden_size))  # (r, z, n) input weights
        self.w_h = nn.Parameter(torch.empty(3, hidden_size, hidden_size))
        self.b_i = nn.Parameter(torch.zeros(3, hidden_size))
        for w in (*self.w_i, *self.w_h):
            nn.init.xavier_uniform_(w)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``x`` ``(P, I)``, ``h`` ``(P, H)`` -> ``h'`` ``(P, H)``."""
        r = torch.sigmoid(x @ self.w_i[0] + h @ self.w_h[0] + self.b_i[0])
        z = torch.sigmoid(x @ self.w_i[1] + h @ self.w_h[1] + self.b_i[1])
        pre = x @ self.w_i[2] + r * (h @ self.w_h[2]) + self.b_i[2]
        n = F.relu(pre) if self.activation == "relu" else torch.tanh(pre)
        return (1 - z) * n + z * h


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Batches of ``P`` distinct classes x ``k`` samples each, class by class (``[a, a, b, b, ...]`` for k = 2).

    Per batch ``P`` classes are drawn without replacement, and ``k`` samples of each (without replacement when the
    class has ``k``, else every sample repeated as needed, as the reference's ``_smart_sample``). An epoch has
    ``max(1, N // (P k))`` batches (the reference: ``len(images) // batch_size``). ``P`` is capped at the number of
    classes present (the reference would repeat classes, which breaks the per-class proxy update).
    """

    def __init__(self, targets: Sequence[int], batch_size: int, k: int, seed: int = 0) -> None:
        if k < 1 or batch_size % k:
            raise ValueError(f"batch_size {batch_size} must be a multiple of samples_per_class {k}")
        self.by_class: dict[int, list[int]] = {}
        for i, y in enumerate(targets):
            self.by_class.setdefault(int(y), []).append(i)
        if not self.by_class:
            raise ValueError("the class-balanced sampler needs at least one sample")
        self.k, self.p = k, min(batch_size // k, len(self.by_class))
        self.n_batches = max(1, len(targets) // batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _draw(self, pool: list[int], n: int) -> list[int]:
        if n <= len(pool):
            return [pool[i] for i in torch.randperm(len(pool), generator=self.generator)[:n].tolist()]
        reps = [*pool * (n // len(pool)), *self._draw(pool, n % len(pool))]
        return [reps[i] for i in torch.randperm(len(reps), generator=self.generator).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        classes = sorted(self.by_class)
        for _ in range(self.n_batches):
            batch: list[int] = []
            for c in self._draw(classes, self.p):
                batch += self._draw(self.by_class[c], self.k)
            yield batch

    def __len__(self) -> int:
        return self.n_batches


def cosine_lr(base: float, epoch: int, length: int, lr_min: float) -> float:
    """``CosineAnnealingLR`` stepped per epoch: ``lr_min + (base - lr_min)(1 + cos(pi e / length)) / 2``."""
    return lr_min + (base - lr_min) * (1 + math.cos(math.pi * epoch / length)) / 2
