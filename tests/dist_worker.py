"""Worker for tests/test_distributed.py: one ctta run (one rank, or the single-process reference), recorded.

Importable by ``torch.multiprocessing`` spawn children (not a test module itself). ``run_ranks`` forks the ranks
where the platform can (Linux): a forked child reuses the parent's imports (torch, Avalanche, ctta: about 8 s of CPU
per spawned child) instead of importing them again; it still joins its own gloo group from the environment, as
under torchrun.
"""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from tests.helpers import Recorder, free_port

__all__ = ["Recorder", "rank_main", "run_ranks", "run_recorded"]


def run_recorded(cfg_path: str, overrides: list[str], out_dir: str) -> dict:
    """Run ``cfg_path`` with ``overrides``; returns losses, outputs, summary and the trainable state."""
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    cfg = load_config(cfg_path, [*overrides, f"log.out_dir={out_dir}"])
    ctx = prepare(cfg)
    rec = Recorder()
    ctx.strategy.plugins.append(rec)
    results = execute(ctx, verbose=False)
    model = ctx.strategy.model
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    state |= {n: b.detach().cpu().clone() for n, b in model.named_buffers()}
    return {"losses": rec.losses, "outputs": rec.output_tensor(), "summary": results["summary"], "state": state}


def rank_main(rank: int, world: int, port: int, cfg_path: str, overrides: list[str], out_dir: str, dump: str):
    """``torch.multiprocessing.spawn`` target: join a gloo group as torchrun would, run, save the record."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        rec = run_recorded(cfg_path, overrides, out_dir)
        torch.save(rec, f"{dump}.rank{rank}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world: int, cfg_path: str, overrides: list[str], out_dir: str, dump: str) -> None:
    """Run ``rank_main`` in ``world`` processes on a free port (forked where available, else spawned); each rank
    saves its record to ``{dump}.rank{r}``."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (world, free_port(), cfg_path, overrides, out_dir, dump)
    mp.start_processes(rank_main, args=args, nprocs=world, join=True, start_method=method)
