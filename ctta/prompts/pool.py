"""Key-query prompt pool shared by MVP, L2P and DualPrompt.

Papers: L2P (Wang et al., CVPR 2022, arXiv 2112.08654), DualPrompt (Wang et al., ECCV 2022, arXiv 2204.04799),
MVP (Moon et al., ICCV 2023, arXiv 2308.09303). Reference: moonjunyyy/Si-Blurry@c4024ce ``models/mvp.py``,
``models/l2p.py``, ``models/dualprompt.py`` (re-implemented; no code
copied).

A pool holds ``P`` keys ``(P, Dk)`` and ``P`` prompts ``(P, n_layers * length, D)``: prompt ``p`` contributes
tokens ``[i*length, (i+1)*length)`` to ``layers[i]``. A frozen query ``q`` (B, Dk) is matched to the keys by
cosine distance ``d = 1 - cos(q, k)``; the ``top_k`` keys with the smallest penalised score ``d * mass`` are
selected, where ``mass = count + 1`` (MVP's frequency penalty, ``penalty="count"``) or ``1``
(``penalty="none"``). ``count`` is a buffer the caller increments with ``update_count`` (MVP: on training
forwards only), so selection itself is identical in train and eval mode.

Deviations: none (ties in the score resolve to the lowest prompt index, as ``torch.topk`` on CPU does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PromptPool", "PoolSelection", "INITS", "PENALTIES"]

INITS = ("randn", "uniform", "zeros")
PENALTIES = ("count", "none")


@dataclass
class PoolSelection:
    """Result of ``PromptPool.select``.

    Attributes:
        idx: selected prompt indices ``(B, k)``, best first.
        distance: ``1 - cos(q, key)`` for every key ``(B, P)`` (gradient flows to the keys).
        mass: the penalty multipliers used ``(P,)`` (``count + 1`` before any increment, or ones).
    """

    idx: torch.Tensor
    distance: torch.Tensor
    mass: torch.Tensor

    @property
    def selected_distance(self) -> torch.Tensor:
        """Distances of the selected keys ``(B, k)``."""
        return self.distance.gather(1, self.idx)

    @property
    def top1(self) -> torch.Tensor:
        """The best index per sample ``(B,)``."""
        return self.idx[:, 0]


def _init_(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "randn":
        return nn.init.normal_(t)
    if how == "uniform":
        return nn.init.uniform_(t, -1.0, 1.0)
    if how == "zeros":
        return nn.init.zeros_(t)
    raise ValueError(f"unknown init {how!r}; valid: {list(INITS)}")


class PromptPool(nn.Module):
    """A pool of ``pool_size`` (key, prompt) pairs with frequency-penalised key-query selection.

    Args:
        pool_size: P, number of prompts/keys.
        embed_dim: D, token width of the prompts.
        length: tokens per prompt per layer.
        layers: backbone layers the prompt tokens go to (prompt ``p`` holds ``len(layers) * length`` tokens).
        key_dim: width of keys and queries (default ``embed_dim``).
        key_init, prompt_init: ``"randn"`` (MVP), ``"uniform"`` (U(-1, 1), L2P/DualPrompt) or ``"zeros"``.

    Attributes:
        keys: ``nn.Parameter`` ``(P, Dk)``.
        prompts: ``nn.Parameter`` ``(P, len(layers) * length, D)``.
        count: ``long`` buffer ``(P,)``: how often each prompt was selected (see ``update_count``).
    """

    def __init__(
        self,
        pool_size: int,
        embed_dim: int,
        length: int,
        layers: Sequence[int] = (0,),
        key_dim: int | None = None,
        key_init: str = "randn",
        prompt_init: str = "randn",
    ) -> None:
        super().__init__()
        if pool_size < 1 or embed_dim < 1 or length < 1 or not layers:
            raise ValueError(
                f"PromptPool needs pool_size, embed_dim, length >= 1 and at least one layer; got "
                f"pool_size={pool_size}, embed_dim={embed_dim}, length={length}, layers={tuple(layers)}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"PromptPool layers must be distinct, got {tuple(layers)}")
        self.pool_size, self.length, self.layers = int(pool_size), int(length), tuple(int(i) for i in layers)
        kd = int(key_dim or embed_dim)
        self.keys = nn.Parameter(_init_(torch.empty(pool_size, kd), key_init))
        self.prompts = nn.Parameter(_init_(torch.empty(pool_size, len(self.layers) * length, embed_dim), prompt_init))
        self.register_buffer("count", torch.zeros(pool_size, dtype=torch.long))

    def distance(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine distance ``1 - cos(q_b, k_p)`` ``(B, P)`` of queries ``(B, Dk)`` to every key."""
        if query.ndim != 2 or query.shape[1] != self.keys.shape[1]:
            raise ValueError(f"query must be (B, {self.keys.shape[1]}), got {tuple(query.shape)}")
        return 1.0 - F.cosine_similarity(query.unsqueeze(1), self.keys.unsqueeze(0), dim=-1)  # (B, P)

    def key_distance(self) -> torch.Tensor:
        """Pairwise key distances ``K_ij = 1 - cos(k_i, k_j)`` ``(P, P)`` (gradient to both keys)."""
        return 1.0 - F.cosine_similarity(self.keys.unsqueeze(1), self.keys.unsqueeze(0), dim=-1)

    def mass(self, penalty: str = "count") -> torch.Tensor:
        """Penalty multipliers ``(P,)``: ``count + 1`` (``"count"``) or ones (``"none"``); a new tensor."""
        if penalty == "count":
            return (self.count + 1).to(self.keys.dtype)
        if penalty == "none":
            return torch.ones(self.pool_size, dtype=self.keys.dtype, device=self.keys.device)
        raise ValueError(f"unknown penalty {penalty!r}; valid: {list(PENALTIES)}")

    def select(self, query: torch.Tensor, top_k: int = 1, penalty: str = "count") -> PoolSelection:
        """Select the ``top_k`` prompts minimising ``d * mass`` per sample (same rule in train and eval).

        Args:
            query: frozen queries ``(B, Dk)`` (compute them under ``no_grad``: only the keys get gradient).
            top_k: prompts per sample.
            penalty: ``"count"`` (``mass = count + 1``) or ``"none"``.

        Returns:
            A ``PoolSelection``; ``count`` is NOT modified (call ``update_count``).
        """
        if not 1 <= top_k <= self.pool_size:
            raise ValueError(f"top_k={top_k} outside [1, pool_size={self.pool_size}]")
        d = self.distance(query)  # (B, P)
        mass = self.mass(penalty)  # (P,)
        idx = (d.detach() * mass).topk(top_k, dim=1, largest=False).indices  # (B, k)
        return PoolSelection(idx=idx, distance=d, mass=mass)

    @torch.no_grad()
    def update_count(self, idx: torch.Tensor) -> None:
        """``count += bincount(idx, minlength=P)`` for selected indices of any shape."""
        self.count += torch.bincount(idx.flatten().to(self.count.device), minlength=self.pool_size)

    def tokens(self, idx: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-layer prompt tokens of the selected prompts: ``{layer: (B, k * length, D)}``.

        For ``top_k > 1`` the ``k`` prompts' tokens of a layer are concatenated in selection order.
        """
        sel = self.prompts[idx]  # (B, k, n_layers * length, D)
        b, k, _, d = sel.shape
        sel = sel.view(b, k, len(self.layers), self.length, d)
        return {layer: sel[:, :, i].reshape(b, k * self.length, d) for i, layer in enumerate(self.layers)}

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}, length={self.length}, layers={self.layers}"
