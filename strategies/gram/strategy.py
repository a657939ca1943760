"""GRAM: gradient-regulated meta-prompt learning (Li et al., "Gradient-Regulated Meta-Prompt Learning for
Generalizable Vision-Language Models", ICCV 2023, arXiv 2303.06571). **Unofficial, from the paper**: no official code
was found (spec ``clip-prompt-learners.md`` section 19); only the abstract-level description was available. Nothing
is copied from any code.

GRAM on CoOp, two stages:

1. meta-training (optional, run once, cached to ``meta_init``): from image-text pairs organised into meta-tasks by
   cross-modal hierarchical clustering (``tasks.py``), meta-learn (i) the soft-prompt initialisation (the CoOp
   context ``ctx``) and (ii) a gradient-regulating function ``r_beta`` (``meta.py``: an element-wise, bounded
   scaling of the context gradient) with a first-order bi-level update: inner regulated SGD steps on a task's support
   set, outer update on its query set.
2. few-shot training: CoOp (cross-entropy on ``scale * cos(f, g_c)``, Dassl SGD + warm-up + cosine) starting from the
   meta-learned context, each step using the regulated gradient: ``GRAM.optimizer_step`` replaces ``ctx.grad`` by
   ``r_beta(ctx.grad)`` before the optimiser's step (weight decay and momentum act on the regulated gradient as on
   any gradient). The regulator ``beta`` is a buffer in stage 2 (meta-learned, not trained).

Switches: ``meta_init: <file>`` loads stage 1 (or writes it there after running it from ``meta_data``);
``meta_data: <pairs.jsonl|.csv>`` / ``generated`` the stage-1 data; ``regulate: false`` plain CoOp steps (from the
meta-learned context if one is loaded). Without ``meta_init`` and ``meta_data`` there is no stage 1: the context
starts from ``ctx_init`` and ``beta = 0`` (``r_beta`` the identity), i.e. CoOp. The ``meta_init`` file records the
stage-1 settings and data source; it is loaded whenever it exists (delete it to meta-train again).

Choices the paper (as available: the abstract) leaves open, with the value taken and why:

- Base prompt method: CoOp at its official base-to-new settings (``vit_b16_ctxv1``: 4 tokens from "a photo of a",
  SGD lr 0.002, batch 32, 200 epochs), the first method GRAM is applied to in the abstract.
- Regulating function: ``r_beta(g) = 2 sigmoid(beta) * g`` with ``beta`` of the context's shape, zero-initialised
  (identity at the start, each entry's step bounded in (0, 2) x the raw step); the lightest element-wise form, the
  abstract's "lightweight gradient regulating function".
- Meta-tasks: k-means on CLIP image features into 8 clusters, then k-means on caption features inside each (4
  sub-clusters): 32 tasks; each visit splits a task's pairs at random into support / query halves of at most 32
  pairs. Meta-task loss: cross-entropy of each image over the set's distinct captions prompted as
  ``[SOS] ctx <caption> .`` (the captions take the class names' place); image features are the frozen CLIP's.
- Bi-level update: first order (inner gradients held constant, FOMAML-style; the abstract gives no order), 1 inner
  SGD step at the stage-2 lr 0.002 (so ``beta`` is learned for the step size it regulates), Adam at 1e-3 for the
  outer update, 4 tasks per outer step, 200 outer steps.
- Data: CC3M-like pairs are the user's file (``meta_data``; images resized on the short side to CLIP's input size
  and centre-cropped, CLIP's mean / std); smoke runs and tests use ``meta_data: generated``: 240 generated
  multi-label pattern images (12 labels, at most 2 per image) at CLIP's input size, captioned from their labels'
  words, sharing no image or class with the evaluation data (``tasks.py``).
- Stage 1 runs on the run's device without autocast: the meta-parameters are fp32, the frozen CLIP keeps the
  strategy's precision (half under ``prec: fp16`` on CUDA); its own seed ``meta_seed`` (clustering, task sampling
  and splits) makes one cached file serve every run seed.
- ``csc`` (class-specific contexts) is refused: the meta-learned initialisation is one shared context.

Trainable parameters on ViT-B/16 (text width 512): stage 1 meta-learns ``ctx`` + ``beta`` = 4 x 512 + 4 x 512 =
4,096; stage 2 trains ``ctx``, 2,048 (``tests/test_gram.py``). No published count was found.

Deviations: none from the paper as far as it is known; everything above is a choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ctta.strategies.gram.meta import caption_set_loss, meta_loss, regulate, split_task
from ctta.strategies.gram.tasks import (
    cluster_tasks,
    generated_pairs,
    pair_features,
    read_pairs,
    require_pairs_file,
)

from ctta.clip_prompting.context import ContextConfig, ContextModel
from ctta.clip_prompting.template import PromptLearnerTemplate, init_generator
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["GRAM", "GRAMConfig", "GRAMModel", "meta_plan", "meta_train"]

META_FIELDS = ("meta_image_clusters", "meta_text_clusters", "meta_iters", "meta_batch", "inner_steps", "inner_lr",
               "meta_lr", "task_size", "meta_seed")  # fmt: skip


@dataclass(frozen=True)
class GRAMConfig(ContextConfig):
    """GRAM settings: CoOp's base-to-new defaults plus the meta-training stage (choices: the module docstring)."""

    meta_init: str = ""  # stage-1 file: loaded if it exists, else written after stage 1 runs from meta_data
    meta_data: str = ""  # stage-1 pairs: a .jsonl / .csv of image + caption, or "generated"; "": no stage 1
    regulate: bool = True  # stage 2 steps with the regulated gradient r_beta(g)
    meta_image_clusters: int = ranged(8, ge=1)
    meta_text_clusters: int = ranged(4, ge=1)
    meta_iters: int = ranged(200, ge=0)  # outer steps
    meta_batch: int = ranged(4, ge=1)  # tasks per outer step
    inner_steps: int = ranged(1, ge=1)
    inner_lr: float = ranged(0.002, gt=0)
    meta_lr: float = ranged(1e-3, gt=0)  # Adam, outer update of ctx and beta
    task_size: int = ranged(32, ge=1)  # at most this many pairs per support / query set
    meta_seed: int = 0  # clustering and task sampling


