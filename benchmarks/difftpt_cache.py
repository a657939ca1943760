"""DiffTPT: first run (diffusion views generated and cached) vs second run (views read from the disk cache).

Both runs build the same views and run the same DiffTPT tuning (``strategies.difftpt.make_tuner``) on identical
CLIP weights, in one process; the second run uses a fresh ``DiffusionViews`` over the same cache folder, so it loads
no pipeline at all. Printed: wall time of the view building and of the whole per-sample step, as first/cached ratios,
plus whether the predictions agree and how many images the second run generated (must be 0).

Pipelines: the tiny random image-variation pipeline (CPU, default) and, when its weights are present locally
(``--local-dir DIR`` or the Hugging Face cache), the real ``lambdalabs/sd-image-variations-diffusers`` v2.0
(on CUDA when available; ``--real-on-cpu`` to force the CPU, which takes minutes per image).

    python benchmarks/difftpt_cache.py            # tiny pipeline, 4 samples, 63 diffusion views, 50 steps
    python benchmarks/difftpt_cache.py --quick    # 2 samples, 8 views, 10 steps
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch
from ctta.strategies.difftpt import DiffTPTConfig, denormalize, make_tuner
from ctta.strategies.difftpt.diffusion import TINY_RANDOM, DiffusionConfig, DiffusionViews, load_pipeline

from ctta.backbones.clip import CLIPConfig, build_clip
from ctta.data.digits import DIGIT_NAMES, load_digits
from ctta.data.tta_views import make_views


def _samples(n: int, n_conv: int, res: int) -> tuple[torch.Tensor, list]:
    """Conventional views (n, 1 + n_conv, 3, res, res) of digits and the PIL sources of the diffusion views."""
    from torchvision.transforms.functional import to_pil_image

    _, test = load_digits(img_size=res)
    views = make_views([test.images[i] for i in range(n)], n_views=1 + n_conv, resolution=res, seed=0)
    return views, [to_pil_image(denormalize(v[0])) for v in views]


def _run(views, sources, dv: DiffusionViews, tuner, device) -> tuple[float, float, torch.Tensor]:
    """(views seconds, total seconds, logits (n, C)) for one pass over the samples."""
    t_views, logits = 0.0, []
    t0 = time.perf_counter()
    for x, src in zip(views, sources):
        t = time.perf_counter()
        diff = dv(src).to(x)  # (n_diff, 3, H, W)
        t_views += time.perf_counter() - t
        logits.append(tuner.predict(torch.cat([x, diff]).to(device)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    dv.flush()
    return t_views, time.perf_counter() - t0, torch.stack(logits)


def _warm_up(pipe, cfg: DiffusionConfig, tuner, views: torch.Tensor, device) -> None:
    """One untimed generation and tuning pass (kernel selection, lazy imports) outside the cache."""
    from ctta.strategies.difftpt.diffusion import ImageVariationGenerator

    gen = ImageVariationGenerator(pipe, replace(cfg, num_inference_steps=2, seed=0))
    gen.generate(gen.conditioning(torch.rand(3, 32, 32)), "warm-up", [0])
    diff = torch.zeros(tuner.cfg.n_diffusion_views, *views.shape[1:])  # (n_diff, 3, H, W)
    tuner.predict(torch.cat([views, diff]).to(device))


def bench(label: str, diff_cfg: DiffusionConfig, args, device: torch.device) -> None:
    torch.manual_seed(0)
    clip = build_clip(CLIPConfig(model="ctta-tiny-clip", pretrained="")).to(device)
    res = clip.image_size
    cfg = DiffTPTConfig(n_diffusion_views=args.views, tta_steps=4, diffusion=diff_cfg)
    tuner = make_tuner(clip.model, clip.tokenizer, DIGIT_NAMES, cfg)
    views, sources = _samples(args.samples, args.conv, res)
    t = time.perf_counter()
    pipe = load_pipeline(diff_cfg, device)
    t_load = time.perf_counter() - t
    _warm_up(pipe, diff_cfg, tuner, views[0], device)
    first = DiffusionViews(diff_cfg, n_views=args.views, view_size=res, device=device, pipeline=pipe)
    tv1, tt1, out1 = _run(views, sources, first, tuner, device)
    second = DiffusionViews(diff_cfg, n_views=args.views, view_size=res, device=device)  # loads nothing on hits
    tv2, tt2, out2 = _run(views, sources, second, tuner, device)
    n = args.samples
    print(
        f"\n{label}: {n} samples, {1 + args.conv} conventional + {args.views} diffusion views, "
        f"{diff_cfg.num_inference_steps} denoising steps, {diff_cfg.dtype}, {device}"
    )
    print(f"  pipeline load {t_load:.2f} s (first run only, not in the times below)")
    print(f"  views      first {tv1 / n:8.3f} s/sample   cached {tv2 / n:8.4f} s/sample   ratio {tv1 / tv2:8.1f}x")
    print(f"  per sample first {tt1 / n:8.3f} s/sample   cached {tt2 / n:8.4f} s/sample   ratio {tt1 / tt2:8.1f}x")
    same = bool(torch.equal(out1.argmax(-1), out2.argmax(-1)))
    print(
        f"  predictions identical: {same} (max |dlogits| {float((out1 - out2).abs().max()):.2e}); "
        f"images generated: first {first.generated}, second {second.generated}"
    )


def _real_config(args, cache: str) -> DiffusionConfig | None:
    """The real pipeline's config when its files are present locally (never downloads), else None."""
    from pathlib import Path

    cfg = DiffusionConfig(local_dir=args.local_dir, download=False, cache_dir=cache, chunk_size=args.chunk)
    if args.local_dir:
        found = (Path(args.local_dir).expanduser() / "model_index.json").is_file()
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(cfg.model, "model_index.json", revision=cfg.revision)
        found = isinstance(hit, str)
    if not found:
        print(f"\nreal pipeline skipped: {cfg.model} {cfg.revision} not found locally (pass --local-dir DIR)")
        return None
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--views", type=int, default=63, help="diffusion views per sample")
    ap.add_argument("--conv", type=int, default=64, help="conventional views per sample (besides the original)")
    ap.add_argument("--steps", type=int, default=50, help="denoising steps of the tiny pipeline")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="2 samples, 8 diffusion views, 10 steps")
    ap.add_argument("--local-dir", default="", help="folder holding the real SD image-variation pipeline")
    ap.add_argument("--real-on-cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.views, args.conv, args.steps = 2, 8, 8, 10
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = DiffusionConfig(
            model=TINY_RANDOM, num_inference_steps=args.steps, chunk_size=args.chunk, cache_dir=f"{tmp}/tiny"
        )
        bench("tiny random pipeline", tiny, args, torch.device("cpu"))
        real = _real_config(args, f"{tmp}/real")
        if real is not None:
            device = torch.device("cuda" if torch.cuda.is_available() and not args.real_on_cpu else "cpu")
            if device.type == "cpu" and not args.real_on_cpu:
                print("\nreal pipeline found but no CUDA device; pass --real-on-cpu to run it on the CPU (slow)")
                return
            bench("lambdalabs/sd-image-variations-diffusers v2.0", real, args, device)


if __name__ == "__main__":
    main()
