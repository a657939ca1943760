"""CoOp and MaPLe training step: ctta's prompt-learner core vs a straightforward 77-token implementation.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134), MaPLe (Khattak et al., CVPR 2023, arXiv 2210.03117).
The reference step follows the official code (KaiyangZhou/CoOp@ff61507 ``trainers/coop.py``,
muzairkhattak/multimodal-prompt-learning@69bce21 ``trainers/maple.py``; re-implemented here, no code copied): the
class prompts are concatenated to the full 77-token context (``[SOS] ctx suffix``), every position goes through all
text layers (deep text prompts replace the context states at layers 1..J-1), ``ln_final`` runs on all positions and
the EOT rows are pooled. ctta's core (``ctta.clip_prompting``) truncates at the longest EOT and encodes the
class-independent prefix once (exact). Both paths share the same frozen CLIP, prompts, image batch, labels and
image tower (appended vision prompts for MaPLe), so the difference is the text tower only.

One step = forward, cross-entropy, backward, SGD update. Reported per method and path: median step time (on CPU the
process CPU time, which other processes on a shared machine do not inflate; wall time too), the bytes of tensors
saved for backward (activation memory: distinct storages, frozen weights excluded; on CUDA also the peak allocated
memory), and the loss of the first step (the two paths must agree).

    python benchmarks/clip_prompt_step.py                       # ViT-B/16 random weights, 100 classes, CPU
    python benchmarks/clip_prompt_step.py --model ctta-tiny-clip --classes 20 --batch 4   # quick check

Measured (ViT-B/16 random weights, 100 classes, batch 4, CPU, 1 thread, one step after one warm-up, shared
2-core machine): CoOp 21.5 s -> 2.9 s CPU time (x7.4), saved activations 2,546 -> 195 MB (x13.0); MaPLe (J = 9)
28.3 s -> 7.4 s (x3.8), 2,957 -> 606 MB (x4.9); first-step losses identical to 6 decimals.

Wave 2 (``--methods coprompt msgcoop``): CoPrompt (ShuvenduRoy/CoPrompt@a2a6c12) is MaPLe's step plus the adapters and
the loss CE + w * (text + image) consistency (description row fixed by seed, view 2 = the batch); MSGCoOp
(Rain-Bus/MSGCoOp@a298669) encodes its N = 4 contexts at 77 tokens each in the reference path, one batched call of
ctta's core in ours, loss CE + 8 * score + 1 * orthogonality. Both paths compute the same full loss. Measured in the
smallest setting only (ctta-tiny-clip, 20 classes, batch 4, CPU, 1 thread, heavily loaded shared machine): CoPrompt
x2.26 CPU time, x8.7 activation memory; MSGCoOp x6.8, x12.8; first-step losses identical (ViT-B/16 not run).

``--methods restore hicropl``: RESTORE (Yaphabates/RESTORE_@4c64a17; MaPLe J = 9 + calibrators, loss CE +
feature-shift consistency) and HiCroPL (zzeoZheng/HiCroPL@2c2b2f2 at its smallest official setting, cross-dataset
n_ctx 2, J 6, k 5; CE + 12 * the two cosine distillations) run their own forward, the reference path with the 77-token
text tower swapped in. ViT-B/16 random weights, 100 classes, batch 4, CPU, 1 thread, one step after one warm-up,
loaded shared machine: RESTORE 23.8 s -> 6.2 s CPU time (x3.85), 3,002 -> 651 MB (x4.61); HiCroPL 24.7 s -> 7.5 s
(x3.29), 2,944 -> 593 MB (x4.97); tiny CLIP (20 classes): x2.44 / x8.1 and x2.18 / x8.9; first-step losses identical.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from ctta.strategies.coop import CoOpConfig, CoOpModel
from ctta.strategies.coprompt import CoPromptConfig, CoPromptModel, coprompt_consistency
from ctta.strategies.hicropl import HiCroPLConfig, HiCroPLModel, hicropl_loss
from ctta.strategies.maple import MaPLeConfig, MaPLeModel
from ctta.strategies.msgcoop import MSGCoOpConfig, MSGCoOpModel, msgcoop_regularisers
from ctta.strategies.restore import RESTOREConfig, RESTOREModel

from ctta.backbones.clip import create_clip
from ctta.clip_prompting import PromptedText, encode_image

WORDS = ("red", "small", "old", "wild", "striped", "golden", "northern", "common", "giant", "spotted")
THINGS = ("cat", "dog", "sea lion", "airplane", "mountain bike", "tree frog", "fire truck", "apple", "lighthouse",
          "grand piano")  # fmt: skip


def classnames(n: int) -> list[str]:
    """``n`` distinct, realistic-length class names."""
    return [f"{WORDS[i // len(THINGS) % len(WORDS)]} {THINGS[i % len(THINGS)]}" for i in range(n)]


def reference_text(text: PromptedText, soft: torch.Tensor, deep: list[torch.Tensor]) -> torch.Tensor:
    """The official 77-token text tower: ``cat(prefix, ctx, suffix)`` over the full context, all positions."""
    t = text.tower
    n_cls, n = text.n_classes, text.n_soft
    emb = text.token_embedding  # (C, 77, D)
    x = torch.cat([emb[:, :1], soft.to(emb.dtype).expand(n_cls, -1, -1), emb[:, 1 + n :]], dim=1)
    x = x + t.positional_embedding.to(x.dtype)
    for i, blk in enumerate(t.transformer.resblocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1].expand(n_cls, -1, -1)
            p = p.half() if text.round_prompts else p  # the official fp16 rounding of inserted prompts
            x = torch.cat([x[:, :1], p.to(x.dtype), x[:, 1 + n :]], dim=1)
        x = blk(x, attn_mask=t.attn_mask)
    x = t.ln_final(x)[torch.arange(n_cls), text.eot] @ t.text_projection
    return x


def wave2_logits(model, images: torch.Tensor, path: str) -> torch.Tensor:
    """CoPrompt (MaPLe prompts + adapters) and MSGCoOp (N contexts; the reference encodes each at 77 tokens)
    logits; the features the method's regularisers read are kept in ``model.features``."""
    if isinstance(model, MSGCoOpModel):
        ref = path != "ours"
        g = torch.stack([reference_text(model.text, c, []) for c in model.ctx]) if ref else model.prompt_features()
        model.features = {"text": g}
        with torch.no_grad():
            f = F.normalize(encode_image(model.clip, images), dim=-1)
        return model.logit_scale * torch.einsum("be,nce->nbc", f, F.normalize(g, dim=-1)).mean(0)
    ctx, deep, v0, vs = model.prompts()
    g = model.text(ctx, deep) if path == "ours" else reference_text(model.text, ctx, deep)
    g = F.normalize(model.adapter_text(g), dim=-1)
    f = F.normalize(model.adapter_image(encode_image(model.clip, images, v0, vs)), dim=-1)
    model.features = {"text": g, "image": f}
    return model.logit_scale * f @ g.t()


