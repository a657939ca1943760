"""Small shared helpers: device resolution, autocast, seeding, RNG state, trainable-parameter selection."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA if available else CPU; otherwise ``torch.device(device)`` (checked to exist)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available; use device=cpu or auto")
    if (
        dev.type == "cuda"
        and dev.index is None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        dev = torch.device("cuda", torch.cuda.current_device())  # torchrun: this rank's GPU (LOCAL_RANK)
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None means plain fp32)."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {list(_PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device | str, precision: str = "auto"):
    """``torch.autocast`` for the device type, or a null context for fp32 (CPU default)."""
    device = resolve_device(device)
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed ``random``, numpy, torch (CPU and CUDA); optionally request deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (deduplicated, in registration order)."""
    return [p for p in module.parameters() if p.requires_grad]


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, numpy, random, CUDA when present), for resumable checkpoints."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