class GRAMModel(ContextModel):
    """Frozen CLIP + CoOp context ``ctx`` + the regulator ``beta`` (buffer ``regulator``, the context's shape)."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: GRAMConfig = GRAMConfig(), *, generator=None) -> None:
        if cfg.csc:
            raise ValueError("GRAM meta-learns one shared context: csc=True is not supported")
        super().__init__(clip_model, tokenizer, classnames, cfg, generator=generator)
        self.register_buffer("regulator", torch.zeros_like(self.ctx, dtype=torch.float32))

    def regulate_grad_(self) -> None:
        """Replace ``ctx.grad`` by ``r_beta(ctx.grad)`` (stage 2's gradient transform)."""
        if self.ctx.grad is not None:
            self.ctx.grad = regulate(self.ctx.grad, self.regulator)

    def load_meta(self, state: dict) -> None:
        """Start from a stage-1 state ``{"ctx", "regulator", ...}``."""
        for key in ("ctx", "regulator"):
            if tuple(state[key].shape) != tuple(getattr(self, key).shape):
                raise ValueError(f"meta_init: {key} of shape {tuple(state[key].shape)}, the model's is "
                                 f"{tuple(getattr(self, key).shape)} (another CLIP or n_ctx / ctx_init)")  # fmt: skip
        with torch.no_grad():
            self.ctx.copy_(state["ctx"])
            self.regulator.copy_(state["regulator"])


def meta_train(model: GRAMModel, pairs, cfg: GRAMConfig, device) -> dict:
    """Stage 1 on ``pairs``: meta-learn ``ctx`` and ``beta`` (module docstring); the model's class names and
    parameters are left as they were. Returns ``{"ctx", "regulator", "tasks", "source", "settings"}``."""
    names = list(model.classnames)
    f_img, f_txt = pair_features(model.clip, model.tokenizer, pairs, device)
    tasks = cluster_tasks(f_img.cpu(), f_txt.cpu(), cfg.meta_image_clusters, cfg.meta_text_clusters, cfg.meta_seed)
    if not tasks:
        raise ValueError(f"meta_data {pairs.source!r}: no meta-task of two or more pairs")
    theta0 = model.ctx.detach().float().clone().requires_grad_(True)
    beta = model.regulator.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta0, beta], lr=cfg.meta_lr)
    rng = np.random.default_rng(cfg.meta_seed)
    for _ in range(cfg.meta_iters):
        opt.zero_grad()
        chosen = rng.choice(len(tasks), size=min(cfg.meta_batch, len(tasks)), replace=False)
        for t in chosen:
            support, query = split_task(tasks[t], rng, cfg.task_size)
            s_loss, q_loss = (caption_set_loss(model, f_img, pairs.captions, i) for i in (support, query))
            (meta_loss(theta0, beta, s_loss, q_loss, cfg.inner_steps, cfg.inner_lr) / len(chosen)).backward()
        opt.step()
    model.set_classnames(names)
    settings = {k: v for k, v in asdict(cfg).items() if k in META_FIELDS}
    return {"ctx": theta0.detach().cpu(), "regulator": beta.detach().cpu(), "tasks": len(tasks),
            "source": pairs.source, "settings": settings}  # fmt: skip


