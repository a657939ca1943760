"""``ctta demo`` (continual learning) and ``ctta demo tta`` (test-time adaptation) on ctta's shipped backbones.

``cl``: MVP on the Si-Blurry stream of sklearn digits (``demo_cl.yaml``) over ``ctta-tiny-vit`` (pretrained on
Fashion-MNIST and the digits train split, never the test split), next to two references on the same stream:

* joint linear probe: a logistic regression (sklearn) fitted on the frozen backbone's CLS features of the whole
  stream (all classes at once), measured on the test split; an upper bound for a frozen backbone;
* naive online fine-tuning: the same stream, batches, augmentation and number of updates per batch as MVP, but
  the whole ViT plus a linear head trained with plain cross-entropy (Adam; no prompts, mask, replay or
  regularisation), evaluated at the same points (test samples of the classes seen so far); forgetting shows.

``tta``: zero-shot CLIP (``tta_steps=0``: the centre view and the prompt "a photo of a {digit}.") and TPT
(``demo_tta.yaml``) over ``ctta-tiny-clip-digits`` on the digits test split under ctta's corruptions (one
experience per corruption; the same corrupted images for both).

``fewshot``: zero-shot CLIP (CoOp before training: the prompt "a photo of a {digit}.") and the CLIP prompt learners
CoOp, CoCoOp, MaPLe and PromptSRC (``demo_fewshot.yaml`` plus each method's settings in ``FEWSHOT_METHODS``) over
``ctta-tiny-clip-digits`` on a base-to-new split of digits: base / new / HM accuracy per method, one run folder each.

Each writes the usual run files plus ``demo_results.json`` and ``demo_accuracy.png`` into the output folder.
``reduced=True`` shortens the runs (tests).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["demo_main", "naive_online", "linear_probe"]

CONFIGS = {"cl": "demo_cl.yaml", "tta": "demo_tta.yaml", "fewshot": "demo_fewshot.yaml"}
OUT_DIRS = {"cl": "runs/demo", "tta": "runs/demo_tta", "fewshot": "runs/demo_fewshot"}
REDUCED = {
    "cl": ["strategy.online_iters=1", "strategy.eval_every=600"],
    "tta": ["scenario.max_samples=40", "scenario.corruptions=[gaussian_noise,defocus_blur]"],
    "fewshot": ["scenario.shots=4", "scenario.max_test=60", "strategy.epochs=2"],
}
#: ``ctta demo fewshot``: each method's own settings over ``demo_fewshot.yaml`` (the user's overrides win); its run
#: folder is ``<out>/<key>`` (zero-shot CLIP: CoOp's model evaluated before training, no folder)
FEWSHOT_METHODS = {
    "zero_shot": ("zero-shot CLIP", ["strategy.name=coop"]),
    "coop": ("CoOp", ["strategy.name=coop"]),
    "cocoop": ("CoCoOp", ["strategy.name=cocoop"]),
    "maple": ("MaPLe", ["strategy.name=maple", "strategy.depth=2"]),
    "promptsrc": ("PromptSRC", ["strategy.name=promptsrc", "strategy.depth_text=2", "strategy.depth_vision=3",
                                "strategy.teacher_templates=hand", "strategy.gpa_mean=4", "strategy.gpa_std=1"]),
}  # fmt: skip
NAIVE_LR = 1e-3  # Adam over the whole ViT and the head


def _runner():
    """``(config module, run module)`` of the runner."""
    from ctta.runner import config, run

    return config, run


def _load(kind: str, overrides, out_dir, reduced: bool, first=(), last=()):
    """The demo's config: its YAML, then ``first`` (a method's settings), the reduced settings, the user's
    overrides and output folder, then ``last`` (what a demo run must keep)."""
    config, _ = _runner()
    extra = ["overwrite=true", f"log.out_dir={OUT_DIRS[kind]}", *first]  # a demo replaces the previous demo's results
    extra += list(REDUCED[kind] if reduced else []) + list(overrides or [])  # the user's overrides win
    if out_dir is not None:
        extra.append(f"log.out_dir={out_dir}")
    extra += list(last)
    with resources.as_file(resources.files("ctta.runner") / CONFIGS[kind]) as path:
        return config.load_config(path, extra)


# ----------------------------------------------------------------------------------------------------------
# CL references: joint linear probe and naive online fine-tuning
# ----------------------------------------------------------------------------------------------------------
def _stack(dataset, idx=None, transform=None):
    """Images ``(N, C, H, W)`` and labels ``(N,)`` of an (Avalanche) dataset, optionally transformed."""
    items = [dataset[i] for i in (range(len(dataset)) if idx is None else idx)]
    x = torch.stack([transform(it[0]) if transform else it[0] for it in items])
    return x, torch.tensor([int(it[1]) for it in items])


def _test_transform(bench, img_size: int):
    from ctta.data.siblurry_aug import siblurry_test_transform

    return siblurry_test_transform(bench.info.dataset_stats.mean, bench.info.dataset_stats.std, img_size)


@torch.no_grad()
def _features(backbone, x: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    return torch.cat([backbone(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def linear_probe(backbone, bench, img_size: int, device="cpu") -> float:
    """Test accuracy of a logistic regression fitted on frozen features of every stream training sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    backbone.eval().to(device)
    idx = sorted(i for task in bench.info.task_indices for i in task)
    xtr, ytr = _stack(bench.info.train_dataset, idx, _test_transform(bench, img_size))
    xte, yte = _stack(bench.info.test_dataset)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(_features(backbone, xtr, device).numpy(), ytr.numpy())
    return float(clf.score(_features(backbone, xte, device).numpy(), yte.numpy()))


