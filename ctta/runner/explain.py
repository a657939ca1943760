"""``ctta explain``: Prompt-CAM trait maps (per-class attention of the class prompt over the image), as PNG files.

Reference: Imageomics/Prompt_CAM @ 7722fc2, ``utils/visual_utils.py:prune_and_plot_ranked_heads`` (MIT),
re-implemented from ``remaining-seed-systems.md`` A1 (no code copied).

For an image and a target class ``c`` (default: the predicted class):
- **maps**: the last block's attention of query row ``c`` (class prompt ``c``) over the patch keys, one map per
  head, ``(H, gh, gw)``. Each head's row sums to 1 over all keys, so ``maps.sum((1, 2)) + rest == 1`` with ``rest``
  the mass on the prompt and CLS keys.
- **ranking** (as the reference): heads are "blurred" greedily (pre-softmax scores of row ``c`` set to 0, so the row
  attends uniformly); each round blurs the remaining head whose blurring leaves the highest probability of ``c``.
  Heads blurred last matter most: the ranking is the blurring order reversed.
- **pictures**: each ranked map is min-max normalised, bicubic-resized to the image, blurred with a 9x9 Gaussian
  (OpenCV's sigma for that size, 1.7), JET-coloured and laid over the image at alpha 0.5.

Works on any model with ``forward_with_attention(x, blur_heads, blur_rows) -> (logits, attention)`` whose
attention rows/columns are ``[class prompts, CLS, patches]`` (``strategies/promptcam.py:PromptCAMModel``).
Deviation: torch resize/blur instead of OpenCV (values differ by interpolation rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rank_heads", "trait_maps", "render_map", "explain_images", "explain_run"]


@torch.no_grad()
def rank_heads(model, x: torch.Tensor, target: int) -> list[int]:
    """Heads of the last block, most important first, for image ``x`` (1, C, H, W) and class ``target``."""
    _, probs = model.forward_with_attention(x)
    remaining, blurred = list(range(probs.shape[1])), []
    while remaining:
        scores = [model.forward_with_attention(x, blurred + [h], [target])[0].softmax(-1)[0, target] for h in remaining]
        blurred.append(remaining.pop(int(torch.stack(scores).argmax())))
    return blurred[::-1]


@torch.no_grad()
def trait_maps(model, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps (H, gh, gw), rest (H,))``: class ``target``'s attention over the patches and on prompt/CLS keys."""
    logits, probs = model.forward_with_attention(x)
    n_p = logits.shape[-1]
    row = probs[0, :, target].float()  # (H, P+1+N)
    n = row.shape[-1] - n_p - 1
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return row[:, n_p + 1 :].reshape(-1, g, g), row[:, : n_p + 1].sum(-1)


def _gaussian(size: int = 9) -> torch.Tensor:
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's default for ksize 9
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def render_map(m: torch.Tensor, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """One map ``(gh, gw)`` over ``image`` (H, W, 3) in [0, 1] -> RGB overlay (H, W, 3) in [0, 1]."""
    from matplotlib import colormaps

    h, w = image.shape[:2]
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    m = F.interpolate(m[None, None], size=(h, w), mode="bicubic", align_corners=False)
    k = _gaussian()
    m = F.conv2d(F.pad(m, (4, 4, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, 4, 4), mode="reflect"), k.view(1, 1, -1, 1))[0, 0].clamp(0, 1)
    heat = colormaps["jet"](m.numpy())[..., :3]
    return (1 - alpha) * image + alpha * heat


def _to_image(x: torch.Tensor, mean, std) -> np.ndarray:
    img = x[0].float().cpu() * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    img = img.clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def _norm_stats(model) -> tuple[tuple, tuple]:
    cfg = getattr(model.backbone.vit, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5)))


