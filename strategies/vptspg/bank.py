"""VPTSP-G's prompt memory bank: per-class prompts and their optimizer state in a CPU store, the batch's classes in
a resident buffer parameter.

Reference (re-implemented from reading): Noahsark/ParameterEfficient-DML @ c7c9416 ``architectures/peft_vit.py``
(``p_prompts`` on the CPU, ``p_prompts_buffer`` of ``n_classes_batch`` rows in its own optimizer group,
``memory_state_bank``, ``bank_prompt_p_widthdraw`` before the forward pass, ``bank_optim_states_save`` and
``bank_prompt_p_save`` after the optimizer step; ``main.py`` switches it on for SOP / In-Shop). SGD (momentum) and
AdamW states are swapped (``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``, the shared ``step``).

Deviation (deliberate, so that the bank is a memory saving and not a different method): the reference leaves a class's
prompts and state untouched while the class is out of the batches, whereas resident prompts keep moving on zero
gradients (momentum, weight decay). Here a class coming back is first brought forward through the optimizer steps it
missed, with a zero gradient and the learning rate of each missed step (the same tensor operations as torch's SGD /
AdamW), so that its prompts and state equal those of resident training. Cost: one small update per missed step on the
batch's rows (on the device), about ``C / P`` steps per batch on average.

Limits: one optimizer per bank (a new optimizer, e.g. for a second training experience, would still be handed the
bank's state); a step that an fp16 GradScaler skips is counted as taken; plain SGD momentum and AdamW only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PromptBank", "BankState", "STATE_KEYS"]

STATE_KEYS = {"SGD": ("momentum_buffer",), "AdamW": ("exp_avg", "exp_avg_sq")}


def _kind(optimizer: torch.optim.Optimizer, group: dict) -> str:
    kind = type(optimizer).__name__
    if kind not in STATE_KEYS:
        raise ValueError(f"the prompt memory bank swaps SGD or AdamW state, not {kind}")
    if group.get("nesterov") or group.get("dampening") or group.get("maximize") or group.get("amsgrad"):
        raise ValueError("the prompt memory bank supports plain SGD momentum / AdamW (no nesterov, dampening, "
                         "maximize, amsgrad)")  # fmt: skip
    return kind


def _group(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> dict:
    for g in optimizer.param_groups:
        if any(p is param for p in g["params"]):
            return g
    raise ValueError("the bank's buffer parameter is not in the optimizer")


def _zero_grad_step(kind: str, p: torch.Tensor, st: dict, hp: dict, step: int) -> None:
    """One optimizer step with a zero gradient on ``p`` and its state ``st`` (torch's single-tensor operations)."""
    lr, wd = hp["lr"], hp["weight_decay"]
    if kind == "SGD":
        grad = torch.zeros_like(p).add(p, alpha=wd) if wd else torch.zeros_like(p)
        if hp["momentum"]:
            grad = st["momentum_buffer"].mul_(hp["momentum"]).add_(grad)
        p.add_(grad, alpha=-lr)
        return
    beta1, beta2 = hp["betas"]
    p.mul_(1 - lr * wd)
    zero = torch.zeros_like(p)
    st["exp_avg"].lerp_(zero, 1 - beta1)
    st["exp_avg_sq"].mul_(beta2).addcmul_(zero, zero, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (st["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(hp["eps"])
    p.addcdiv_(st["exp_avg"], denom, value=-step_size)


class PromptBank:
    """CPU store ``(depth, C, n, D)`` of class prompts and their per-class optimizer state.

    ``withdraw`` loads the batch's classes (brought up to date) into rows ``0..P-1`` of the resident buffer parameter
    and the optimizer's state for it; ``deposit`` (after the optimizer step) writes them back.

    Args:
        values: the initial class prompts ``(depth, C, n, D)``.
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values.detach().cpu().clone()
        self.state: dict[str, torch.Tensor] = {}  # per-class optimizer state, like ``values``
        self.seen = torch.zeros(values.shape[1], dtype=torch.long)  # optimizer steps applied to each class
        self.hparams: list[dict] = []  # the buffer group's hyper-parameters at each step taken
        self.classes: torch.Tensor | None = None  # the classes now resident, in buffer-row order

    @property
    def steps(self) -> int:
        return len(self.hparams)

    def resident(self, buffer: nn.Parameter, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, dict]:
        """Every class's prompts ``(depth, C, n, D)`` and per-class optimizer state as resident training would hold
        them now (CPU copies, absent classes brought up to date; the store is not changed)."""
        out = self.values.clone()
        kind = _kind(optimizer, _group(optimizer, buffer))
        state = {k: v.clone() for k, v in self.state.items()}
        self._catch_up(kind, out, state, self.seen.clone())
        return out, state

    def withdraw(self, buffer: nn.Parameter, optimizer: torch.optim.Optimizer, classes: torch.Tensor) -> None:
        """Load ``classes`` ``(P,)`` into the buffer's first ``P`` rows and their state into ``optimizer``."""
        kind = _kind(optimizer, _group(optimizer, buffer))
        classes = classes.detach().cpu().long()
        dev = buffer.device
        rows = self.values[:, classes].to(dev)
        state = {k: v[:, classes].to(dev) for k, v in self.state.items()}
        self._catch_up(kind, rows, state, self.seen[classes].to(dev))
        with torch.no_grad():
            buffer.zero_()
            buffer[:, : len(classes)] = rows.to(buffer.dtype)
        if self.steps:
            optimizer.state[buffer] = self._buffer_state(kind, buffer, state, len(classes))
        self.classes = classes

    def _buffer_state(self, kind: str, buffer: nn.Parameter, state: dict, n: int) -> dict:
        out = {}
        for k in STATE_KEYS[kind]:
            full = torch.zeros_like(buffer, memory_format=torch.preserve_format)
            full[:, :n] = state[k]
            out[k] = full
        if kind == "AdamW":
            out["step"] = torch.tensor(float(self.steps))
        return out

    def deposit(self, buffer: nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
        """After the optimizer step: the resident rows and their state back into the store."""
        if self.classes is None:
            raise RuntimeError("deposit without withdraw")
        group = _group(optimizer, buffer)
        kind, classes = _kind(optimizer, group), self.classes
        n, st = len(classes), optimizer.state.get(buffer, {})
        with torch.no_grad():
            self.values[:, classes] = buffer[:, :n].detach().cpu().to(self.values.dtype)
            for k in STATE_KEYS[kind]:
                if k in st:
                    self.state.setdefault(k, torch.zeros_like(self.values))[:, classes] = st[k][:, :n].cpu()
        keys = ("lr", "weight_decay", "momentum") if kind == "SGD" else ("lr", "weight_decay", "betas", "eps")
        self.hparams.append({k: group[k] for k in keys})
        self.seen[classes] = self.steps
        self.classes = None

    def _catch_up(self, kind: str, rows: torch.Tensor, state: dict, seen: torch.Tensor) -> None:
        """Bring ``rows`` ``(depth, P, n, D)`` and ``state`` from their ``seen`` steps to now (zero gradients)."""
        if not len(seen) or int(seen.min()) >= self.steps:
            return
        for k in STATE_KEYS[kind]:
            state.setdefault(k, torch.zeros_like(rows))
        for step in range(int(seen.min()) + 1, self.steps + 1):
            idx = torch.nonzero(seen < step).flatten()
            p, st = rows[:, idx], {k: v[:, idx] for k, v in state.items()}
            _zero_grad_step(kind, p, st, self.hparams[step - 1], step)
            rows[:, idx] = p
            for k, v in st.items():
                state[k][:, idx] = v


class BankState(nn.Module):
    """Carries a ``PromptBank`` in its module's ``state_dict`` (``_extra_state``: store, per-class state, steps), so
    checkpoints keep the class prompts; nothing here moves with ``.to(device)``."""

    def __init__(self, bank: PromptBank) -> None:
        super().__init__()
        self.bank = bank

    def get_extra_state(self) -> dict:
        b = self.bank
        return {"values": b.values, "state": dict(b.state), "seen": b.seen, "hparams": list(b.hparams)}

    def set_extra_state(self, state: dict) -> None:
        b = self.bank
        b.values = state["values"].detach().cpu().clone()
        b.state = {k: v.detach().cpu().clone() for k, v in state["state"].items()}
        b.seen, b.hparams, b.classes = state["seen"].clone(), list(state["hparams"]), None
