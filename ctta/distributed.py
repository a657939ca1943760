"""torchrun / ``torch.distributed`` helpers: exact data-parallel online learning and sharded test-time adaptation.

The scheme (README "Scaling out"): every rank reads the same global stream in the same order and keeps the same
bookkeeping (exposed classes, replay memory, RNG, prompt-selection counts); each incoming update batch is cut into
``world`` contiguous shards and each rank runs the network on its own shard. Whatever the loss needs from the whole
batch is gathered, so every rank evaluates the loss of the GLOBAL batch; gradients are summed over ranks and every
rank takes the same optimiser step, so parameters stay identical and equal the one-process run up to float
summation order.

Gradient exactness: on rank ``r`` the gathered tensors carry the autograd graph only for rank ``r``'s own rows; the
loss is ``L(theta, z_r)``. Its gradient is ``dL/dz_r dz_r/dtheta + dL/dtheta|direct`` where the direct part (the loss
using parameters itself, e.g. the head in MVP's AFS logits or the keys in L_CVPT) is the same on every rank. Summing
over ranks would count the direct part ``world`` times, so ranks other than 0 subtract ``L(theta, z.detach())``
(direct part only). The sum of the per-rank gradients is then exactly the one-process gradient, for any loss.

Gradients are summed with one ``all_reduce`` over a flat buffer (parameters unused by every rank keep ``grad=None``,
as in one process, so Adam skips them the same way). The ``DistributedDataParallel`` wrapper is not used: ctta's
strategies call several sub-modules of the model per step (frozen query pass, prompted pass, head) rather than one
``model.forward``, which DDP's hooks need, and DDP averages where the exact scheme needs sums.

Backends: NCCL on CUDA, gloo on CPU. One process per GPU (``LOCAL_RANK`` picks the device).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "all_gather_cat",
    "all_reduce_grads",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "context",
    "detach_tree",
    "init_from_env",
    "is_main",
    "map_tensors",
    "require_episodic",
    "shard",
    "shard_bounds",
    "world_size",
]

_MAX_DIMS = 8


@dataclasses.dataclass(frozen=True)
class DistContext:
    """The process group this process belongs to (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """The current ``DistContext`` (world 1 when ``torch.distributed`` is not initialised)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def world_size() -> int:
    return context().world


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the process that prints and writes outputs."""
    return context().main


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), else return world 1.

    Args:
        device: the run's ``device`` setting: ``auto``/``cuda*`` with CUDA present -> NCCL and ``cuda:LOCAL_RANK``;
            otherwise gloo on CPU.
        timeout_s: collective timeout.

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 without ``RANK``/``MASTER_ADDR`` (not started by torchrun), or more ranks
            per node than GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if dist.is_initialized():
        return context()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {missing} unset: start multi-process runs with torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs visible: use "
                f"--nproc-per-node <= {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def _comm_device(t: torch.Tensor) -> torch.device:
    """NCCL needs CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous rows ``[lo, hi)`` of rank ``rank`` for ``n`` rows (the first ``n % world`` ranks get one more)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def shard(t: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """This rank's contiguous rows of ``t`` (all of ``t`` when not distributed)."""
    ctx = ctx or context()
    if not ctx.active:
        return t
    lo, hi = shard_bounds(len(t), ctx.rank, ctx.world)
    return t[lo:hi]


def all_gather_cat(t: torch.Tensor, live: bool = True) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order (shards may differ in length, even be empty).

    With ``live=True`` this rank's rows are ``t`` itself (autograd graph kept), the other ranks' rows are constants;
    see the module docstring for why that gives exact gradients. Without a process group ``t`` is returned.
    """
    ctx = context()
    if not ctx.active:
        return t
    if t.dim() > _MAX_DIMS:
        raise ValueError(f"all_gather_cat supports up to {_MAX_DIMS} dims, got {t.dim()}")
    dev = _comm_device(t)
    shape = torch.zeros(_MAX_DIMS + 1, dtype=torch.long, device=dev)
    shape[0] = t.dim()
    shape[1 : 1 + t.dim()] = torch.tensor(t.shape, dtype=torch.long)
    shapes = [torch.zeros_like(shape) for _ in range(ctx.world)]
    dist.all_gather(shapes, shape)
    shapes = [tuple(s[1 : 1 + int(s[0])].tolist()) for s in shapes]
    filled = [s for s in shapes if s and s[0] > 0]  # a rank with no rows may not know the trailing shape
    if not filled:
        return t
    if any(s[1:] != filled[0][1:] for s in filled):
        raise ValueError(f"all_gather_cat: trailing shapes differ across ranks: {shapes}")
    rows, trailing = max(s[0] for s in filled), filled[0][1:]
    send = t.detach()
    wire = torch.uint8 if send.dtype == torch.bool else send.dtype
    buf = torch.zeros((rows, *trailing), dtype=wire, device=dev)
    if len(send):
        buf[: len(send)] = send.to(device=dev, dtype=wire)
    recv = [torch.empty_like(buf) for _ in range(ctx.world)]
    dist.all_gather(recv, buf)
    parts = [r[: (s[0] if s else 0)].to(device=t.device, dtype=t.dtype) for r, s in zip(recv, shapes)]
    if live and len(t):
        parts[ctx.rank] = t
    return torch.cat(parts)


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum ``.grad`` over ranks in one flat ``all_reduce``; a parameter no rank produced a gradient for keeps None."""
    ctx = context()
    if not ctx.active:
        return
    params = list(params)
    if not params:
        return
    dev = _comm_device(params[0])
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=dev)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in live])
    flat = flat.to(dev)
    dist.all_reduce(flat)
    off = 0
    for p in live:
        n = p.numel()
        g = flat[off : off + n].view_as(p).to(device=p.device, dtype=p.dtype)
        off += n
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (no gradient); ``t`` itself when not distributed."""
    ctx = context()
    if not ctx.active:
        return t
    out = t.detach().to(_comm_device(t)).clone()
    dist.all_reduce(out)
    return out.to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; tensors moved to CPU first by the caller)."""
    ctx = context()
    if not ctx.active:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if context().active:
        dist.barrier()


def detach_tree(obj: Any) -> Any:
    """``obj`` with every tensor detached (dicts, lists, tuples and dataclasses are walked)."""
    return map_tensors(obj, lambda t: t.detach())


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside ``obj`` (dicts, lists, tuples, dataclass instances)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn) for f in
                                           dataclasses.fields(obj) if f.init})  # fmt: skip
    return obj


def require_episodic(name: str, episodic: bool) -> None:
    """Sharding test samples over ranks is exact only when every sample starts from the same state."""
    if context().active and not episodic:
        raise ValueError(
            f"{name}: continual (non-episodic) test-time adaptation is sequential over the stream and cannot be "
            f"sharded over {world_size()} processes; run it in one process or set episodic=true"
        )


def set_attr_path(root: Any, path: str, value: Any) -> None:
    """``root.a.b = value`` for ``path == "a.b"``."""
    *head, last = path.split(".")
    for name in head:
        root = getattr(root, name)
    setattr(root, last, value)
