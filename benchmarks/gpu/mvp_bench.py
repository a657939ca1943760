"""MVP update throughput on one GPU, fp32 and bf16: ctta's update vs the straightforward reference, same run.

``benchmarks/mvp_throughput.py`` supplies both updates and the harness (``_setup``, ``_batches``, ``_incoming``):
ctta's update (shared embedding, key/value-only prompt tokens, closed-form GSF, query cache) and the reference
update re-implemented from moonjunyyy/Si-Blurry@c4024ce ``methods/mvp.py`` (separate query pass, prompts appended and
truncated after every block, GSF by one backward per sample). Both start from identical states and see the same
incoming batches (``iters`` updates each, a fresh input per update). Printed and written per precision: incoming
samples/s of each, the ratio, the largest relative loss difference, matrix FLOPs per update (counted from the
model) and the fraction of the GPU's matrix throughput reached. fp32 runs with PyTorch's default TF32 settings
(matrix products in plain fp32), so its ceiling is the fp32 rate; bf16 is autocast around the update.

ViT-B/16 (random weights) at batch 64 on CUDA; without CUDA the tiny ViT (32 px, depth 6) at batch 8.
Usage: ``python benchmarks/gpu/mvp_bench.py --json out/mvp.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from common import count_flops, device_info, matrix_dtype, measured_matmul_tflops, peak_tflops, write_json

FULL = dict(model="vitb", batch=64, iters=3, reps=3, classes=100)
REDUCED = dict(model="tiny", batch=8, iters=2, reps=2, classes=100)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def bench_precision(p: dict, device: torch.device, precision: str) -> dict:
    from ctta.strategies.mvp import QueryCache

    from benchmarks.mvp_throughput import _batches, _incoming, _setup, ours_update, reference_update

    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    spec, ours, ref, (opt_o, opt_r), seen = _setup(p["model"], p["classes"])
    ours.to(device), ref.to(device)  # parameters move in place: the optimisers keep them
    seen = seen.to(device)
    g, cache = torch.Generator().manual_seed(1), QueryCache()

    def ours_step(model, opt, cache, x, y, seen):
        with _autocast(device, dtype):
            return ours_update(model, opt, cache, x, y, seen)

    def ref_step(model, opt, x, y, seen):
        with _autocast(device, dtype):
            return reference_update(model, opt, x, y, seen)

    def incoming(*args):
        """``_incoming``'s wall seconds on CUDA (loss.item() synchronises every update); process CPU seconds on CPU,
        so other load on a shared machine does not skew the ratio."""
        t0 = time.process_time()
        seconds, losses = _incoming(*args)
        return (seconds if device.type == "cuda" else time.process_time() - t0), losses

    times_o, times_r, rel = [], [], 0.0
    for r in range(p["reps"] + 1):  # the first incoming batch is a warm-up
        xs, y = _batches(spec, p["batch"], p["iters"], False, g)
        xs, y = [x.to(device) for x in xs], y.to(device)
        to, lo = incoming(ours_step, ours, opt_o, xs, y, seen, cache)
        tr, lr_ = incoming(ref_step, ref, opt_r, xs, y, seen)
        rel = max(rel, *(abs(a - b) / abs(b) for a, b in zip(lo, lr_)))
        if r:
            times_o.append(to)
            times_r.append(tr)
    xs, y = _batches(spec, p["batch"], 1, False, g)
    x = xs[0].to(device)
    cache.clear()
    flops_o, _ = count_flops(lambda: ours_step(ours, opt_o, cache, x, y.to(device), seen))
    flops_r, _ = count_flops(lambda: ref_step(ref, opt_r, x, y.to(device), seen))
    mdt = matrix_dtype(device, dtype)
    peak, peak_src = peak_tflops(device, mdt)
    measured = measured_matmul_tflops(device, mdt)
    out = dict(precision=precision, matrix_dtype=mdt, peak_tflops=peak, peak_source=peak_src,
               measured_matmul_tflops=measured, max_rel_loss_diff=rel)  # fmt: skip
    for name, times, flops in (("ours", times_o, flops_o), ("reference", times_r, flops_r)):
        t = statistics.median(times)
        tflops = flops * p["iters"] / t / 1e12  # iters updates per incoming batch, each of `flops`
        out[name] = dict(
            samples_per_s=p["batch"] / t,
            updates_per_s=p["iters"] / t,
            tflop_per_update=flops / 1e12,
            achieved_tflops=tflops,
            frac_of_peak=None if peak is None else tflops / peak,
            frac_of_measured_matmul=tflops / measured,
        )
    out["speedup"] = out["ours"]["samples_per_s"] / out["reference"]["samples_per_s"]
    return out


def run(args) -> dict:
    device = torch.device(args.device)
    size_cfg = FULL if device.type == "cuda" and not args.reduced else REDUCED
    p = {**size_cfg, **{k: v for k, v in vars(args).items() if k in size_cfg and v is not None}}
    rows = [bench_precision(p, device, prec) for prec in args.precisions]
    clock = "wall seconds" if device.type == "cuda" else "process CPU seconds"
    return dict(benchmark="mvp", device=device_info(device), params=p, clock=clock, precisions=rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reduced", action="store_true", help="the CPU sizes on any device")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int)
    ap.add_argument("--iters", type=int, help="updates per incoming batch")
    ap.add_argument("--reps", type=int, help="timed incoming batches (after one warm-up)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args)
    if args.json:
        write_json(args.json, res)
    for r in res["precisions"]:
        print(
            f"MVP {res['params']['model']} B={res['params']['batch']} {r['precision']}: ours "
            f"{r['ours']['samples_per_s']:.1f}/s, reference {r['reference']['samples_per_s']:.1f}/s, "
            f"{r['speedup']:.2f}x, max rel loss diff {r['max_rel_loss_diff']:.1e}"
        )
    return res


if __name__ == "__main__":
    main()
