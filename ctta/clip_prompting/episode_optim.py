"""Per-sample context optimisation pieces for test-time prompt tuning of CLIP (TPT, DiffTPT).

Paper: TPT (Shu et al., NeurIPS 2022). Reference: azshue/TPT@63ecbace ``tpt_classification.py:test_time_tuning``
(per-sample AdamW reset, ``torch.cuda.amp.GradScaler``), re-implemented; no code copied.

- ``BatchedAdamW``: ``torch.optim.AdamW`` arithmetic (decoupled weight decay, bias corrections) over a stacked
  ``(B, ...)`` parameter holding B independent samples, with per-sample step counts and a per-sample "skip" mask.
  AdamW is elementwise, so each slice follows exactly the update a separate optimiser would make.
- ``LossScaler``: the state machine of ``torch.amp.GradScaler`` (x0.5 and reset on overflow, x2 after
  ``growth_interval`` clean steps) driven one sample-step at a time, so batched episodes can skip only the
  overflowing samples and keep the reference's stream-order semantics.
- ``text_jacobian``: ``J = d vec(T_hat) / d vec(ctx)`` at a fixed context, by reverse mode (one backward pass per
  output feature ``e``, over per-class context copies so every class keeps its own gradient). With one TPT step the
  gradient at ``ctx0`` of any loss of the normalised text features ``T_hat`` is ``J^T vec(dloss/dT_hat)``: exact by
  the chain rule, since J is only ever evaluated at ``ctx0``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BatchedAdamW", "LossScaler", "text_jacobian", "jacobian_bytes"]


class BatchedAdamW:
    """AdamW on a stacked parameter ``(B, ...)``: one independent optimiser state per leading slice.

    Args:
        param: the stacked tensor updated in place.
        lr, betas, eps, weight_decay: ``torch.optim.AdamW`` hyper-parameters (TPT: 5e-3, (0.9, 0.999), 1e-8, 0.01).
    """

    def __init__(
        self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01
    ) -> None:
        self.param = param
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), float(weight_decay)
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.steps = [0] * param.shape[0]

    def _per_sample(self, values: list[float]) -> torch.Tensor:
        shape = (len(values),) + (1,) * (self.param.dim() - 1)
        return torch.tensor(values, dtype=self.param.dtype, device=self.param.device).reshape(shape)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: list[bool] | None = None) -> None:
        """One AdamW update of every active slice with ``grad`` (same shape as the parameter)."""
        b1, b2 = self.betas
        active = [True] * len(self.steps) if active is None else list(active)
        if not any(active):
            return
        self.steps = [s + int(a) for s, a in zip(self.steps, active)]
        mask = self._per_sample([float(a) for a in active]).bool()
        step_size = self._per_sample([self.lr / (1 - b1**s) if s else 0.0 for s in self.steps])
        bc2_sqrt = self._per_sample([math.sqrt(1 - b2**s) if s else 1.0 for s in self.steps])
        p = self.param.mul(1 - self.lr * self.weight_decay)
        m = self.exp_avg.lerp(grad, 1 - b1)
        v = self.exp_avg_sq.mul(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        p = p - step_size * (m / denom)
        self.param.copy_(torch.where(mask, p, self.param))
        self.exp_avg.copy_(torch.where(mask, m, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(mask, v, self.exp_avg_sq))


class LossScaler:
    """``torch.amp.GradScaler``'s dynamic loss-scale rules, advanced one (sample, step) event at a time.

    Args:
        init_scale: initial scale (TPT: 1000).
        mode: ``"shared"`` (dynamic, one state for the whole run), ``"fixed"`` (constant scale, overflowing steps
            skipped), or ``"none"`` (scale 1, nothing skipped).
    """

    def __init__(
        self,
        init_scale: float = 1000.0,
        mode: str = "shared",
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if mode not in ("shared", "fixed", "none"):
            raise ValueError(f"grad_scaler mode must be shared|fixed|none, got {mode!r}")
        self.mode = mode
        self.scale = 1.0 if mode == "none" else float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.growth_tracker = 0

    @property
    def skips(self) -> bool:
        """Whether an overflowing step is skipped."""
        return self.mode != "none"

    def update(self, found_inf: bool) -> None:
        """Advance the state after one optimiser step (skipped when ``found_inf``)."""
        if self.mode != "shared":
            return
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0

    def forecast(self, n: int) -> list[float]:
        """Scales of the next ``n`` events assuming none overflows (the state is not changed)."""
        scale, tracker, out = self.scale, self.growth_tracker, []
        for _ in range(n):
            out.append(scale)
            if self.mode == "shared":
                tracker += 1
                if tracker == self.growth_interval:
                    scale, tracker = scale * self.growth_factor, 0
        return out

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker}


def jacobian_bytes(n_classes: int, embed_dim: int, n_ctx_params: int, dtype=torch.float32) -> int:
    """Memory of the text Jacobian ``(C, E, n_ctx * D)`` in bytes."""
    return n_classes * embed_dim * n_ctx_params * torch.empty((), dtype=dtype).element_size()


def text_jacobian(encoder, ctx0: torch.Tensor, dtype=torch.float32, chunk: int = 16) -> torch.Tensor:
    """Jacobian of the normalised text features w.r.t. the context at ``ctx0``: ``(C, E, n_ctx * D)``.

    One retained forward over per-class context copies, then ``E`` vector-Jacobian products (one per output
    feature, all classes at once), run ``chunk`` at a time as a batched backward.

    Args:
        encoder: a ``TunedContext`` (``forward(ctx, per_class=True, normalize=True)``).
        ctx0: ``(n_ctx, D)`` context at which J is taken.
        dtype: storage dtype of J.
        chunk: output features per batched backward (memory vs speed).
    """
    n_cls = encoder.n_classes
    ctx = ctx0.detach().expand(n_cls, *ctx0.shape).clone().requires_grad_(True)  # (C, n, D) per-class copies
    with torch.enable_grad():
        feats = encoder(ctx, per_class=True, normalize=True).float()  # (C, E)
        n_out = feats.shape[-1]
        jac = torch.empty(n_cls, n_out, ctx0.numel(), dtype=dtype, device=ctx0.device)
        eye = torch.eye(n_out, device=feats.device)
        for e0 in range(0, n_out, chunk):
            e1 = min(n_out, e0 + chunk)
            cot = eye[e0:e1, None, :].expand(e1 - e0, n_cls, n_out)  # (k, C, E) one-hot per output feature
            (g,) = torch.autograd.grad(feats, ctx, cot, retain_graph=True, is_grads_batched=True)  # (k, C, n, D)
            jac[:, e0:e1] = g.reshape(e1 - e0, n_cls, -1).transpose(0, 1).to(dtype)
    return jac
