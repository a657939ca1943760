"""Helpers shared by the test modules (the one module they import from; test modules never import each other).

Paths and tiny-model settings, fake dataset layouts, a tiny linear online template, the kill plugin of the
kill/resume tests, a free TCP port, and the smoke-config contract (``run_contract`` / ``check_contract``), which
tests/test_contract.py runs on the CPU and tests/test_gpu.py on CUDA.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.plugins import SupervisedPlugin
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from ctta.data.avl import as_avl_dataset
from ctta.evaluation import make_evaluator
from ctta.templates import OnlineCLTemplate

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"
SMOKE_CONFIGS = sorted(SMOKE.glob("*.yaml"))

# The tiny ViT used across the suite (depth >= 6 so MVP's prompt layers 0-4 exist).
TINY_VIT = dict(
    model="vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=6, embed_dim=48, num_heads=3
)


def shipped_config_cases() -> list[tuple[Path, str | None]]:
    """Every shipped config (``configs/``, bases excluded), once per dataset it lists under ``_datasets_`` (None: it
    takes no dataset on the command line)."""
    from ctta.runner.compose import DATASETS_KEY
    from ctta.runner.config import read_yaml

    configs = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base" not in p.parts)
    return [(p, d) for p in configs for d in (sorted(read_yaml(p).get(DATASETS_KEY) or {}) or [None])]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it: parallel test workers never share one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Killer(SupervisedPlugin):
    """Raises ``KeyboardInterrupt`` after ``after_batches`` training iterations (a simulated kill)."""

    def __init__(self, after_batches: int) -> None:
        super().__init__()
        self.left = after_batches

    def after_training_iteration(self, strategy, **kw) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt("simulated kill")


# ------------------------------------------------------------------------------ a tiny linear online template
def linear_data(n=40, d=6, c=5, seed=0):
    """``n`` random ``d``-dim samples of ``c`` classes as an Avalanche dataset with ``targets``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    ds = TensorDataset(x, y)
    ds.targets = y.tolist()
    return as_avl_dataset(ds)


class UpdateRecorder(SupervisedPlugin):
    """Counts updates and records the targets of every training mini-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.updates, self.batches = 0, []

    def after_update(self, strategy, **kw) -> None:
        self.updates += 1

    def after_training_iteration(self, strategy, **kw) -> None:
        self.batches.append(strategy.mb_y.tolist())


class LinearOnline(OnlineCLTemplate):
    """The smallest online CL strategy: logits are ``model(mb_x)``."""

    def forward_logits(self):
        return self.model(self.mb_x)


def linear_strategy(train, test=None, iters=3, bs=8, every=16):
    """``(strategy, recorder, model)``: a linear 6 -> 5 model (frozen bias) on ``OnlineCLTemplate``."""
    model = nn.Sequential(nn.Linear(6, 5))
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay out of the optimiser
    rec = UpdateRecorder()
    opt = torch.optim.Adam([model[0].weight], lr=0.1)
    s = LinearOnline(model=model, optimizer=opt, num_classes=5, online_iters=iters, train_mb_size=bs, eval_mb_size=16,
                     anytime_eval_every=every, anytime_eval_dataset=test, device="cpu", plugins=[rec],
                     evaluator=make_evaluator())  # fmt: skip
    return s, rec, model


# ------------------------------------------------------------------------------ fake dataset layouts
def make_cifar(root, n_classes=10, per_class=3):
    """A ``cifar-100-python`` folder; returns the train labels in their native (interleaved) order."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    names = [f"class_{c}" for c in range(n_classes)]
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names}, fh)
    out = {}
    for split, k in (("train", per_class), ("test", 1)):
        labels = out[split] = [(7 * i) % n_classes for i in range(n_classes * k)]  # interleaved native order
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        data[:, 0] = np.arange(len(labels))[:, None, None]  # red = sample index
        data[:, 1, 0, 1] = 200  # one green pixel at (row 0, col 1)
        with open(base / split, "wb") as fh:
            pickle.dump({"data": data.reshape(len(labels), -1), "fine_labels": labels}, fh)
    return out["train"]


def save_img(path, value, size=(8, 8)):
    """A grey ``size`` RGB image of intensity ``value`` at ``path`` (folders created)."""
    save_rgb(path, (value, value, value), size)


