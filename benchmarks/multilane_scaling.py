"""Inference cost of MULTI-LANE with 1..10 lanes relative to one plain ViT pass (FLOPs and wall-clock).

Reference figures (the paper's cost analysis, ViT-B/16 at 224 px, one image): plain ViT-B 35.1 GFLOPs; COCO setting
(S=20, P=20, L_p=5) +3.74 GFLOPs (10.6 % of a ViT-B pass) per added lane; VOC (S=10, P=10) +1.95 (5.5 %);
ToMe K=30 +1.62. ``coco_ref`` computes every lane query as the reference does; the default computes only the
lane-CLS query where drop-and-replace discards the other outputs (exact, fewer FLOPs). FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (2 x MACs; attention counted through the math SDPA backend, which
the counter sees as ``bmm``), on random weights. Wall-clock ratios are minima over interleaved repeats (robust to
load spikes on shared machines) measured in the same run, so they are comparable only to each other.

Usage::

    python benchmarks/multilane_scaling.py --quick          # a few minutes on a CPU
    python benchmarks/multilane_scaling.py --device cuda    # all settings, lanes 1..10, batch 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctta.strategies.multilane import MultiLaneModel  # noqa: E402

from ctta.backbones.vit import PromptedViT, create_vit  # noqa: E402
from ctta.utils import resolve_device  # noqa: E402

SETTINGS = {  # name -> MultiLaneModel options (the official COCO / VOC settings)
    "coco": dict(num_selectors=20, num_prompts=20, num_prompt_layers=5),
    "coco_ref": dict(num_selectors=20, num_prompts=20, num_prompt_layers=5, fast_cls_attention=False),
    "voc": dict(num_selectors=10, num_prompts=10, num_prompt_layers=5),
    "tome30": dict(summarizer="tome", tome_k=30, num_prompts=20, num_prompt_layers=5),
}
TINY = dict(img_size=32, patch_size=8, depth=6, embed_dim=48, num_heads=3)
MAX_LANES = 10


def backbone(kind: str, device: torch.device) -> tuple[PromptedViT, int]:
    """Random-weight ViT-B/16 at 224 px or the tiny test ViT at 32 px, with its input size."""
    if kind == "vitb":
        return PromptedViT(create_vit("vit_base_patch16_224", pretrained=False)).to(device), 224
    return PromptedViT(create_vit("vit_tiny_patch16_224", pretrained=False, **TINY)).to(device), 32


def lane_model(bb: PromptedViT, setting: str, n_lanes: int, device: torch.device) -> MultiLaneModel:
    """A MULTI-LANE model with ``n_lanes`` started lanes (10 classes each) of the named setting."""
    torch.manual_seed(0)
    m = MultiLaneModel(bb, 10 * MAX_LANES, MAX_LANES, **SETTINGS[setting]).to(device).eval()
    for t in range(n_lanes):
        m.start_task(t, range(10 * t, 10 * t + 10))
    return m


@torch.no_grad()
def gflops(fn, x: torch.Tensor) -> float:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn(x)
    return fc.get_total_flops() / 1e9 / x.shape[0]


@torch.no_grad()
def seconds(fn, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def flops_table(kind: str, settings: list[str], lanes: list[int], device: torch.device) -> None:
    bb, size = backbone(kind, device)
    x = torch.rand(1, 3, size, size, device=device)
    plain = gflops(bb.vit.forward_features, x)
    print(f"\n[{kind}] GFLOPs per image: plain ViT {plain:.3f}; MULTI-LANE / plain for each number of lanes")
    print(f"{'lanes':8s} " + " ".join(f"{n:>6d}" for n in lanes) + "   per added lane")
    for s in settings:
        vals = [gflops(lane_model(bb, s, n, device), x) for n in lanes]
        slope = (vals[-1] - vals[0]) / (lanes[-1] - lanes[0])
        ratios = " ".join(f"{v / plain:6.3f}" for v in vals)
        print(f"{s:8s} {ratios}   +{slope:.3f} GFLOPs = {100 * slope / plain:.1f} % of plain")


def time_table(kind: str, lanes: list[int], batch: int, repeats: int, device: torch.device) -> None:
    bb, size = backbone(kind, device)
    x = torch.rand(batch, 3, size, size, device=device)
    models = {n: lane_model(bb, "coco", n, device) for n in lanes}
    fns = {"plain": bb.vit.forward_features, **{n: models[n] for n in lanes}}
    for fn in fns.values():  # warm-up
        seconds(fn, x, device)
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so load changes hit every column alike
        for k, fn in fns.items():
            times[k].append(seconds(fn, x, device))
    plain = min(times["plain"])
    print(f"\n[{kind}] wall-clock, COCO setting, batch {batch}, {repeats} repeats, device {device}, "
          f"{torch.get_num_threads()} threads: plain ViT {plain * 1e3:.1f} ms")  # fmt: skip
    print("lanes  " + " ".join(f"{n:>6d}" for n in lanes))
    print("ratio  " + " ".join(f"{min(times[n]) / plain:6.3f}" for n in lanes))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="FLOPs at 1, 2, 5, 10 lanes; fewer timings")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    lanes = [1, 2, 5, MAX_LANES] if args.quick else list(range(1, MAX_LANES + 1))
    flops_table("vitb", list(SETTINGS), lanes, device)
    flops_table("tiny", ["coco", "coco_ref", "voc"], lanes, device)
    if args.quick:
        time_table("vitb", [1, 4, 8], batch=4, repeats=3, device=device)
        time_table("tiny", [1, 4, 8], batch=32, repeats=5, device=device)
    else:
        time_table("vitb", lanes, batch=8, repeats=5, device=device)
        time_table("tiny", lanes, batch=64, repeats=10, device=device)


if __name__ == "__main__":
    main()
