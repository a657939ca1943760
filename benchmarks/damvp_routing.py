"""Cost of DAM-VP's routing and per-sample pixel prompts, measured against references in the same run.

Prints, per backbone (tiny ViT; ViT-B/16 at 224 px with random weights):

1. inference: routing pass + prompted forward (``DAMVPModel.dataset_logits``) / one plain forward
   (about 2 expected: two backbone passes per image);
2. training step with per-sample prompts (routing pass + prompted forward/backward + SGD step over K prompts)
   / the same step with ONE shared prompt and no routing (the ``diversity_adaptive=False`` ablation);
3. training step with the reference per-sample Python loop (``PadPromptBank.forward_loop``) / our vectorised
   gather (same losses and gradients, checked).

Timings of each pair are taken alternately in the same run (medians). Usage:
``python benchmarks/damvp_routing.py [--quick] [--device auto|cpu|cuda] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from ctta.strategies.damvp.model import DAMVPModel, DatasetAdapter, Featurizer, readout_indices
from ctta.strategies.damvp.pixel import PadPromptBank, PadPrompter, scaled_pad_width

from ctta.backbones.vit import ViTConfig, build_vit
from ctta.utils import resolve_device

MODELS = {
    "tiny-vit-32px": dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=6, embed_dim=48, num_heads=3),
    "vit-b16-224px": dict(model="vit_base_patch16_224"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(fa, fb, device: torch.device, reps: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall times (s) of ``fa()`` and ``fb()``, measured alternately (a, b, a, b, ...) after a warm-up."""
    for _ in range(warmup):
        fa(), fb()
    times: tuple[list, list] = ([], [])
    for _ in range(reps):
        for fn, out in ((fa, times[0]), (fb, times[1])):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def build(name: str, device: torch.device, batch: int, n_clusters: int, n_classes: int = 10):
    """A DAM-VP model on a random ViT with one dataset adapter of about ``n_clusters`` prompts, and a batch."""
    torch.manual_seed(0)
    vit = build_vit(ViTConfig(pretrained=False, **MODELS[name])).to(device)
    fz = Featurizer(vit, "cls")
    size = fz.image_size
    model = DAMVPModel(fz, PadPrompter(size, scaled_pad_width(size))).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, n_classes, (batch,), device=device)
    with torch.no_grad():
        feats = fz(x).float().cpu()
    protos = feats[torch.randperm(len(feats))[:n_clusters]]  # K prototypes taken from the batch (spread routing)
    order = torch.randperm(fz.dim)
    bank = PadPromptBank(len(protos), size, scaled_pad_width(size), init=model.meta_prompt)
    model.adapters["0"] = DatasetAdapter(bank, protos, range(n_classes), readout_indices(order, n_classes)).to(device)
    shared = DatasetAdapter(PadPromptBank(1, size, scaled_pad_width(size), init=model.meta_prompt), torch.zeros(0, 1),
                            range(n_classes), readout_indices(order, n_classes))  # fmt: skip
    model.adapters["1"] = shared.to(device)
    return model, x, y


def train_step(model: DAMVPModel, d: int, x, y, loop: bool = False) -> torch.Tensor:
    """One SGD step on dataset ``d``'s prompts; ``loop`` uses the reference per-sample prompt loop."""
    ad = model.adapter(d)
    opt = torch.optim.SGD([{"params": p.parameters()} for p in ad.bank.prompters], lr=1.0, momentum=0.9)
    idx = model.route(x, d)
    prompted = ad.bank.forward_loop(x, idx) if loop else ad.bank(x, idx)
    loss = F.cross_entropy(ad.logits(model.phi(prompted, d)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def check_exact(model: DAMVPModel, x, y) -> tuple[float, float]:
    """Max |difference| of the prompted images and of the prompt gradients, vectorised vs per-sample loop."""
    ad = model.adapter(0)
    idx = model.route(x, 0)
    fwd = (ad.bank(x, idx) - ad.bank.forward_loop(x, idx)).abs().max().item()
    grads = []
    for fn in (ad.bank, ad.bank.forward_loop):
        ad.bank.zero_grad(set_to_none=True)
        F.cross_entropy(ad.logits(model.phi(fn(x, idx), 0)), y).backward()
        grads.append([p.grad.clone() if p.grad is not None else None for p in ad.bank.parameters()])
    grad = 0.0
    for a, b in zip(*grads):
        if (a is None) != (b is None):
            raise AssertionError("vectorised and loop paths route gradients to different prompts")
        if a is not None:
            grad = max(grad, (a - b).abs().max().item())
    return fwd, grad


def run(name: str, device: torch.device, batch: int, reps: int, n_clusters: int) -> None:
    model, x, y = build(name, device, batch, n_clusters)
    k = len(model.adapter(0).bank)
    used = len(torch.unique(model.route(x, 0)))
    print(f"\n{name}: batch {batch}, K={k} prompts ({used} routed in the batch), device {device}")
    fwd, grad = check_exact(model, x, y)
    print(f"  vectorised vs per-sample loop: max |diff| prompted images {fwd:.1e}, prompt gradients {grad:.1e}")
    with torch.no_grad():
        t_routed, t_plain = compare(lambda: model.dataset_logits(x, 0), lambda: model.featurizer(x), device, reps)
    t_per_sample, t_shared = compare(
        lambda: train_step(model, 0, x, y), lambda: train_step(model, 1, x, y), device, reps
    )
    t_loop, t_vec = compare(lambda: train_step(model, 0, x, y, True), lambda: train_step(model, 0, x, y), device, reps)
    rows = [
        ("inference: routing + prompted forward / plain forward", t_routed, t_plain),
        ("train step: per-sample prompts (routing) / one shared prompt", t_per_sample, t_shared),
        ("train step: reference per-sample loop / our vectorised gather", t_loop, t_vec),
    ]
    for label, a, b in rows:
        print(f"  {label:64s} {a * 1e3:9.1f} ms / {b * 1e3:9.1f} ms = {a / b:5.2f}x")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute CPU run (small batches, few repetitions)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clusters", type=int, default=16, help="number of prompts K")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on shared machines)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if args.quick:
        run("tiny-vit-32px", device, 64, 15, args.clusters)
        run("vit-b16-224px", device, 4, 2, args.clusters)
    else:
        run("tiny-vit-32px", device, 128, 30, args.clusters)
        run("vit-b16-224px", device, 32 if device.type == "cpu" else 128, 10, args.clusters)


if __name__ == "__main__":
    main()
