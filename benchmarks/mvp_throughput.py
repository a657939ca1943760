"""Throughput and peak memory of ctta's MVP update vs a straightforward implementation of the reference update.

Both implementations start from identical parameters, optimiser state and prompt counts and process the same
incoming batches (``online_iters`` updates each, with a different deterministic "augmentation" per update so
nothing can be reused across updates unless ``--static`` is given). Printed per model: incoming samples/s of
each, the speed-up, peak extra memory of one incoming batch, and the largest relative loss difference (the two
must compute the same losses).

The reference follows the official update (moonjunyyy/Si-Blurry@c4024ce ``methods/mvp.py``,
re-implemented): a separate no-grad query pass through timm's blocks, a prompted
pass that appends the prompt tokens and truncates after every block, and GSF by one backward per sample through a
deep-copied head. Ours is the code path of ``ctta.strategies.mvp.MVP`` (shared embedding, key/value-only prompt
tokens, closed-form GSF, query cache).

Usage: ``python benchmarks/mvp_throughput.py [--quick] [--models tiny vitb] [--threads 1] [--static]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctta.strategies.mvp import MVPConfig, MVPModel, QueryCache, mvp_loss  # noqa: E402

from ctta.backbones.vit import PromptedViT, create_vit  # noqa: E402

MODELS = {
    "tiny": dict(
        name="vit_tiny_patch16_224", kwargs=dict(img_size=32, patch_size=8, embed_dim=48, depth=6, num_heads=3), img=32
    ),
    "vitb": dict(name="vit_base_patch16_224", kwargs={}, img=224),
}


# ----------------------------------------------------------------------------------------------------------
# The straightforward reference update
# ----------------------------------------------------------------------------------------------------------
def reference_forward(model: MVPModel, x: torch.Tensor):
    """Separate query pass, count-penalised top-1, prompts appended and truncated after every block."""
    vit, cfg, mvp = model.backbone.vit, model.cfg, model.mvp
    with torch.no_grad():
        q = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for blk in vit.blocks[: len(vit.blocks) - 1]:
            q = blk(q)
        q = q[:, 0]
    keys, prompts = mvp.pool.keys, mvp.pool.prompts
    d = 1 - F.cosine_similarity(q.unsqueeze(1), keys.unsqueeze(0), dim=-1)  # (B, P)
    mass = (mvp.pool.count + 1).float()
    idx = (d * mass).topk(1, dim=1, largest=False).indices[:, 0]  # (B,)
    mvp.pool.count += torch.bincount(idx, minlength=len(keys))
    t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    n, g, e = t.shape[1], mvp.g_prompts.expand(len(x), -1, -1), prompts[idx]
    for i, blk in enumerate(vit.blocks):
        extra = []
        if i in cfg.g_layers:
            j = cfg.g_layers.index(i)
            extra.append(g[:, j * cfg.g_length : (j + 1) * cfg.g_length])
        if i in cfg.e_layers:
            j = cfg.e_layers.index(i)
            extra.append(e[:, j * cfg.e_length : (j + 1) * cfg.e_length])
        t = blk(torch.cat([t, *extra], dim=1))[:, :n] if extra else blk(t)
    f = vit.norm(t)[:, 0]
    return f, idx, d, mass


def reference_gsf_ignore(head, f, mu, seen, y):
    """One backward per sample through a copy of the head (the official GSF computation)."""
    head_copy = copy.deepcopy(head)
    z_bar = head_copy(f.detach()) * mu.detach() + seen
    grads = []
    for i in range(len(y)):
        head_copy.zero_grad()
        F.cross_entropy(z_bar[i : i + 1], y[i : i + 1]).backward(retain_graph=True)
        grads.append(head_copy.weight.grad[y[i]].clone())
    head_copy.zero_grad()
    F.cross_entropy(z_bar, y).backward()
    big_g = head_copy.weight.grad
    return torch.stack([1 - F.cosine_similarity(grads[i], big_g[y[i]], dim=0) for i in range(len(y))])


def reference_update(model: MVPModel, opt, x, y, seen) -> float:
    cfg, mvp = model.cfg, model.mvp
    f, idx, d, mass = reference_forward(model, x)
    head = mvp.head
    mu = 2 * torch.sigmoid(mvp.mask[idx])
    cps = 1 - F.cosine_similarity(head.weight[y].detach(), f.detach(), dim=-1) + cfg.margin
    z_loss = F.linear(f / cps[:, None], head.weight, head.bias) * mu + seen
    ce = F.cross_entropy(z_loss, y)
    ign = reference_gsf_ignore(head, f, mu, seen, y)
    loss = ((1 - cfg.alpha) * ce + cfg.alpha * ign.pow(cfg.gamma) * ce).mean()
    keys = mvp.pool.keys
    kd = 1 - F.cosine_similarity(keys.unsqueeze(1), keys.unsqueeze(0), dim=-1)
    m, d_sel = mass[idx], d[torch.arange(len(idx)), idx]
    a = torch.exp(kd[idx].unsqueeze(1) / m.view(1, -1, 1)).mean()
    dd = torch.exp(d_sel.view(1, -1) / m.view(-1, 1)).mean()
    loss = loss - torch.log(a / (dd + a) + 1e-6)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def ours_update(model: MVPModel, opt, cache: QueryCache, x, y, seen) -> float:
    t0, q = cache(model, x)
    out = model(None, update_count=True, tokens=t0, query=q)
    loss = mvp_loss(model, out, y, seen)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


# ----------------------------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _incoming(update, model, opt, xs, y, seen, cache=None):
    """One incoming batch: ``len(xs)`` updates; returns (seconds, losses)."""
    t = time.perf_counter()
    if cache is not None:
        cache.clear()
        losses = [update(model, opt, cache, x, y, seen) for x in xs]
    else:
        losses = [update(model, opt, x, y, seen) for x in xs]
    return time.perf_counter() - t, losses


def _setup(key: str, n_classes: int):
    """Frozen random backbone, two identical MVP states (ours / reference) with their Adam optimisers."""
    spec = MODELS[key]
    torch.manual_seed(0)
    backbone = PromptedViT(create_vit(spec["name"], pretrained=False, **spec["kwargs"]))
    ours = MVPModel(backbone, n_classes, MVPConfig())
    ref = copy.deepcopy(ours)
    ref.backbone = ours.backbone  # one frozen backbone, two copies of the trainable state
    opts = [torch.optim.Adam(list(m.mvp.parameters()), lr=5e-3) for m in (ours, ref)]
    seen = torch.full((n_classes,), float("-inf"))
    seen[:20] = 0.0  # 20 exposed classes
    return spec, ours, ref, opts, seen


def _batches(spec, batch: int, iters: int, static: bool, g: torch.Generator):
    x = torch.randn(batch, 3, spec["img"], spec["img"], generator=g)
    y = torch.randint(0, 20, (batch,), generator=g)
    xs = [x] * iters if static else [x.roll(s, dims=-1) for s in range(iters)]  # fresh input per update
    return xs, y


def memory_child(impl: str, key: str, batch: int, iters: int, n_classes: int, static: bool) -> None:
    """Print the peak RSS growth (MiB) of one incoming batch of ``impl`` in this fresh process."""
    spec, ours, ref, (opt_o, opt_r), seen = _setup(key, n_classes)
    xs, y = _batches(spec, batch, iters, static, torch.Generator().manual_seed(1))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS)
    base = _rss_kib("VmRSS")
    if impl == "ours":
        _incoming(ours_update, ours, opt_o, xs, y, seen, QueryCache())
    else:
        _incoming(reference_update, ref, opt_r, xs, y, seen)
    print(f"PEAK_MIB {(_rss_kib('VmHWM') - base) / 1024:.1f}")


def _peak_mib(impl: str, key: str, batch: int, iters: int, n_classes: int, static: bool) -> float | None:
    """Run ``memory_child`` in a fresh interpreter (fixed mmap threshold so freed tensors leave the RSS)."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        impl,
        "--models",
        key,
        "--batch",
        str(batch),
        "--iters",
        str(iters),
        "--classes",
        str(n_classes),
        "--threads",
        str(torch.get_num_threads()),
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run(cmd + (["--static"] if static else []), capture_output=True, text=True, env=env)
    peak = [ln for ln in res.stdout.splitlines() if ln.startswith("PEAK_MIB")]
    return float(peak[0].split()[1]) if res.returncode == 0 and peak else None


