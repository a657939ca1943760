"""TPT per-sample time and peak memory: straightforward (reference) path vs ctta's fast path, same process family.

Both paths run ``strategies.tpt.PromptTuner`` on identical random-weight CLIP weights (open_clip
``ViT-B-16-quickgelu``, seed 0, logit scale set to OpenAI's 100) and identical fixed views (64 per sample, seeded),
over the first C ImageNet class names (C = 200: ImageNet-A's label space; C = 1000: ImageNet). Each path runs in its
own subprocess so its peak memory (RSS above the loaded model, or CUDA peak allocation) is its own. Printed: per-
sample seconds, speed-up ratio, peak memory, argmax agreement, max |delta logits| and selected-view agreement
against the straightforward path, and the time of encoding the views once (the floor of any exact method). With
random weights the views' entropies are nearly equal, so a rounding-level tie can swap one selected view (then
logits differ by ~1e-2 while the prediction usually stays). Paths:

- ``straightforward``: ``TPTConfig(fast=False)`` (77-token text, views re-encoded per step and for the prediction);
- ``fast``: the default fast path (length buckets, cached view features, T0 + one retained text forward at ctx0);
- ``jacobian`` (not with --quick): the 1-step Jacobian method; J's one-off cost is reported separately and
  amortised over the test set size (ImageNet-A 7,500 / ImageNet 50,000).

When the straightforward path would not fit in memory (1000 classes on a small CPU machine), it is skipped and
its time is extrapolated from the 200-class run (text cost scales with C; marked "est.").

Usage: ``python benchmarks/tpt_speed.py --quick`` (200 classes, 2 samples; a few minutes on 2 cores) or
``python benchmarks/tpt_speed.py --classes 200 1000 --samples 3 --jacobian``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _mem_available_mb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _clock(device) -> float:
    """CPU seconds of this process on CPU (robust to other processes sharing the cores), wall seconds on CUDA."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _worker(spec: dict, out_path: str) -> None:
    import torch
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    from ctta.backbones.clip import create_clip
    from ctta.data.classnames import imagenet_classnames

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model, _, tok = create_clip(spec["model"], "")
    with torch.no_grad():  # OpenAI CLIP's temperature (exp = 100) instead of the random init's 1/0.07
        model.logit_scale.fill_(math.log(100.0))
    model = model.to(device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(1)
    views = torch.randn(spec["samples"], spec["views"], 3, size, size, generator=gen)
    names = imagenet_classnames()[: spec["classes"]]
    tuner = PromptTuner(model, tok, names, TPTConfig(**spec["config"]))
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = _clock(device)
    if spec["config"].get("fast", True):
        tuner._artefacts()  # per class set: T0 and its retained graph (or J)
    setup_s = _clock(device) - t0
    times, logits, selected = [], [], []
    for v in views:
        t0 = _clock(device)
        logits.append(tuner.predict(v.to(device)).cpu())
        times.append(_clock(device) - t0)
        selected.append(tuner.last_selected[0])
    t0 = _clock(device)
    tuner.encode_views(views[0].to(device))  # the floor of any exact method: encoding the views once
    views_s = _clock(device) - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    torch.save(
        {
            "times": times,
            "setup_s": setup_s,
            "peak_mb": peak,
            "views_s": views_s,
            "logits": torch.stack(logits),
            "selected": torch.stack(selected),
        },
        out_path,
    )


def run_path(spec: dict, tmp: Path, tag: str) -> dict:
    out = tmp / f"{tag}.pt"
    proc = mp.get_context("spawn").Process(target=_worker, args=(spec, str(out)))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not out.exists():
        raise RuntimeError(f"{tag}: worker failed with exit code {proc.exitcode}")
    import torch

    return torch.load(out)


def per_sample(res: dict) -> float:
    t = res["times"]
    return sum(t[1:]) / len(t[1:]) if len(t) > 1 else t[0]  # skip the first (warm-up) sample when possible


def bench_classes(args, n_classes: int, tmp: Path, slow_200: dict | None) -> dict:
    base = dict(
        model=args.model,
        classes=n_classes,
        views=args.views,
        samples=args.samples,
        threads=args.threads,
        device=args.device,
    )
    results, notes = {}, {}
    need_mb = None if slow_200 is None else slow_200["peak_mb"] * n_classes / 200 * 1.2
    if need_mb is not None and need_mb > 0.8 * _mem_available_mb():
        notes["straightforward"] = f"skipped: needs ~{need_mb / 1024:.0f} GB, {_mem_available_mb() / 1024:.0f} GB free"
    else:
        results["straightforward"] = run_path({**base, "config": {"fast": False}}, tmp, f"slow{n_classes}")
    results["fast"] = run_path({**base, "config": {"text_grad": "backward"}}, tmp, f"fast{n_classes}")
    jac_gb = n_classes * 512 * 2048 * 4 / 2**30  # (C, E, n_ctx * D) fp32 for ViT-B/16
    if args.jacobian and jac_gb <= args.jacobian_max_gb:
        results["jacobian"] = run_path({**base, "config": {"text_grad": "jacobian"}}, tmp, f"jac{n_classes}")
    elif args.jacobian:
        notes["jacobian"] = f"skipped: J needs {jac_gb:.1f} GB > --jacobian-max-gb {args.jacobian_max_gb}"
    return {"results": results, "notes": notes}


def report(n_classes: int, out: dict, slow_200: dict | None, fast_200: dict | None) -> None:
    import torch

    res, notes = out["results"], out["notes"]
    slow = res.get("straightforward")
    if slow is not None:
        t_slow, est = per_sample(slow), ""
    else:  # extrapolate: the 65 view encodings are constant, the text part is linear in the number of classes
        img = fast_200["views_s"] * 65 / 64
        t_slow, est = img + (per_sample(slow_200) - img) * n_classes / 200, " (est.)"
    n_test = 7500 if n_classes <= 200 else 50000
    views_s = res["fast"]["views_s"]
    print(f"\n== {n_classes} classes, {out['views']} views, {out['samples']} samples, {out['device']} ==")
    print(
        f"encoding the {out['views']} views once: {views_s:.2f} s -> bound on any exact speed-up "
        f"{t_slow / views_s:.2f}x{est}"
    )
    print(f"{'path':16s} {'s/sample':>10s} {'speed-up':>9s} {'peak MB':>9s} {'setup s':>8s}  agreement")
    print("(seconds are process CPU seconds on CPU, so other load on the machine does not skew the ratios)")
    for name in ("straightforward", "fast", "jacobian"):
        if name not in res:
            if name in notes:
                shown = f"{t_slow:10.2f}{est}" if name == "straightforward" else f"{'-':>10s}"
                print(f"{name:16s} {shown}  {notes[name]}")
            continue
        r = res[name]
        t = per_sample(r)
        agree = ""
        if slow is not None and name != "straightforward":
            same = torch.equal(r["logits"].argmax(-1), slow["logits"].argmax(-1))
            diff = (r["logits"] - slow["logits"]).abs().max().item()
            sel = sum(torch.equal(a, b) for a, b in zip(r["selected"], slow["selected"]))
            agree = (
                f"argmax {'identical' if same else 'DIFFERENT'}, max|dlogits| {diff:.1e}, "
                f"selected views identical {sel}/{len(r['selected'])}"
            )
        print(f"{name:16s} {t:10.2f} {t_slow / t:8.2f}x {r['peak_mb']:9.0f} {r['setup_s']:8.1f}  {agree}")
        if name == "jacobian":
            amort = t + r["setup_s"] / n_test
            print(f"{'  amortised':16s} {amort:10.2f} {t_slow / amort:8.2f}x  (J cost spread over {n_test} samples)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200 classes, 2 samples, no Jacobian")
    p.add_argument("--classes", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--views", type=int, default=64)
    p.add_argument("--model", default="ViT-B-16-quickgelu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jacobian", action="store_true", help="also time the 1-step Jacobian method (slow set-up)")
    p.add_argument("--jacobian-max-gb", type=float, default=4.0, help="skip the Jacobian path when J is larger")
    p.add_argument("--json", default="", help="write the raw timings to this file")
    args = p.parse_args()
    if args.quick:
        args.classes, args.samples, args.jacobian = [200], 2, False
    if max(args.classes) > 200 and 200 not in args.classes:
        args.classes = [200, *args.classes]  # the 200-class run sizes the memory check and any extrapolation
    import tempfile

    all_out, slow_200, fast_200 = {}, None, None
    with tempfile.TemporaryDirectory() as tmp:
        for c in sorted(args.classes):
            out = bench_classes(args, c, Path(tmp), slow_200)
            out.update(views=args.views, samples=args.samples, device=args.device)
            if c == 200:
                slow_200, fast_200 = out["results"].get("straightforward"), out["results"]["fast"]
            report(c, out, slow_200, fast_200)
            all_out[c] = {
                k: {"s_per_sample": per_sample(v), "peak_mb": v["peak_mb"], "setup_s": v["setup_s"]}
                for k, v in out["results"].items()
            }
    if args.json:
        Path(args.json).write_text(json.dumps(all_out, indent=2))


if __name__ == "__main__":
    main()