def wave2_loss(model, images: torch.Tensor) -> torch.Tensor | float:
    """The method's loss beyond cross-entropy (the same in both paths; CoPrompt's description row fixed by seed)."""
    if isinstance(model, CoPromptModel):
        random.seed(0)
        return 1.0 * coprompt_consistency(model, images)  # w 1.0 (coprompt.yaml); view 2 = the batch
    if isinstance(model, MSGCoOpModel):
        return msgcoop_regularisers(model.features["text"], model.teacher.features, MSGCoOpConfig())
    if isinstance(model, RESTOREModel):
        return model.fs_reg  # feature-shift consistency, fs_loss_r 1
    if isinstance(model, HiCroPLModel):  # the two cosine distillations, lambda 12 (cross-entropy left out here)
        feats = [model.features[k] for k in ("text", "text_llm", "image", "image_zs")]
        return hicropl_loss(None, None, *feats, 12.0, criterion=lambda *_: 0.0)
    return 0.0


class _ReferenceText(torch.nn.Module):
    """The 77-token reference tower standing in for ``model.text`` (RESTORE's and HiCroPL's own forward runs)."""

    def __init__(self, text: PromptedText) -> None:
        super().__init__()
        self.inner = [text]

    def forward(self, soft: torch.Tensor, deep=()) -> torch.Tensor:
        return reference_text(self.inner[0], soft, list(deep))


def own_forward_logits(model, images: torch.Tensor, path: str) -> torch.Tensor:
    """The model's own forward; the reference path swaps its text tower for the 77-token one."""
    if path == "ours":
        return model(images)
    text = model.text
    model.text = _ReferenceText(text)
    try:
        return model(images)
    finally:
        model.text = text


def build(method: str, clip, tok, names: list[str], depth: int, descriptions: str):
    """The method's model at its defaults (fp32; CoPrompt and MaPLe at ``depth``)."""
    if method == "coop":
        return CoOpModel(clip, tok, names, CoOpConfig(prec="fp32"))
    if method == "maple":
        return MaPLeModel(clip, tok, names, MaPLeConfig(depth=depth, prec="fp32"))
    if method == "restore":
        return RESTOREModel(clip, tok, names, RESTOREConfig(depth=depth, prec="fp32"))
    if method == "hicropl":  # the smallest official setting: cross-dataset n_ctx 2, J 6, cross layer 5
        j = min(6, len(clip.transformer.resblocks))
        cfg = HiCroPLConfig(n_ctx=2, depth=j, cross_layer=min(5, j - 1), prec="fp32")
        return HiCroPLModel(clip, tok, names, cfg, json.loads(Path(descriptions).read_text()))
    if method == "coprompt":
        return CoPromptModel(clip, tok, names, CoPromptConfig(depth=depth, prec="fp32", descriptions=descriptions))
    return MSGCoOpModel(clip, tok, names, MSGCoOpConfig(prec="fp32", descriptions=descriptions))