def bench_model(key: str, batch: int, reps: int, iters: int, n_classes: int, static: bool, warmup: bool) -> dict:
    spec, ours, ref, (opt_o, opt_r), seen = _setup(key, n_classes)
    g, cache = torch.Generator().manual_seed(1), QueryCache()
    times_o, times_r, rel = [], [], 0.0
    for r in range(reps + int(warmup)):
        xs, y = _batches(spec, batch, iters, static, g)
        to, lo = _incoming(ours_update, ours, opt_o, xs, y, seen, cache)
        tr, lr_ = _incoming(reference_update, ref, opt_r, xs, y, seen)
        rel = max(rel, *(abs(a - b) / abs(b) for a, b in zip(lo, lr_)))
        if r or not warmup:
            times_o.append(to)
            times_r.append(tr)
    to, tr = statistics.median(times_o), statistics.median(times_r)
    mem = {impl: _peak_mib(impl, key, batch, iters, n_classes, static) for impl in ("ours", "ref")}
    return dict(
        model=key,
        batch=batch,
        ours_sps=batch / to,
        ref_sps=batch / tr,
        speedup=tr / to,
        mem_ours=mem["ours"],
        mem_ref=mem["ref"],
        max_rel_loss_diff=rel,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "vitb"], choices=sorted(MODELS))
    ap.add_argument("--quick", action="store_true", help="ViT-B batch 2, one timed batch, no warm-up (~2 min)")
    ap.add_argument("--batch", type=int, default=None, help="incoming batch size (default 64; --quick: vitb 2)")
    ap.add_argument("--reps", type=int, default=None, help="timed incoming batches (default 5; --quick: 3 / 1)")
    ap.add_argument("--iters", type=int, default=3, help="updates per incoming batch")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--static", action="store_true", help="identical input at every update (query cache applies)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.models[0], args.batch, args.iters, args.classes, args.static)
    print(
        f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
        f"{'static' if args.static else 'fresh'} input per update, {args.iters} updates per incoming batch"
    )
    print(
        f"{'model':6} {'B':>4} {'ours/s':>9} {'ref/s':>9} {'speedup':>8} {'peakMiB ours':>13} {'ref':>8} "
        f"{'ref/ours':>8}  max rel loss diff"
    )
    for key in args.models:
        big = key == "vitb"
        batch = args.batch or (2 if big and args.quick else 64)
        reps = args.reps or ((1 if big else 3) if args.quick else 5)
        r = bench_model(key, batch, reps, args.iters, args.classes, args.static, warmup=not (big and args.quick))
        mo, mr = r["mem_ours"], r["mem_ref"]
        mem = f"{mo:13.1f} {mr:8.1f} {mr / mo:8.2f}" if mo and mr else f"{'n/a':>13} {'n/a':>8} {'':>8}"
        print(
            f"{key:6} {batch:4d} {r['ours_sps']:9.2f} {r['ref_sps']:9.2f} {r['speedup']:7.2f}x {mem}"
            f"  {r['max_rel_loss_diff']:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
