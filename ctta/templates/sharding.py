"""Torchrun sharding for every ctta template: the one sharded forward, criterion and SGD update.

Under torchrun every rank reads the whole stream in the same order; each update batch is cut into ``world``
contiguous shards, each rank runs the network on its rows (``forward_local``), the per-sample tensors the loss
reads (``loss_inputs``) are gathered into the global batch, every rank evaluates the global loss, and the
gradients are summed over ranks (the exactness argument is in ``ctta.distributed``). Evaluation forwards are
sharded the same way and gathered in batch order. Without a process group all of this reduces to
``forward_local()`` and ``criterion()``.
"""

from __future__ import annotations

from typing import Any

import torch

from ctta.distributed import all_gather_cat, all_reduce_grads, context, detach_tree, map_tensors, set_attr_path, shard
from ctta.utils import trainable_parameters

__all__ = ["ShardedTraining"]


class _WholeStreamLoaders:
    """Under torchrun every rank reads the whole stream in order (ctta shards each batch itself), so Avalanche's
    automatic ``DistributedSampler`` is switched off."""

    def _obtain_common_dataloader_parameters(self, **kwargs: Any) -> dict[str, Any]:
        args = super()._obtain_common_dataloader_parameters(**kwargs)
        avalanche_loader = not self.is_training or hasattr(self.experience, "task_labels")  # else a torch DataLoader
        if context().active and avalanche_loader:
            args["distributed_sampling"] = False
        return args


class ShardedTraining(_WholeStreamLoaders):
    """Sharded forward / criterion / update for an Avalanche template (mix in before ``AvalancheSupervised``).

    A template implements ``forward_local()`` once (the network on ``self.mbatch``, which holds this rank's rows
    when distributed) and a strategy ``criterion()``; ``loss_inputs`` lists the per-sample outputs its ``criterion()``
    reads in training. Templates run one optimiser update with ``sgd_update()``.
    """

    _surrogate: torch.Tensor | None = None  # what backward() back-propagates in a distributed update
    mb_output_local: torch.Tensor | None = None  # this rank's rows of the last distributed training forward

    # ------------------------------------------------------------------ forward
    def forward(self) -> torch.Tensor:
        """``forward_local()``; under torchrun on this rank's rows, gathered in batch order.

        In training the gathered output is detached (the loss reads ``loss_inputs``, whose own rows keep the graph).
        """
        ctx = context()
        if not ctx.active:
            return self.forward_local()
        local = self.on_shard(self._forward_shard, ctx)
        if self.is_training:
            self.mb_output_local = local
            local = local.detach()
        return all_gather_cat(local, live=False)

    def _forward_shard(self) -> torch.Tensor:
        if not self.is_training and not len(self.mb_x):  # more ranks than evaluation rows
            return torch.zeros(0, device=self.device)
        return self.forward_local()

    def on_shard(self, fn, ctx):
        """``fn()`` with ``self.mbatch`` replaced by this rank's contiguous rows (restored afterwards)."""
        full = self.mbatch
        self.mbatch = [shard(t, ctx) for t in full]
        try:
            return fn()
        finally:
            self.mbatch = full

    # ------------------------------------------------------------------ criterion
    def loss_inputs(self) -> dict[str, Any]:
        """Per-sample outputs ``criterion()`` reads in training, by attribute path from the strategy.

        Under torchrun they are gathered over the global update batch (rank order = batch order) before the loss.
        """
        return {"mb_output": self.mb_output_local}

    def gather_loss_inputs(self, inputs: dict[str, Any], gather) -> dict[str, Any]:
        """Global-batch versions of ``inputs``: ``gather(t)`` concatenates a per-sample tensor over ranks.

        The default gathers every tensor (dataclasses and containers are walked); override for values that are
        not per-sample (e.g. pool-level statistics) or for bookkeeping that must see the global batch.
        """
        return {k: map_tensors(v, gather) for k, v in inputs.items()}

    def _set_loss_inputs(self, values: dict[str, Any]) -> None:
        for path, v in values.items():
            set_attr_path(self, path, v)

    def distributed_loss(self, ctx) -> torch.Tensor:
        """The global batch's loss (detached; for logging); its surrogate is kept for ``backward()``.

        Summed over ranks the surrogates' gradients equal the one-process gradient (``ctta.distributed``).
        """
        cache: dict[int, torch.Tensor] = {}

        def gather(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in cache:
                cache[id(t)] = all_gather_cat(t)
            return cache[id(t)]

        glob = self.gather_loss_inputs(self.loss_inputs(), gather)
        self._set_loss_inputs(glob)
        value = surrogate = self.criterion()
        if not ctx.main:  # remove the direct (parameter-only) gradient part: rank 0 contributes it once
            self._set_loss_inputs(detach_tree(glob))
            surrogate = value - self.criterion()
            self._set_loss_inputs(glob)
        self._surrogate = surrogate
        return value.detach()

    def backward(self) -> None:
        surrogate, self._surrogate = self._surrogate, None
        if surrogate is None:
            return super().backward()
        surrogate.backward()
        all_reduce_grads(trainable_parameters(self.model))

    # ------------------------------------------------------------------ one update
    def sgd_update(self, **kwargs: Any) -> None:
        """One optimiser update on ``self.mbatch`` with Avalanche's callbacks (``SGDUpdate``'s iteration body); under
        torchrun the loss is the global batch's (``distributed_loss``)."""
        self.optimizer.zero_grad()
        self.loss = self._make_empty_loss()
        self._before_forward(**kwargs)
        self.mb_output = self.forward()
        self._after_forward(**kwargs)
        ctx = context()
        self.loss += self.distributed_loss(ctx) if ctx.active else self.criterion()
        self._before_backward(**kwargs)
        self.backward()
        self._after_backward(**kwargs)
        self._before_update(**kwargs)
        self.optimizer_step()
        self._after_update(**kwargs)
