"""Multi-process scaling of a ctta run: one process vs ``torchrun --nproc-per-node N``, same config, same run.

Each run is a separate ``ctta run`` (the multi-process one under torchrun, gloo on CPU or NCCL on GPUs); the stream
time is read from each run's ``results.json`` (``timings.stream_s``, set-up excluded) and printed as a ratio, with
the final metrics of both runs side by side (they must be equal: the sharding is exact).

On CPU every process gets ``--threads`` threads, so N processes use N times the cores of the single process: the
ratio is the speed-up from N workers (ideal N). On GPUs use ``--device cuda`` (one GPU per process).

Usage::

    python benchmarks/distributed_scaling.py                       # MVP smoke config, 2 CPU processes
    python benchmarks/distributed_scaling.py --config configs/smoke/tpt_digits.yaml --set scenario.max_samples=64
    python benchmarks/distributed_scaling.py --nproc 4 --device cuda --config configs/mvp_siblurry.yaml \
        --set scenario.dataset=cifar100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# MVP on Si-Blurry digits with a wider random ViT (depth 6, dim 192) so the per-update compute is not tiny.
DEFAULT_SET = [
    "backbone.embed_dim=192",
    "backbone.num_heads=3",
    "strategy.batch_size=64",
    "strategy.online_iters=3",
    "strategy.eval_every=600",
]


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "smoke" / "mvp_digits.yaml"))
    p.add_argument("--set", nargs="*", default=None, help="config overrides (default: a wider MVP smoke run)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="", help="write the measurements to this file")
    args = p.parse_args()
    overrides = DEFAULT_SET if args.set is None else args.set
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = [*overrides, f"device={args.device}", "log.progress=false", "log.plot=false"]
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        _run([sys.executable, "-m", "ctta", "run", args.config, *common, f"log.out_dir={one}"], env)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
        _run([*torchrun, "-m", "ctta", "run", args.config, *common, f"log.out_dir={many}"], env)
        r1 = json.loads((one / "results.json").read_text())
        rn = json.loads((many / "results.json").read_text())
    t1, tn = r1["timings"]["stream_s"], rn["timings"]["stream_s"]
    print(f"config {args.config} {' '.join(overrides)}")
    print(f"device {args.device}, {args.threads} thread(s) per process, cores on this machine: {os.cpu_count()}")
    print(f"{'processes':>10s} {'stream s':>9s} {'speed-up':>9s} {'efficiency':>10s}")
    print(f"{1:10d} {t1:9.2f} {1.0:8.2f}x {1.0:10.2f}")
    print(f"{args.nproc:10d} {tn:9.2f} {t1 / tn:8.2f}x {t1 / tn / args.nproc:10.2f}")
    same = all(abs(rn["summary"].get(k, float("nan")) - v) <= 1e-6 for k, v in r1["summary"].items())
    print(f"final metrics {'identical' if same else 'DIFFERENT'}: 1 process {r1['summary']}")
    if not same:
        print(f"                          {args.nproc} processes {rn['summary']}")
    if args.json:
        out = {"config": args.config, "overrides": overrides, "nproc": args.nproc, "threads": args.threads,
               "stream_s": {"1": t1, str(args.nproc): tn}, "speedup": t1 / tn, "metrics_identical": same,
               "summary": {"1": r1["summary"], str(args.nproc): rn["summary"]}}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
