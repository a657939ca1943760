"""Re-create the shipped backbones from a seed: ``python -m ctta.pretrained.recipe vit|clip [--reduced] [--out DIR]``.

Writes ``DIR/<model>.safetensors`` and adds its entry (sha256, architecture, recipe, data, epochs, seed, measured
accuracy, time, versions) to ``DIR/manifest.json`` (default DIR: a new ``pretrained_out/`` folder; the shipped
files live in ``ctta/pretrained/``). Training runs on the CPU with one thread and every random draw comes from the
seed, so the same seed, torch version and CPU type give byte-identical files.

* ``vit`` (``ctta-tiny-vit``): timm ViT (32 px, patch 8, depth 6, width 64, 4 heads) trained supervised (one
  20-way head, dropped afterwards) on the first 15,000 Fashion-MNIST training images and the sklearn digits train
  split (1,347 images, repeated 5 times per epoch): AdamW, one-cycle schedule, label smoothing, padded crop + flip,
  half of each batch made low-resolution like the upsampled 8x8 digits. It never sees the digits test split, on
  which the CL demo evaluates; it does see (with labels) the train images the demo stream learns from, as an
  ImageNet-pretrained ViT has seen CIFAR-like classes. ``digits_repeat=0`` trains on Fashion-MNIST alone (measured:
  digits linear probe 0.82-0.88 depending on the seed, MVP's A_last about 0.54 with a 200-sample replay memory).
  Measured: Fashion-MNIST test accuracy, and the linear-probe accuracy of its frozen CLS features on the digits
  test split (logistic regression fitted on the digits train split).
* ``clip`` (``ctta-tiny-clip-digits``): open_clip CLIP (image ViT 32 px patch 8, text transformer with a compact
  vocabulary) trained from scratch on clean images with captions: the sklearn digits train split ("a photo of a
  three.", ten caption templates) and 5,000 Fashion-MNIST training images ("a photo of a sneaker."). Loss:
  cross-entropy of each image against the 20 class captions of a template drawn per image (CLIP-style
  image-to-text logits with a learnt temperature). Measured: zero-shot accuracy on the clean digits test split and
  on Fashion-MNIST test images. The TTA demo adapts it on the digits test split under corruptions it never saw.

``--reduced`` trains on a few hundred images for one epoch (seconds; the test suite's check) and produces a model
of the same shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ctta.pretrained import archs, data
from ctta.pretrained.store import MANIFEST_NAME, save_weights

__all__ = ["ViTRecipe", "CLIPRecipe", "train_vit", "train_clip", "make", "main"]

_CL_MEAN, _CL_STD = 0.5, 0.5  # the digits Si-Blurry stream's normalisation (ctta.data.cl_datasets)


@dataclass(frozen=True)
class ViTRecipe:
    """Supervised Fashion-MNIST pretraining of ``ctta-tiny-vit`` (see the module docstring)."""

    seed: int = 0
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.1
    label_smoothing: float = 0.1
    low_res_p: float = 0.5
    train_limit: int = 15000  # Fashion-MNIST training images used (the first ones; 0 = all 60,000)
    digits_repeat: int = 5  # the digits train split (labels 10-19), repeated per epoch; 0 = Fashion-MNIST only
    digits_limit: int = 0  # digits train images (0 = all 1,347)
    test_limit: int = 0  # Fashion-MNIST test images measured (0 = all 10,000)


@dataclass(frozen=True)
class CLIPRecipe:
    """Caption training of ``ctta-tiny-clip-digits`` on clean digits (train split) and Fashion-MNIST."""

    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.1
    fashion_limit: int = 5000  # Fashion-MNIST training images (the first ones)
    digits_limit: int = 0  # digits train images (0 = all 1,347)
    digits_repeat: int = 3  # the 1,347 digits train images are repeated per epoch
    min_scale: float = 0.08  # random resized crop area (TPT's test-time views use 0.08-1)
    flip: bool = True
    test_limit: int = 2000  # Fashion-MNIST test images measured


REDUCED = {
    "vit": dict(epochs=1, batch_size=64, train_limit=128, digits_limit=64, digits_repeat=1, test_limit=128),
    "clip": dict(epochs=1, batch_size=64, fashion_limit=128, digits_limit=128, digits_repeat=1, test_limit=128),
}


def _one_cycle(model: torch.nn.Module, lr: float, wd: float, warmup: float, steps: int):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=warmup)
    return opt, sched


def _batches(n: int, batch_size: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for s in range(max(1, n // batch_size)):
        yield perm[s * batch_size : (s + 1) * batch_size]


def _to3(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1] -> normalised ``(B, 3, H, W)``."""
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).reshape(-1, 1, 1)
    return (x.expand(-1, 3, -1, -1) - m) / s