def explain_images(model, images: torch.Tensor, out_dir, targets=None, top_traits: int = 4,
                   class_names=None, stats=None) -> list[dict]:  # fmt: skip
    """Trait maps of ``images`` (B, C, H, W; the model's input normalisation) as PNGs and a contact sheet.

    Args:
        model: a Prompt-CAM model (``forward_with_attention``), put in eval mode here.
        images: normalised input images.
        out_dir: folder for ``explain_<i>.png`` (image + top heads) and ``contact_sheet.png`` (all rows).
        targets: class per image (None: the predicted class).
        top_traits: how many ranked heads to draw.
        class_names: names for the titles (None: class ids).
        stats: ``(mean, std)`` the images are normalised with, to draw them (None: the backbone's timm
            ``pretrained_cfg`` statistics).

    Returns:
        One record per image: ``{"file", "target", "pred", "prob", "heads" (ranked), "maps" (H, gh, gw)}``.
    """
    import matplotlib.pyplot as plt

    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = next(model.parameters()).device
    mean, std = stats if stats is not None else _norm_stats(model)
    records, rows = [], []
    for i in range(len(images)):
        x = images[i : i + 1].to(dev)
        with torch.no_grad():
            p = model.forward_with_attention(x)[0].softmax(-1)[0]
        pred = int(p.argmax())
        c = pred if targets is None else int(targets[i])
        heads = rank_heads(model, x, c)[:top_traits]
        maps, _ = trait_maps(model, x, c)
        img = _to_image(x, mean, std)
        panels = [img] + [render_map(maps[h].cpu(), img) for h in heads]
        name = class_names[c] if class_names else str(c)
        titles = [f"{name} (p={float(p[c]):.2f})"] + [f"head {h} (#{r + 1})" for r, h in enumerate(heads)]
        f = out / f"explain_{i}.png"
        _sheet([panels], [titles], f)
        rows.append((panels, titles))
        records.append({"file": str(f), "target": c, "pred": pred, "prob": float(p[c]), "heads": heads,
                        "maps": maps.cpu()})  # fmt: skip
    _sheet([r[0] for r in rows], [r[1] for r in rows], out / "contact_sheet.png")
    plt.close("all")
    return records


def _sheet(panels: list[list[np.ndarray]], titles: list[list[str]], path: Path) -> None:
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.8 * n_cols, 1.9 * n_rows), squeeze=False)
    for r, (row, tt) in enumerate(zip(panels, titles)):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c])
                ax.set_title(tt[c], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_checkpoint(path: Path) -> dict:
    """Model tensors of a ctta checkpoint (its JSON sidecar's SHA-256 checked) or of a plain state dict file."""
    from ctta.runner import checkpoint as ck

    meta = ck.meta_path(path)
    if meta.is_file():  # a ctta checkpoint: verified, then read like resume reads it
        state = ck._load(path, ck._read_meta(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


def _built_model(ctx):
    """The strategy's model, built from the first training experience if it waits for the benchmark."""
    s = ctx.strategy
    if getattr(s, "_backbone", None) is not None:
        s.experience = ctx.bench.train_stream[0]
        s.model, s._backbone = s.build_model(s._backbone, s.experience).to(s.device), None
    return s.model


def explain_run(cfg, checkpoint: str | None, n_images: int, out_dir: str | None, top_traits: int) -> list[dict]:
    """Build the config's run, load ``checkpoint`` (a ctta checkpoint or a state dict of the trainable
    parameters) or, without one, train the config (writing the run's usual outputs), then explain the first
    ``n_images`` test images. Maps go to ``out_dir`` (default ``<log.out_dir>/explain``)."""
    from ctta.runner.run import execute, prepare

    ctx = prepare(cfg, outputs=checkpoint is None)
    model = ctx.strategy.model
    if checkpoint is None:
        execute(ctx)
        model = ctx.strategy.model
    else:
        model = _built_model(ctx)
        state = _read_checkpoint(Path(checkpoint))
        missing = [k for k in state if k not in dict(model.named_parameters()) | dict(model.named_buffers())]
        if missing:
            raise ValueError(f"checkpoint {checkpoint} has parameters the model lacks: {missing[:5]}")
        model.load_state_dict(state, strict=False)
    if not hasattr(model, "forward_with_attention"):
        raise ValueError(f"strategy {cfg.strategy.name!r} has no class-prompt attention to explain (use promptcam)")
    ds = ctx.bench.test_stream[0].dataset.eval()
    n = min(n_images, len(ds))
    images = torch.stack([ds[i][0] for i in range(n)])
    targets = [int(ds[i][1]) for i in range(n)]
    stats = getattr(getattr(ctx.bench, "info", None), "normalization", None)  # what the scenario normalised with
    return explain_images(model, images, out_dir or Path(cfg.log.out_dir) / "explain", targets, top_traits,
                          stats=stats)  # fmt: skip
