"""Test-time adaptation inside Avalanche's ``eval()``: adapt on each test mini-batch, then predict.

Avalanche runs ``eval()`` under ``no_grad``; adaptation runs under ``enable_grad``. Episodic mode (the setting of
TPT, Shu et al., NeurIPS 2022, arXiv 2209.07511) restores the saved state after every mini-batch; continual mode keeps
adapting. Under torchrun the samples of a mini-batch are sharded over ranks (exact in episodic mode only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ctta import distributed
from ctta.templates.base import AvalancheSupervised, StrategyBase, restrict_to_trainable, split_arguments
from ctta.templates.sharding import ShardedTraining
from ctta.utils import trainable_parameters

__all__ = ["TestTimeTemplate"]


class TestTimeTemplate(StrategyBase, ShardedTraining, AvalancheSupervised):
    """Test-time adaptation inside ``eval()``: ``adapt_and_predict(mb_x)`` runs under ``enable_grad``.

    Episodic mode (the papers' setting) restores ``state_to_reset()`` after every mini-batch; continual mode keeps
    adapting. The initial state is captured on the first ``eval()`` call (or by ``snapshot()``). ``train()`` does
    nothing (there is no training phase).
    """

    __test__ = False  # not a pytest test class
    distributed_ok = True  # torchrun: samples sharded over ranks (episodic mode)
    adapts_in_eval = True  # the runner evaluates the test stream; train() does nothing
    train_epochs_refusal = "test-time adaptation has no training phase (it adapts inside eval())"

    def __init__(
        self, *, model: nn.Module, optimizer=None, episodic: bool = True, precision: str = "auto", **kwargs: Any
    ) -> None:
        template, rest = split_arguments(kwargs)
        self.check_arguments(optimizer, template.get("criterion"), template.get("train_epochs"))
        if rest:
            self.resolve_config(None, rest, ("episodic", "precision"))  # raises TypeError naming the valid ones
        if optimizer is None:
            params = trainable_parameters(model) or [nn.Parameter(torch.zeros(()))]
            optimizer = torch.optim.SGD(params, lr=0.0)
        template.setdefault("eval_mb_size", 1)
        template["train_mb_size"] = template.get("train_mb_size") or template["eval_mb_size"] or 1
        template["train_epochs"] = 1
        super().__init__(model=model, optimizer=optimizer, **template)
        self.episodic = episodic
        self.precision = precision
        self._initial_state: dict[str, Any] | None = None

    def adapt_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on ``x`` and return ``(B, C)`` logits. Implemented by strategies."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt_and_predict()")

    def state_to_reset(self) -> dict[str, Any]:
        """What episodic mode restores: trainable parameters (cloned) and the optimiser state."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return {"params": params, "optimizer": _clone_state(self.optimizer.state_dict())}

    def load_reset_state(self, state: dict[str, Any]) -> None:
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state["params"].items():
                named[n].copy_(v)
        self.optimizer.load_state_dict(_clone_state(state["optimizer"]))

    def snapshot(self) -> None:
        """Capture the current state as the one episodic mode returns to."""
        self._initial_state = self.state_to_reset()

    def reset(self) -> None:
        if self._initial_state is None:
            raise RuntimeError("reset() before any snapshot(); call snapshot() or eval() first")
        self.load_reset_state(self._initial_state)

    def eval(self, exp_list, **kwargs: Any):
        if self._initial_state is None:
            self.snapshot()
        ctx = distributed.context()
        if not ctx.active:
            return super().eval(exp_list, **kwargs)
        distributed.require_episodic(type(self).__name__, self.episodic)
        per_rank, self.eval_mb_size = self.eval_mb_size, self.eval_mb_size * ctx.world  # one shard per rank
        try:
            return super().eval(exp_list, **kwargs)
        finally:
            self.eval_mb_size = per_rank

    def forward_local(self) -> torch.Tensor:
        """Adapt on this rank's samples and predict (episodic: samples are independent, so sharding is exact)."""
        with torch.enable_grad():
            out = self.adapt_and_predict(self.mb_x)
        if self.episodic:
            self.reset()
        return out.detach().float()

    def make_optimizer(self, **kwargs: Any) -> None:
        restrict_to_trainable(self.optimizer, self.model, reset_state=False)

    def train(self, experiences, eval_streams=None, **kwargs: Any):
        """No training phase in test-time adaptation: adaptation happens in ``eval()``. Returns last metrics."""
        return self.evaluator.get_last_metrics()


def _clone_state(sd: Any) -> Any:
    if isinstance(sd, torch.Tensor):
        return sd.detach().clone()
    if isinstance(sd, dict):
        return {k: _clone_state(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [_clone_state(v) for v in sd]
    return sd