def meta_plan(cfg: GRAMConfig) -> str:
    """What stage 1 does: ``"load"`` (``meta_init`` exists), ``"train"`` (from ``meta_data``) or ``""`` (no stage
    1); a missing file raises ``FileNotFoundError`` naming its setting (checked when the strategy is built)."""
    if cfg.meta_init and Path(cfg.meta_init).expanduser().is_file():
        return "load"
    if cfg.meta_data:
        if cfg.meta_data != "generated":
            require_pairs_file(cfg.meta_data)
        return "train"
    if cfg.meta_init:
        raise FileNotFoundError(f"meta_init: no such file {cfg.meta_init!r} (set meta_data to the image-text pairs "
                                "to run GRAM's meta-training once and write it there)")  # fmt: skip
    return ""


@STRATEGIES.register("gram", config=GRAMConfig)
class GRAM(PromptLearnerTemplate):
    """GRAM as an Avalanche strategy: stage 1 (load, or run and cache) before the first experience's optimiser, then
    CoOp's epochs over ``ctx`` with the regulated gradient."""

    config_class = GRAMConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: GRAMConfig) -> GRAMModel:
        meta_plan(cfg)  # a missing stage-1 file fails here, before any training
        return GRAMModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def make_optimizer(self, **kwargs) -> None:
        if not getattr(self, "meta_done", False):
            self.meta_stage()
        super().make_optimizer(**kwargs)

    def meta_stage(self) -> dict | None:
        """Stage 1: load ``meta_init``, or run it on ``meta_data`` (and write ``meta_init``); None: no stage 1."""
        cfg, plan = self.cfg, meta_plan(self.cfg)
        state = None
        if plan == "load":
            state = torch.load(Path(cfg.meta_init).expanduser(), map_location="cpu", weights_only=True)
        elif plan == "train":
            size = self.model.clip.visual.image_size
            pairs = (generated_pairs(img_size=int(size[0] if isinstance(size, (tuple, list)) else size))
                     if cfg.meta_data == "generated" else read_pairs(cfg.meta_data))  # fmt: skip
            state = meta_train(self.model, pairs, cfg, self.device)
            if cfg.meta_init:
                path = Path(cfg.meta_init).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(state, path)
        if state is not None:
            self.model.load_meta(state)
        self.meta_done = True
        return state

    def optimizer_step(self) -> None:
        if self.cfg.regulate:
            self.model.regulate_grad_()
        super().optimizer_step()