class _Evaluator:
    """Accuracy on the test samples of the classes seen so far (as ``AnytimeEvalPlugin``), with per-class counts."""

    def __init__(self, bench, device) -> None:
        self.x, self.y = _stack(bench.info.test_dataset)
        self.device = device
        self.periodic: list[tuple[int, float]] = []
        self.task_end: list[tuple[int, float]] = []
        self.per_class: list[dict[int, tuple[int, int]]] = []

    @torch.no_grad()
    def __call__(self, model, seen: set[int], kind: str, x_pos: int) -> None:
        keep = torch.isin(self.y, torch.tensor(sorted(seen)))
        x, y = self.x[keep], self.y[keep]
        model.eval()
        pred = torch.cat([model(x[i : i + 256].to(self.device)).argmax(-1).cpu() for i in range(0, len(x), 256)])
        model.train()
        acc = float((pred == y).float().mean())
        (self.periodic if kind == "periodic" else self.task_end).append((x_pos, acc))
        if kind == "task_end":
            self.per_class.append(
                {c: (int((pred[y == c] == c).sum()), int((y == c).sum())) for c in y.unique().tolist()}
            )

    def summary(self) -> dict[str, float]:
        from ctta.metrics import f_last

        return {
            "A_auc": sum(a for _, a in self.periodic) / max(1, len(self.periodic)),
            "A_last": self.task_end[-1][1] if self.task_end else 0.0,
            "F_last": f_last(self.per_class),
        }