def description_file(names: list[str], folder: str) -> str:
    """A description JSON (3 per class, both official formats) for the benchmark's class names."""
    path = Path(folder) / "descriptions.json"
    path.write_text(json.dumps({n: [f"a photo of a {n}.", f"a {n} in the wild.", f"a close-up of a {n}."]
                                for n in names}))  # fmt: skip
    return str(path)


def logits_of(model, images: torch.Tensor, path: str) -> torch.Tensor:
    if isinstance(model, (CoPromptModel, MSGCoOpModel)):
        return wave2_logits(model, images, path)
    if isinstance(model, (RESTOREModel, HiCroPLModel)):
        return own_forward_logits(model, images, path)
    if isinstance(model, MaPLeModel):
        ctx, deep, v0, vs = model.prompts()
        g = model.text(ctx, deep) if path == "ours" else reference_text(model.text, ctx, deep)
        return model.logits(encode_image(model.clip, images, v0, vs), g)
    g = model.text(model.ctx) if path == "ours" else reference_text(model.text, model.ctx, [])
    with torch.no_grad():
        f = encode_image(model.clip, images)
    return model.logits(f, g)


def saved_bytes(fn, exclude=()) -> tuple[torch.Tensor, int]:
    """``fn()`` and the bytes of the distinct storages autograd saves for its backward (activation memory),
    ``exclude``'s tensors (the model's weights) left out; expanded views count once, at their storage's size."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def run(model, images, labels, path: str, steps: int, warmup: int, device) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    state = [p.detach().clone() for p in params]
    weights = [p for p in model.parameters() if not p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    times, walls, first_loss, act = [], [], None, 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        logits, act = saved_bytes(lambda: logits_of(model, images, path), weights)
        loss = F.cross_entropy(logits, labels) + wave2_loss(model, images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if first_loss is None:
            first_loss = loss.item()
        if i >= warmup:
            walls.append(time.perf_counter() - t0)
            times.append(walls[-1] if device.type == "cuda" else time.process_time() - c0)
    with torch.no_grad():
        for p, s in zip(params, state):
            p.copy_(s)  # the other path starts from the same prompts
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"time_s": statistics.median(times), "wall_s": statistics.median(walls), "saved_mb": act / 2**20,
            "peak_mb": peak and peak / 2**20, "loss": first_loss}  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    methods = ["coop", "maple", "coprompt", "msgcoop", "restore", "hicropl"]
    ap.add_argument("--methods", nargs="+", default=["coop", "maple"], choices=methods)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    clip, _, tok = create_clip(args.model, "", quick_gelu=True if args.model != "ctta-tiny-clip" else None)
    clip = clip.to(device)
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    names = classnames(args.classes)
    print(f"{args.model} (random weights), {args.classes} classes, batch {args.batch}, {args.device}, "
          f"{args.threads} thread(s), median of {args.steps} step(s) after {args.warmup} warm-up")  # fmt: skip
    tmp = tempfile.TemporaryDirectory()
    for method in args.methods:
        depth = min(9, len(clip.transformer.resblocks))
        model = build(method, clip, tok, names, depth, description_file(names, tmp.name)).to(device)
        ref = run(model, images, labels, "reference", args.steps, args.warmup, device)
        ours = run(model, images, labels, "ours", args.steps, args.warmup, device)
        cuda = f" | CUDA peak {ref['peak_mb']:.0f} vs {ours['peak_mb']:.0f} MB" if ref["peak_mb"] else ""
        same = abs(ref["loss"] - ours["loss"]) <= 1e-4 * max(1.0, abs(ref["loss"]))
        clock = "CPU" if device.type == "cpu" else "wall"
        print(f"{method}: {clock} time reference {ref['time_s']:.3f}s (wall {ref['wall_s']:.3f}s), "
              f"saved {ref['saved_mb']:.1f} MB | ours {ours['time_s']:.3f}s (wall {ours['wall_s']:.3f}s), "
              f"saved {ours['saved_mb']:.1f} MB | speed-up x{ref['time_s'] / ours['time_s']:.2f}, activation memory "
              f"x{ref['saved_mb'] / max(ours['saved_mb'], 1e-9):.2f} | first-step loss {ref['loss']:.6f} vs "
              f"{ours['loss']:.6f} ({'identical' if same else 'DIFFERENT'}){cuda}")  # fmt: skip
        if not same:
            raise SystemExit(f"{method}: the two paths disagree")


if __name__ == "__main__":
    main()