def save_rgb(path, colour=(10, 20, 30), size=(12, 10)):
    """A plain ``colour`` RGB image of ``size`` at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_tiny(root):
    """A ``tiny-imagenet-200`` folder: 3 wnids (``wnids.txt`` order differs from the sorted folders), 2 + 1 images."""
    base = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # wnids.txt order differs from sorted folder order
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tshark\nn03\tcat\n")
    for w in wnids:
        for k in (1, 0):
            save_img(base / "train" / w / "images" / f"{w}_{k}.JPEG", 10 * k)
        (base / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    ann = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01")]
    for f, _ in ann:
        save_img(base / "val" / "images" / f, 5)
    (base / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t8\t8\n" for f, w in ann))


def make_imagenet_r(root, sizes=(4, 3, 3)):
    """An ``imagenet-r`` folder with ``sizes[c]`` 20 x 30 images of class ``c``."""
    base = root / "imagenet-r"
    for c, n in enumerate(sizes):
        for k in range(n):
            save_img(base / f"n0000000{c}" / f"img_{k}.jpg", 20 * c + k, size=(20, 30))
    (base / "README.txt").write_text("n00000000 goldfish\nn00000001 great white shark\n")


def make_fgvc_cub(root):
    """An ``FGVC/CUB_200_2011`` folder (2 classes; 4/2/2 train/val/test images each, json splits)."""
    base = root / "FGVC" / "CUB_200_2011"
    for split, n in {"train": 4, "val": 2, "test": 2}.items():
        anno = {}
        for i in range(n):
            for cid in ("001", "002"):
                rel = f"{cid}.bird/{split}_{i}.jpg"
                save_rgb(base / "images" / rel)
                anno[rel] = cid
        (base / f"{split}.json").write_text(json.dumps(anno))
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    return base


class Recorder(SupervisedPlugin, supports_distributed=True):
    """Global training loss of every update and the (gathered) outputs of every test-time mini-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []
        self.outputs: list[torch.Tensor] = []

    def after_backward(self, strategy, **kwargs) -> None:
        self.losses.append(float(strategy.loss.detach()))

    def after_eval_forward(self, strategy, **kwargs) -> None:
        if getattr(strategy, "eval_kind", None) is None:  # test-time runs (not the anytime evaluation)
            self.outputs.append(strategy.mb_output.detach().cpu().clone())

    def output_tensor(self) -> torch.Tensor | None:
        """Every recorded test-time output, in stream order (None without any)."""
        return torch.cat(self.outputs) if self.outputs else None


# ------------------------------------------------------------------------------ the smoke-config contract
CONTRACT_OVERRIDES = ("log.progress=false", "device=cpu")
# Per episodic test-time method, the overrides of its no-adaptation run (zero-shot): the contract checks that
# adapting changes every sample's prediction, so a method that never takes a step fails it.
NO_ADAPTATION = {"tpt": ("strategy.tta_steps=0",), "difftpt": ("strategy.tta_steps=0",),
                 "tfup": ("strategy.alpha=0",), "tfup_t": ("strategy.epochs=0", "strategy.ratio_alpha=0")}


@dataclass
class ContractRun:
    """A smoke run with what the contract compares: state before the run, the files after ``prepare``, results."""

    path: Path
    out: Path
    overrides: tuple[str, ...]
    ctx: Any
    results: dict
    backbone_before: dict[str, torch.Tensor]
    params_before: dict[str, torch.Tensor]
    trainable: set[str]
    after_prepare: list[str]
    outputs: torch.Tensor | None


def copy_run(run: ContractRun, dst: Path) -> Path:
    """A private copy of a shared run's output folder at ``dst`` (tests change copies, never the shared run)."""
    shutil.copytree(run.out, dst)
    return dst


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def own_cache_overrides(path: Path, out: Path) -> list[str]:
    """Overrides keeping a config's caches inside ``out`` (parallel test workers never share a cache folder)."""
    from ctta.runner.config import load_config

    return [f"strategy.diffusion.cache_dir={out}/views"] if hasattr(load_config(path).strategy, "diffusion") else []


def run_contract(path: Path, out: Path, overrides=()) -> ContractRun:
    """Run the smoke config ``path`` into ``out`` (contract overrides first, ``overrides`` win), recording what
    ``check_contract`` needs."""
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    overrides = (*CONTRACT_OVERRIDES, *own_cache_overrides(path, out), *overrides)
    ctx = prepare(load_config(path, [*overrides, f"log.out_dir={out}"]))
    after_prepare = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    model = ctx.strategy.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backbone_before = _state(ctx.backbone)
    rec = Recorder()
    ctx.strategy.plugins.append(rec)
    results = execute(ctx, verbose=False)
    return ContractRun(path, out, overrides, ctx, results, backbone_before, params_before, trainable, after_prepare,
                       rec.output_tensor())  # fmt: skip


def check_contract(run: ContractRun) -> None:
    """Trains (or adapts), loss finite, backbone bit-identical, only trainable parameters change, outputs written."""
    ctx, model = run.ctx, run.ctx.strategy.model
    # a training-free method (TFUP: its cache is built, not trained) declares it; its predictions must still adapt
    assert run.trainable or getattr(ctx.strategy, "training_free", False), "strategy has no trainable parameters"
    for k, v in _state(ctx.backbone).items():
        assert torch.equal(v, run.backbone_before[k]), f"backbone tensor {k} changed"
    before = run.params_before
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed <= run.trainable, f"frozen parameters changed: {sorted(changed - run.trainable)[:5]}"
    if ctx.strategy.zero_shot:  # a classifier built from texts: nothing to train, nothing may change
        assert not run.trainable and not changed, f"zero-shot strategy with trainable parameters: {sorted(changed)}"
    elif ctx.is_tta and getattr(ctx.strategy, "episodic", True):
        check_adapts(run)  # episodic: parameters are reset after every episode, so compare predictions
    else:
        assert changed, "no trainable parameter changed"
    assert torch.isfinite(torch.as_tensor(ctx.strategy.loss)).all(), f"loss not finite: {ctx.strategy.loss}"
    _check_outputs(run)