def naive_online(
    backbone, bench, online_iters: int, every: int, device="cpu", lr: float = NAIVE_LR, batch_size: int = 64
) -> dict:
    """Naive online fine-tuning of ``backbone`` (unfrozen) + a linear head over the benchmark's stream.

    Same incoming batches (``batch_size``: MVP's, stream order), augmentation (``bench.info.train_augment``)
    and number of updates per batch as the online strategies; cross-entropy over all classes, Adam, nothing against
    forgetting. Evaluated every ``every`` samples and at each task end like ``AnytimeEvalPlugin``.

    Returns:
        ``{"A_auc", "A_last", "F_last", "periodic": [(samples, acc)], "task_end": [(samples, acc)]}``.
    """
    backbone.vit.requires_grad_(True)  # naive: the whole backbone is fine-tuned
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.embed_dim, bench.info.n_classes)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ev, seen, n_seen, next_eval = _Evaluator(bench, device), set(), 0, every
    for task in bench.info.task_indices:
        for s in range(0, len(task), batch_size):
            x, y = _stack(bench.info.train_dataset, task[s : s + batch_size])
            seen.update(y.tolist())
            for _ in range(online_iters):
                loss = F.cross_entropy(model(bench.info.train_augment(x).to(device)), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            n_seen += len(y)
            while 0 < every < n_seen and next_eval < n_seen:
                ev(model, seen, "periodic", next_eval)
                next_eval += every
        if task:
            ev(model, seen, "task_end", n_seen)
    return {**ev.summary(), "periodic": ev.periodic, "task_end": ev.task_end}


# ----------------------------------------------------------------------------------------------------------
# Output: table, plot, JSON
# ----------------------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _plot_cl(path: Path, mvp: dict, naive: dict, probe: float, n_classes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for name, res, color in (("MVP", mvp, "C0"), ("naive fine-tuning", naive, "C3")):
        pts = sorted([*res["periodic"], *res["task_end"]])
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "-o", ms=3, color=color, label=name)
    ax.axhline(100 * probe, color="C2", ls="--", label="joint linear probe (frozen)")
    ax.axhline(100 / n_classes, color="grey", ls=":", label="chance")
    for x, _ in mvp["task_end"]:
        ax.axvline(x, color="0.85", lw=0.8, zorder=0)
    ax.set(xlabel="stream samples", ylabel="accuracy on seen classes (%)", ylim=(0, 100))
    ax.set_title("Si-Blurry digits stream, ctta-tiny-vit (anytime accuracy)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Demos
# ----------------------------------------------------------------------------------------------------------
def _cl_demo(cfg) -> dict:
    from ctta.evaluation import anytime_metric
    from ctta.registry import BACKBONES
    from ctta.utils import resolve_device, seed_everything

    _, run = _runner()
    ctx = run.prepare(cfg)
    results = run.execute(ctx, verbose=False)
    m = anytime_metric(ctx.evaluator)
    mvp = {**{k: results["summary"].get(k) for k in ("A_auc", "A_last", "F_last")},
           "periodic": list(m.periodic), "task_end": list(m.task_end)}  # fmt: skip
    device, params = resolve_device(cfg.device), cfg.strategy.params
    probe = linear_probe(BACKBONES.get(cfg.backbone.name).builder(cfg.backbone.params), ctx.bench,
                         cfg.scenario.params.img_size, device)  # fmt: skip
    seed_everything(cfg.seed)
    naive = naive_online(BACKBONES.get(cfg.backbone.name).builder(cfg.backbone.params), ctx.bench,
                         params.online_iters, params.eval_every, device, batch_size=params.batch_size)  # fmt: skip
    _plot_cl(ctx.out / "demo_accuracy.png", mvp, naive, probe, ctx.bench.info.n_classes)
    return {"out": ctx.out, "mvp": mvp, "naive": naive, "linear_probe": probe, "n_classes": ctx.bench.info.n_classes}


def _print_cl(cfg, res: dict) -> None:
    keys = ("A_auc", "A_last", "F_last")
    size = getattr(cfg.strategy.params, "memory_size", 0)
    mem = f", replay memory {size}" if size else ""
    rows = [
        ["joint linear probe (frozen backbone; upper bound)", "-", _pct(res["linear_probe"]), "-"],
        [f"{cfg.strategy.name.upper()} (prompts + head, frozen backbone{mem})", *(_pct(res["mvp"][k]) for k in keys)],
        ["naive online fine-tuning (ViT + linear head)", *(_pct(res["naive"][k]) for k in keys)],
        ["chance", _pct(1 / res["n_classes"]), _pct(1 / res["n_classes"]), "-"],
    ]
    print(_table(["method", "A_auc", "A_last", "F_last"], rows))


def _tta_run(cfg, overrides: list[str], label: str = "tpt") -> dict:
    """Per-experience top-1 of one TPT run (``{experience name: accuracy}``) and its wall time; ``label`` names its
    progress bar (the zero-shot pass is the ``tpt`` strategy with ``tta_steps=0``)."""
    config, run = _runner()
    sub = config.load_config(config.to_dict(cfg), overrides)
    t0 = time.perf_counter()
    res = run.execute(run.prepare(sub, label=label), verbose=False)
    exps = {k.rsplit("/", 1)[-1]: v for k, v in res["last_metrics"].items() if k.startswith("Top1_Acc_Exp/")}
    return {"per_experience": dict(sorted(exps.items())), "seconds": time.perf_counter() - t0}


def _tta_demo(cfg) -> dict:
    out = Path(cfg.log.out_dir)
    names = [f"{c}/{s}" for c in cfg.scenario.params.corruptions for s in cfg.scenario.params.severities]
    zs = _tta_run(cfg, ["strategy.tta_steps=0", "scenario.n_views=1", f"log.out_dir={out / 'zero_shot'}"], "zero-shot")
    tpt = _tta_run(cfg, [f"log.out_dir={out / 'tpt'}"])
    rows = []
    for i, name in enumerate(names):
        key = f"Exp{i:03d}"
        rows.append({"corruption": name, "zero_shot": zs["per_experience"][key], "tpt": tpt["per_experience"][key]})
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"out": out, "rows": rows, "zero_shot_mean": mean("zero_shot"), "tpt_mean": mean("tpt"),
            "seconds": {"zero_shot": zs["seconds"], "tpt": tpt["seconds"]}}  # fmt: skip