# ----------------------------------------------------------------------------------------------------------
# ViT
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _features(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Frozen CLS pre-logits ``(N, D)`` (what MVP's head and the demo's linear probe read)."""
    out = [model.forward_head(model.forward_features(_to3(x[i : i + batch], _CL_MEAN, _CL_STD)), pre_logits=True)
           for i in range(0, len(x), batch)]  # fmt: skip
    return torch.cat(out)


def digits_linear_probe(model) -> float:
    """Accuracy on the digits test split of a logistic regression on frozen features fitted on the train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model.eval()
    (xtr, ytr), (xte, yte) = data.load_digits_tensors("train"), data.load_digits_tensors("test")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(_features(model, xtr).numpy(), ytr.numpy())
    return float(clf.score(_features(model, xte).numpy(), yte.numpy()))


def _vit_data(rc: ViTRecipe, fashion_root):
    """Fashion-MNIST (labels 0-9) then, if ``digits_repeat``, the digits train split repeated (labels 10-19)."""
    x, y = data.load_fashion_mnist("train", fashion_root, rc.train_limit)
    if not rc.digits_repeat:
        return x, y
    xd, yd = data.load_digits_tensors("train")
    xd, yd = (xd[: rc.digits_limit], yd[: rc.digits_limit]) if rc.digits_limit else (xd, yd)
    return torch.cat([x, xd.repeat(rc.digits_repeat, 1, 1, 1)]), torch.cat([y, yd.repeat(rc.digits_repeat) + 10])


def train_vit(rc: ViTRecipe, fashion_root=None, log=print):
    """Train ``ctta-tiny-vit``; returns ``(state_dict without head, measured accuracies)``."""
    torch.manual_seed(rc.seed)
    g = torch.Generator().manual_seed(rc.seed)
    x, y = _vit_data(rc, fashion_root)
    model = archs.build_tiny_vit(num_classes=int(y.max()) + 1)
    steps = rc.epochs * max(1, len(x) // rc.batch_size)
    opt, sched = _one_cycle(model, rc.lr, rc.weight_decay, rc.warmup, steps)
    for epoch in range(rc.epochs):
        model.train()
        total, n = 0.0, 0
        for ix in _batches(len(x), rc.batch_size, g):
            xb = data.shift_flip(data.low_res(x[ix], rc.low_res_p, g), g)
            loss = F.cross_entropy(model(_to3(xb, _CL_MEAN, _CL_STD)), y[ix], label_smoothing=rc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        log(f"vit epoch {epoch + 1}/{rc.epochs}: loss {total / n:.4f}")
    model.eval()
    xt, yt = data.load_fashion_mnist("test", fashion_root, rc.test_limit)
    with torch.no_grad():  # Fashion-MNIST classes are the head's first 10 outputs
        fm_acc = float((model(_to3(xt, _CL_MEAN, _CL_STD))[:, :10].argmax(-1) == yt).float().mean())
    acc = {"fashion_mnist_test": fm_acc, "digits_linear_probe": digits_linear_probe(model)}
    model.reset_classifier(0)
    return model.state_dict(), acc


# ----------------------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------------------
def _clip_data(rc: CLIPRecipe, fashion_root):
    """Training images (digits train split repeated, then Fashion-MNIST) and labels in 0..19 (fashion = 10 + c)."""
    xd, yd = data.load_digits_tensors("train")
    xd, yd = (xd[: rc.digits_limit], yd[: rc.digits_limit]) if rc.digits_limit else (xd, yd)
    xf, yf = data.load_fashion_mnist("train", fashion_root, rc.fashion_limit)
    x = torch.cat([xd.repeat(rc.digits_repeat, 1, 1, 1), xf])
    return x, torch.cat([yd.repeat(rc.digits_repeat), yf + len(archs.DIGIT_NAMES)])


def _clip_step(model, tokens, xb, yb, ti) -> torch.Tensor:
    """Cross-entropy of each image over the class captions of its template ``ti``."""
    from ctta.data.tta_views import CLIP_MEAN, CLIP_STD

    img = F.normalize(model.encode_image(_to3(xb, CLIP_MEAN, CLIP_STD)), dim=-1)  # (B, E)
    txt = F.normalize(model.encode_text(tokens), dim=-1)  # (T*C, E)
    txt = txt.view(len(archs.CAPTION_TEMPLATES), -1, txt.shape[-1])  # (T, C, E)
    logits = model.logit_scale.exp() * torch.einsum("be,bce->bc", img, txt[ti])  # (B, C)
    return F.cross_entropy(logits, yb)


@torch.no_grad()
def zero_shot(model, tokenizer, x: torch.Tensor, y: torch.Tensor, names, template: str = "a photo of a {}.") -> float:
    """Zero-shot top-1 of images ``(N, 1, H, W)`` in [0, 1] against ``template`` captions of ``names``."""
    from ctta.data.tta_views import CLIP_MEAN, CLIP_STD

    model.eval()
    txt = F.normalize(model.encode_text(tokenizer([template.format(n) for n in names])), dim=-1)
    img = F.normalize(model.encode_image(_to3(x, CLIP_MEAN, CLIP_STD)), dim=-1)
    return float(((img @ txt.T).argmax(-1) == y).float().mean())


def train_clip(rc: CLIPRecipe, fashion_root=None, log=print):
    """Train ``ctta-tiny-clip-digits``; returns ``(state_dict incl. tokenizer.vocab, measured accuracies)``."""
    torch.manual_seed(rc.seed)
    g = torch.Generator().manual_seed(rc.seed)
    model, tokenizer = archs.build_tiny_clip()
    tokens = tokenizer(archs.captions())  # (T*20, L)
    x, y = _clip_data(rc, fashion_root)
    opt, sched = _one_cycle(model, rc.lr, rc.weight_decay, rc.warmup, rc.epochs * max(1, len(x) // rc.batch_size))
    for epoch in range(rc.epochs):
        model.train()
        total, n = 0.0, 0
        for ix in _batches(len(x), rc.batch_size, g):
            xb = data.resized_crop(x[ix], g, rc.min_scale, rc.flip)
            ti = torch.randint(0, len(archs.CAPTION_TEMPLATES), (len(ix),), generator=g)
            loss = _clip_step(model, tokens, xb, y[ix], ti)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        log(f"clip epoch {epoch + 1}/{rc.epochs}: loss {total / n:.4f}")
    xd, yd = data.load_digits_tensors("test")
    xf, yf = data.load_fashion_mnist("test", fashion_root, rc.test_limit)
    acc = {
        "digits_test_zero_shot": zero_shot(model, tokenizer, xd, yd, archs.DIGIT_NAMES),
        "fashion_mnist_test_zero_shot": zero_shot(model, tokenizer, xf, yf, archs.FASHION_NAMES),
    }
    state = dict(model.state_dict())
    state["tokenizer.vocab"] = torch.tensor(tokenizer.vocab, dtype=torch.long)
    return state, acc


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
_DATA = {
    "vit": {
        "train": "the first 15,000 Fashion-MNIST train images (Debian dataset-fashion-mnist) and the sklearn digits "
        "train split (ctta.data.digits, random_state=0, 1,347 images), with labels; never the digits test split",
        "measured_on": "Fashion-MNIST test split; digits linear probe: sklearn digits train split (fit) / test split",
    },
    "clip": {
        "train": "sklearn digits train split (ctta.data.digits, random_state=0, 1,347 images) and the first "
        "Fashion-MNIST train images, with captions; clean images only (no corruption)",
        "measured_on": "clean sklearn digits test split (450 images); Fashion-MNIST test images",
    },
}


def _versions() -> dict:
    import open_clip
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "open_clip": open_clip.__version__}


def _entry(kind: str, rc, acc: dict, path: Path, sha: str, seconds: float, reduced: bool) -> dict:
    arch = (
        {"timm": archs.VIT_TIMM_ARCH, **archs.VIT_ARCH}
        if kind == "vit"
        else {"open_clip.CLIP": archs.clip_config(len(archs.caption_vocabulary()) + 4)}
    )
    return {
        "file": path.name,
        "sha256": sha,
        "bytes": path.stat().st_size,
        "kind": kind,
        "architecture": arch,
        "recipe": dataclasses.asdict(rc),
        "reduced": reduced,
        "data": _DATA[kind],
        "epochs": rc.epochs,
        "seed": rc.seed,
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "train_seconds": round(seconds, 1),
        "threads": 1,
        "versions": _versions(),
        "command": f"python -m ctta.pretrained.recipe {kind}" + (" --reduced" if reduced else ""),
        "reproducible": "byte-identical from the same seed with the same torch version and CPU type (1 thread)",
    }


def _update_manifest(out: Path, name: str, entry: dict) -> None:
    path = out / MANIFEST_NAME
    manifest = json.loads(path.read_text()) if path.is_file() else {"format": 1, "models": {}}
    manifest["models"][name] = entry
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def make(kind: str, out, reduced: bool = False, seed: int = 0, fashion_root=None, log=print) -> dict:
    """Train ``kind`` ("vit" or "clip"), write its safetensors file and manifest entry into ``out``; returns it."""
    if kind not in ("vit", "clip"):
        raise ValueError(f"kind must be 'vit' or 'clip', got {kind!r}")
    recipe_cls = ViTRecipe if kind == "vit" else CLIPRecipe
    rc = recipe_cls(seed=seed, **(REDUCED[kind] if reduced else {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float summation order on every run
    try:
        t0 = time.perf_counter()
        state, acc = (train_vit if kind == "vit" else train_clip)(rc, fashion_root, log)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    name = archs.VIT_NAME if kind == "vit" else archs.CLIP_NAME
    path = out / f"{name}.safetensors"
    entry = _entry(kind, rc, acc, path, save_weights(state, path), seconds, reduced)
    _update_manifest(out, name, entry)
    log(f"wrote {path} ({entry['bytes']} bytes, sha256 {entry['sha256'][:16]}...) in {seconds:.0f}s: {acc}")
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctta.pretrained.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("vit", "clip"))
    p.add_argument("--reduced", action="store_true", help="a few hundred images, one epoch (seconds)")
    p.add_argument("--out", default="pretrained_out", help="output folder (weights + manifest.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fashion-mnist", default=None, help=f"Fashion-MNIST IDX folder (default {data.FASHION_MNIST_DIR})")
    args = p.parse_args(argv)
    try:
        make(args.kind, args.out, args.reduced, args.seed, args.fashion_mnist)
    except FileNotFoundError as e:
        print(f"recipe: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