def _check_outputs(run: ContractRun) -> None:
    import math

    import pytest

    results, out, cfg = run.results, run.out, run.ctx.cfg
    assert results["summary"], "no summary metrics"
    assert all(math.isfinite(v) for v in results["summary"].values())
    for name in ("results.json", "metrics.csv", "config.yaml", "accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == pytest.approx(results["summary"])
    assert saved["seed"] == cfg.seed
    assert saved["versions"]["torch"] and saved["config"]["strategy"]["name"] == cfg.strategy.name


def check_adapts(run: ContractRun) -> None:
    """An episodic test-time method took a step on every sample: each prediction differs from the same run's
    without adaptation (``NO_ADAPTATION``)."""
    name = run.ctx.cfg.strategy.name
    assert name in NO_ADAPTATION, f"add {name!r} to tests/helpers.NO_ADAPTATION (its no-adaptation overrides)"
    assert run.outputs is not None, "no test-time outputs recorded"
    out = run.out.parent / f"{run.out.name}-no-adaptation"
    zero = run_contract(run.path, out, (*run.overrides, *NO_ADAPTATION[name]))
    assert zero.outputs is not None and zero.outputs.shape == run.outputs.shape
    same = (run.outputs == zero.outputs).all(-1)
    # fp32 on the CPU: every sample's step shows; reduced precision (CUDA) may round a small step away
    strict = torch.device(run.ctx.strategy.device).type == "cpu"
    failed = same.any() if strict else same.all()
    assert not failed, f"{int(same.sum())} of {len(same)} predictions equal the unadapted ones: no step taken"


# ------------------------------------------------------------------------------------- base-to-new end to end
def run_smoke(config_name: str, out: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``configs/smoke/<config_name>.yaml`` on the CPU into ``out`` (no plot; ``overrides``: more
    ``key=value`` settings); its results' summary."""
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    cfg = load_config(ROOT / "configs" / "smoke" / f"{config_name}.yaml",
                      [f"log.out_dir={out}", "log.plot=false", "device=cpu", *overrides])  # fmt: skip
    return run(cfg, verbose=False)["summary"]


def llm_search_on_class_incremental(name: str, tiny, answers: list[str], folder: Path, **kwargs: Any):
    """Language-model search strategy ``name`` built as an Avalanche user builds it (tiny CLIP, digit names, method
    ``kwargs``), its model a scripted one answering ``answers`` in order, and the tiny digits class-incremental
    benchmark of ``tests/_conformance_cases`` (two experiences): ``(strategy, benchmark)``."""
    from avalanche.training.plugins import EvaluationPlugin

    from ctta.data.digits import DIGIT_NAMES
    from ctta.registry import STRATEGIES
    from tests import _conformance_cases as cc

    model, tok = tiny
    script = folder / "answers.json"
    script.write_text(json.dumps(answers))
    strategy = STRATEGIES.get(name).builder(model=model, tokenizer=tok, classnames=list(DIGIT_NAMES),
                                            llm=f"scripted:{script}", evaluator=EvaluationPlugin(loggers=[]), **kwargs)
    return strategy, cc.class_incremental(*cc.digits(40, 40))


def changed_by_training(strategy, experience) -> set[str]:
    """Train ``strategy`` on ``experience`` (its loss must stay finite); the state-dict entries that changed."""
    frozen = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    strategy.train(experience)
    assert torch.isfinite(strategy.loss)
    return {k for k, v in strategy.model.state_dict().items() if not torch.equal(v, frozen[k])}


def assert_base_new_hm(summary: dict[str, Any]) -> None:
    """A base-to-new summary has base/new accuracies and their harmonic mean."""
    assert {"base_acc", "new_acc", "hm"} <= set(summary)
    b, n = summary["base_acc"], summary["new_acc"]
    assert abs(summary["hm"] - (2 * b * n / (b + n) if b + n else 0.0)) < 1e-9


# ------------------------------------------------------------------------------------------------- README
def readme_section(title: str) -> str:
    """The text of the README section ``## <title>`` (up to the next ``## `` heading)."""
    return (ROOT / "README.md").read_text().split(f"## {title}", 1)[-1].split("\n## ", 1)[0]


#: the Avalanche-script example (run and checked by tests/test_script_numbers.py, so test_readme skips it)
SCRIPT_SECTION = "Using a strategy from an Avalanche script"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)