def _print_tta(res: dict) -> None:
    rows = [[r["corruption"], _pct(r["zero_shot"]), _pct(r["tpt"]), f"{100 * (r['tpt'] - r['zero_shot']):+.1f}"]
            for r in res["rows"]]  # fmt: skip
    rows.append(["mean", _pct(res["zero_shot_mean"]), _pct(res["tpt_mean"]),
                 f"{100 * (res['tpt_mean'] - res['zero_shot_mean']):+.1f}"])  # fmt: skip
    print(_table(["corruption/severity", "zero-shot", "TPT", "gain"], rows))


def _plot_tta(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["corruption"] for r in res["rows"]]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    ax.bar([x - 0.2 for x in xs], [100 * r["zero_shot"] for r in res["rows"]], 0.4, label="zero-shot CLIP")
    ax.bar([x + 0.2 for x in xs], [100 * r["tpt"] for r in res["rows"]], 0.4, label="TPT")
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="top-1 (%)", ylim=(0, 100), title="digits test split under corruptions, ctta-tiny-clip-digits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _zero_shot(cfg) -> dict:
    """Base / new / HM of the untrained CoOp model of ``cfg``: its context is the embedding of "a photo of a", so
    its text features are zero-shot CLIP's (tested in tests/test_coop.py); nothing is trained or written."""
    from ctta.runner.results import BASE_NEW

    _, run = _runner()
    ctx = run.prepare(cfg, outputs=False)
    ctx.strategy.eval_after_experience(ctx.bench, 0)
    last = ctx.evaluator.get_last_metrics()
    return {k: float(last[name]) for k, name in BASE_NEW.items()}


