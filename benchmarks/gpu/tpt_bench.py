"""TPT on one GPU: samples/s of the fast batched path and of the straightforward per-sample path, same run.

Model: open_clip ``ViT-B-16-quickgelu`` with random weights (seed 0, logit scale 100 as OpenAI's CLIP), the first C
ImageNet class names (C = 1000), 64 random views per sample, one TPT step, the default precision (fp16 autocast
with the shared loss scaler on CUDA, as the reference azshue/TPT@63ecbace). The straightforward path
(``TPTConfig(fast=False)``: 77-token text, views re-encoded per step, one sample at a time) runs in its own process
through ``benchmarks/tpt_speed.py``'s worker; the fast path (``episode_batch`` samples tuned together) runs here on
the same weights and, for its first samples, the same views, so its predictions are compared with the
straightforward ones. Printed and written: samples/s of each, their ratio, the projected time for 50,000 samples,
matrix FLOPs per sample (counted from the model) and the fraction of the GPU's matrix throughput reached.

Without CUDA (``--device cpu`` or no GPU) the same measurement runs at reduced size: ctta's tiny CLIP, 20 classes,
16 views. Usage: ``python benchmarks/gpu/tpt_bench.py --json out/tpt.json``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from common import count_flops, device_info, matrix_dtype, measured_matmul_tflops, peak_tflops, write_json

FULL = dict(model="ViT-B-16-quickgelu", classes=1000, views=64, slow_samples=3, batch=32, reps=3)
REDUCED = dict(model="ctta-tiny-clip", classes=20, views=16, slow_samples=3, batch=8, reps=2)
N_TEST = 50_000


def _model(name: str, device: torch.device):
    """The model ``benchmarks/tpt_speed.py``'s worker builds (same seed, same logit scale)."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip(name, "")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    model = model.to(device)
    size = model.visual.image_size
    return model, tok, size[0] if isinstance(size, (tuple, list)) else size


def run(args) -> dict:
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    from benchmarks.tpt_speed import _clock, per_sample, run_path
    from ctta.data.classnames import imagenet_classnames

    device = torch.device(args.device)
    size_cfg = FULL if device.type == "cuda" and not args.reduced else REDUCED
    p = {**size_cfg, **{k: v for k, v in vars(args).items() if k in size_cfg and v is not None}}
    names = imagenet_classnames()[: p["classes"]]

    def timed(fn):  # the worker's clock: process CPU seconds on CPU (robust to other load), wall seconds on CUDA
        t0 = _clock(device)
        out = fn()
        return _clock(device) - t0, out

    # straightforward path: tpt_speed's worker in its own process (per-sample times, logits, selected views)
    spec = dict(model=p["model"], classes=p["classes"], views=p["views"], samples=p["slow_samples"],
                threads=args.threads, device=str(device), config={"fast": False})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        slow = run_path(spec, Path(tmp), "straightforward")
    slow_s = per_sample(slow)

    # fast path here: the same weights; the first samples are the worker's views (CPU generator, seed 1)
    model, tok, size = _model(p["model"], device)
    first = torch.randn(p["slow_samples"], p["views"], 3, size, size, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator(device=device).manual_seed(2)
    pool = torch.randn(p["batch"], p["views"], 3, size, size, device=device, generator=gen)
    n_cmp = min(p["slow_samples"], p["batch"])
    pool[:n_cmp] = first[:n_cmp].to(device)
    tuner = PromptTuner(model, tok, names, TPTConfig(episode_batch=p["batch"]))
    setup_s, _ = timed(tuner._artefacts)  # per class set: T0 and its retained text graph
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_s, out = timed(lambda: tuner.predict_many(pool))
    selected = tuner.last_selected
    times = [timed(lambda: tuner.predict_many(pool))[0] for _ in range(p["reps"])]
    fast_s = sorted(times)[len(times) // 2] / p["batch"]  # median batch time per sample
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    # agreement on the shared samples (rounding-level entropy ties may swap a selected view: reported, not hidden)
    ref = slow["logits"][:n_cmp]
    got = out[:n_cmp].float().cpu()
    agree = dict(
        samples=n_cmp,
        argmax_identical=int((got.argmax(-1) == ref.argmax(-1)).sum()),
        selected_identical=int(sum(torch.equal(a, b) for a, b in zip(selected[:n_cmp], slow["selected"][:n_cmp]))),
        max_abs_dlogit=float((got - ref).abs().max()),
    )

    # matrix FLOPs per sample, counted from the model (the fast path after its per-class-set set-up)
    fast_flops, _ = count_flops(lambda: tuner.predict_many(pool))
    fast_flops /= p["batch"]
    ref_tuner = PromptTuner(model, tok, names, TPTConfig(fast=False))
    slow_flops, _ = count_flops(lambda: ref_tuner.predict_many(first[:1].to(device)))

    mdt = matrix_dtype(device, tuner.amp_dtype())
    peak, peak_src = peak_tflops(device, mdt)
    measured = measured_matmul_tflops(device, mdt)
    paths = {}
    for name, s, flops in (("straightforward", slow_s, slow_flops), ("fast", fast_s, fast_flops)):
        tflops = flops / s / 1e12
        paths[name] = dict(
            samples_per_s=1 / s,
            s_per_sample=s,
            projected_min_50k=N_TEST * s / 60,
            tflop_per_sample=flops / 1e12,
            achieved_tflops=tflops,
            frac_of_peak=None if peak is None else tflops / peak,
            frac_of_measured_matmul=tflops / measured,
        )
    paths["straightforward"]["peak_mb"] = slow["peak_mb"]
    paths["fast"] |= dict(peak_mb=peak_mb, setup_s=setup_s, first_batch_s=warm_s, batch=p["batch"])
    return dict(
        benchmark="tpt",
        device=device_info(device),
        params=p,
        clock="wall seconds" if device.type == "cuda" else "process CPU seconds",
        matrix_dtype=mdt,
        peak_tflops=peak,
        peak_source=peak_src,
        measured_matmul_tflops=measured,
        paths=paths,
        speedup=slow_s / fast_s,
        agreement=agree,
        goal_under_20_min=paths["fast"]["projected_min_50k"] < 20,
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reduced", action="store_true", help="the CPU sizes on any device")
    ap.add_argument("--classes", type=int)
    ap.add_argument("--views", type=int)
    ap.add_argument("--batch", type=int, help="episode_batch of the fast path")
    ap.add_argument("--reps", type=int, help="timed batches of the fast path")
    ap.add_argument("--slow-samples", type=int, help="samples of the straightforward path (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args)
    if args.json:
        write_json(args.json, res)
    f, s = res["paths"]["fast"], res["paths"]["straightforward"]
    print(
        f"TPT {res['params']['model']} C={res['params']['classes']} views={res['params']['views']} "
        f"{res['matrix_dtype']}: fast {f['samples_per_s']:.2f}/s, straightforward {s['samples_per_s']:.3f}/s, "
        f"{res['speedup']:.1f}x; 50k samples in {f['projected_min_50k']:.1f} min (fast) vs "
        f"{s['projected_min_50k']:.1f} min; agreement {res['agreement']}"
    )
    return res


if __name__ == "__main__":
    main()