def _fewshot_run(key: str, overrides, out: Path, reduced: bool) -> dict:
    """One method of the few-shot demo: base / new / HM, training loss per epoch and wall time of its run."""
    _, run = _runner()
    label, settings = FEWSHOT_METHODS[key]
    cfg = _load("fewshot", overrides, None, reduced, first=settings, last=[f"log.out_dir={out / key}"])
    t0 = time.perf_counter()
    if key == "zero_shot":
        res, history = _zero_shot(cfg), []
    else:
        s = run.run(cfg, verbose=False)["summary"]
        res = {"base": s.get("base_acc"), "new": s.get("new_acc"), "hm": s.get("hm")}
        history = json.loads((out / key / "results.json").read_text()).get("history", [])
    losses = [r["loss"] for r in history if r.get("kind") == "train_epoch"]
    return {"method": label, "strategy": cfg.strategy.name, **res, "epoch_loss": losses,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def _fewshot_demo(cfg, overrides, reduced: bool) -> dict:
    out = Path(cfg.log.out_dir)
    rows = [_fewshot_run(key, overrides, out, reduced) for key in FEWSHOT_METHODS]
    p = cfg.scenario.params
    return {"out": out, "rows": rows, "shots": p.shots, "epochs": cfg.strategy.params.epochs}


def _print_fewshot(res: dict) -> None:
    zs = res["rows"][0]["hm"]
    gain = lambda r: round(100 * (r["hm"] - zs), 1) + 0.0  # noqa: E731  (+ 0.0: no "-0.0")
    rows = [[r["method"], _pct(r["base"]), _pct(r["new"]), _pct(r["hm"]), f"{gain(r):+.1f}", f"{r['seconds']:.1f}"]
            for r in res["rows"]]  # fmt: skip
    print(_table(["method", "base", "new", "HM", "HM gain", "run s"], rows))


def _plot_fewshot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    xs = range(len(res["rows"]))
    for i, (key, label) in enumerate((("base", "base classes"), ("new", "new classes"), ("hm", "harmonic mean"))):
        vals = [100 * (r[key] or 0) for r in res["rows"]]
        bars = left.bar([x + (i - 1) * 0.27 for x in xs], vals, 0.27, label=label)
        left.bar_label(bars, fmt="%.0f", fontsize=6)
    left.set_xticks(list(xs), [r["method"] for r in res["rows"]], fontsize=8)
    left.set(ylabel="test top-1 (%)", ylim=(0, 119))
    left.legend(fontsize=8, loc="upper center", ncol=3)
    for r in res["rows"]:
        if r["epoch_loss"]:
            right.plot(range(1, len(r["epoch_loss"]) + 1), r["epoch_loss"], "-o", ms=3, label=r["method"])
    right.set(xlabel="epoch", ylabel="training loss", ylim=(0, None))
    right.set_title("training loss per epoch\n(PromptSRC's includes its regularisers)", fontsize=9)
    right.xaxis.get_major_locator().set_params(integer=True)
    right.legend(fontsize=8)
    title = f"digits base-to-new ({res['shots']} shots, {res['epochs']} epochs), ctta-tiny-clip-digits"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_kind(kind: str, cfg, overrides, reduced: bool) -> dict:
    """Run demo ``kind``, print its table and draw ``demo_accuracy.png``; returns its results (with ``out``)."""
    if kind == "cl":
        res = _cl_demo(cfg)
        _print_cl(cfg, res)
        return res
    if kind == "tta":
        res, draw = _tta_demo(cfg), _plot_tta
        _print_tta(res)
    else:
        res, draw = _fewshot_demo(cfg, overrides, reduced), _plot_fewshot
        _print_fewshot(res)
    draw(res["out"] / "demo_accuracy.png", res)
    return res


def demo_main(kind: str = "cl", overrides: list[str] | None = None, out_dir: str | None = None,
              reduced: bool = False) -> int:  # fmt: skip
    """Run a demo, print its table and write ``demo_results.json`` / ``demo_accuracy.png``; returns 0.

    Args:
        kind: ``cl`` (MVP vs a joint linear probe and naive fine-tuning), ``tta`` (zero-shot CLIP vs TPT) or
            ``fewshot`` (zero-shot CLIP vs CoOp, CoCoOp, MaPLe and PromptSRC on base-to-new digits).
        overrides: ``key=value`` overrides of the demo config (e.g. ``strategy.lr=0.01``).
        out_dir: output folder (default ``runs/demo`` / ``runs/demo_tta`` / ``runs/demo_fewshot``).
        reduced: a shorter run (fewer updates / samples), for tests.
    """
    if kind not in CONFIGS:
        raise ValueError(f"demo kind must be one of {sorted(CONFIGS)}, got {kind!r}")
    cfg = _load(kind, overrides, out_dir, reduced)
    t0 = time.perf_counter()
    bb = cfg.backbone.params
    methods = ", ".join(label for label, _ in FEWSHOT_METHODS.values()) if kind == "fewshot" else cfg.strategy.name
    print(f"ctta demo {kind}: {methods} on {cfg.scenario.name} ({cfg.scenario.params.dataset}), "
          f"backbone {bb.model} (pretrained={bb.pretrained}){' [reduced]' if reduced else ''}")  # fmt: skip
    res = _run_kind(kind, cfg, overrides, reduced)
    res["seconds_total"] = time.perf_counter() - t0
    out = res.pop("out")
    _write_json(out / "demo_results.json", {"kind": kind, "reduced": reduced, "backbone": f"{bb.model}", **res})
    print(f"({res['seconds_total']:.0f}s) wrote {out}/demo_results.json, demo_accuracy.png")
    return 0
