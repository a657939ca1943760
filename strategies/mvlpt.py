"""MVLPT: multitask vision-language prompt tuning (Shen et al., "Multitask Vision-Language Prompt Tuning", WACV 2024,
arXiv 2211.11720). Official code: sIncerass/MVLPT@6fa518b ``trainers/mvlpt.py`` (MIT; behaviour read,
re-implemented on open_clip's own modules, no code copied).

Variants (``variant``; the scripts' ``TRAINER`` argument, one ``n_ctx`` for both towers):

* ``coop`` (MCoOp): text context ``ctx`` ``(n, D)`` (N(0, 0.02^2), or words of ``ctx_init``); class token in the
  ``middle`` (``[SOS] ctx_1..ctx_{n/2} <name> ctx_{n/2+1}..ctx_n . [EOT]``).
* ``vpt`` (MVPT): deep visual prompts ``v_0`` ``(n, W)`` and ``v_1..v_{L-1}`` (one set per vision layer), drawn from
  ``U(-a, a)``, ``a = sqrt(6 / (3 p^2 + W))`` (p the patch size); inserted **after the CLS token, after ``ln_pre``**,
  and at layer ``i >= 1`` replacing tokens ``1..n``; the text is the hard ``a photo of a <name>.``.
* ``upt`` (MUPT, the default): both, coupled: ``ctx`` and every visual prompt are mapped to ``project_dim`` (128) by
  ``Linear(D -> 128)`` / ``Linear(W -> 128)``, concatenated, passed through one transformer block (width 128, 1 head,
  QuickGELU; in fp32) and mapped back by ``Linear(128 -> D)`` / ``Linear(128 -> W)``.

Reference quirks kept as defaults (switches): the coupling transformer is fed ``(1, N, 128)`` as a sequence-first
tensor, so every prompt token is a sequence of length one and attends only to itself (``token_mixing: false``; true
lets the N prompt tokens attend to each other); multitask logit masking (``label_pertask``, off in the scripts)
multiplies the other datasets' logits by 0 rather than excluding them (needs the benchmark's ``task_classes``, e.g.
``few_shot_multi``). Loss: cross-entropy. Defaults: ``configs/trainers/MVLPT/vit_b16.yaml`` (SGD lr 0.002, batch 32,
200 epochs, warm-up 1 epoch at 1e-5, cosine) and ``scripts/mvlpt/main_mt_coopdata_cut.sh`` (middle class token,
``prec`` fp16). The protocol's source -> target steps: ``prompts_out`` saves the prompt learner after training,
``init_from`` starts from one or several such files averaged (``scripts/avg_ckpt.py``, the average over seeds).

Trainable parameters, ViT-B/16 (D 512, W 768, 12 layers): UPT n_ctx 4: 566,400 (ctx 2,048; visual prompts 36,864;
coupling 527,488: maps 329,216 + transformer block 198,272); VPT: 36,864 (n_ctx 4) / 147,456 (16); CoOp: 2,048 (4) /
8,192 (16). The paper and repository publish no parameter count.

Deviations: training keeps the last epoch's prompts (the scripts select ``TEST.FINAL_MODEL best_val``); soft
(multi-label) targets of ELEVATER sets and the CoCoOp variant are not implemented; ``prec: fp16`` applies on CUDA only;
``CUT_CONTEXTLEN`` is the exact truncation of the text (``truncate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from ctta.scenarios.few_shot_multi import stream_key
from open_clip.transformer import QuickGELU, Transformer
from torch import nn

from ctta.clip_prompting.coupling import seeded_linear
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import vision_width
from ctta.fields import ranged
from ctta.metrics import SummaryMetric
from ctta.registry import STRATEGIES
from ctta.templates.benchmark_info import attached_info, origin_info, warn_once

__all__ = ["MVLPT", "DatasetAccuracy", "MVLPTConfig", "MVLPTModel", "UPTCoupling", "encode_image_vpt", "vpt_init_bound"]

VARIANTS = ("upt", "vpt", "coop")


@dataclass(frozen=True)
class MVLPTConfig(PromptLearnerConfig):
    epochs: int = ranged(200, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.002, gt=0)
    variant: str = "upt"  # upt (text + visual, coupled) | vpt (visual only) | coop (text only)
    n_ctx: int = ranged(4, ge=1)  # prompt tokens per tower (the scripts' NCTX: 4 for UPT, 16 for VPT / CoOp)
    ctx_init: str = ""  # text context words ("": random)
    class_token_position: str = "middle"  # end | middle | front (text context)
    vpt_deep: bool = True  # one visual prompt set per layer (False: the input layer only)
    vpt_dropout: float = 0.0
    project_method: str = "transformer"  # UPT coupling: transformer | identity (uncoupled)
    project_dim: int = 128
    token_mixing: bool = False  # False: the reference (each prompt token alone); True: tokens attend to each other
    label_pertask: bool = False  # multiply the logits of the other datasets by 0 (MULTITASK_LABEL_PERTASK)
    init_from: tuple[str, ...] = ()  # prompt files (prompts_out) averaged into the starting prompts
    prompts_out: str = ""  # save the trained prompt learner here after each training experience


def vpt_init_bound(patch: int, width: int) -> float:
    """VPT's uniform bound ``sqrt(6 / (3 * patch^2 + width))``."""
    return math.sqrt(6.0 / (3 * patch * patch + width))


class _FP32(nn.Module):
    """Holds a module whose floating parameters stay fp32 when the model is cast (``model.half()``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for p in self.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        return self


def _seeded(generator: torch.Generator | None, build):
    """``build()`` under the global RNG, forked and seeded from ``generator`` when one is given."""
    if generator is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        return build()


class UPTCoupling(nn.Module):
    """MUPT's coupling of the text context ``(n, D)`` and the visual prompts ``(L, m, W)`` through a shared
    1-layer, 1-head transformer of width ``dim`` (a tower whose width is ``dim`` is not projected)."""

    def __init__(self, d_text: int, d_vision: int, dim: int = 128, *, token_mixing: bool = False,
                 generator: torch.Generator | None = None) -> None:  # fmt: skip
        super().__init__()
        self.token_mixing = token_mixing
        lin = lambda a, b: nn.Identity() if a == b else seeded_linear(a, b, generator)  # noqa: E731
        self.text_pre, self.text_post = lin(d_text, dim), lin(dim, d_text)
        self.vision_pre, self.vision_post = lin(d_vision, dim), lin(dim, d_vision)
        self.mixer = _FP32(_seeded(generator, lambda: Transformer(dim, 1, 1, act_layer=QuickGELU)))

    def forward(self, ctx: torch.Tensor, vpt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ctx', vpt')`` of the shapes of ``ctx`` ``(n, D)`` and ``vpt`` ``(L, m, W)``."""
        n, (layers, m, w) = ctx.shape[0], vpt.shape
        z = torch.cat([self.text_pre(ctx), self.vision_pre(vpt.reshape(layers * m, w))], dim=0)  # (N, dim)
        seq = z.float()[None] if self.token_mixing else z.float()[:, None]  # (1, N, dim) or (N, 1, dim)
        z = self.mixer.module(seq).reshape(z.shape).to(ctx.dtype)
        return self.text_post(z[:n]), self.vision_post(z[n:]).reshape(layers, m, w)


def encode_image_vpt(
    clip_model: nn.Module, images: torch.Tensor, shallow: torch.Tensor, deep: torch.Tensor | None = None,
    dropout: nn.Module | None = None,
) -> torch.Tensor:  # fmt: skip
    """Image features with VPT prompts: ``shallow`` ``(n, W)`` inserted after the CLS token (after ``ln_pre``);
    ``deep[i-1]`` ``(n, W)`` replacing tokens ``1..n`` at layer ``i`` for ``i = 1..len(deep)``."""
    visual = clip_model.visual
    vision_width(clip_model)
    drop = dropout or nn.Identity()
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g*g, W)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(visual.patch_dropout(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)))
    n, b = shallow.shape[0], x.shape[0]
    x = torch.cat([x[:, :1], drop(shallow.expand(b, -1, -1)).to(x.dtype), x[:, 1:]], dim=1)
    deep = () if deep is None else deep
    for i, blk in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], drop(deep[i - 1].expand(b, -1, -1)).to(x.dtype), x[:, 1 + n :]], dim=1)
        x = blk(x)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


class MVLPTModel(PromptedCLIP):
    """Frozen CLIP + ``ctx`` ``(n, D)`` (coop, upt), ``vpt`` ``(n, W)`` and ``vpt_deep`` ``(L-1, n, W)`` (vpt, upt),
    ``coupling`` (upt with ``project_method: transformer``)."""

    context_is_the_prompt = False

    def __init__(self, clip_model, tokenizer, classnames, cfg: MVLPTConfig = MVLPTConfig(), *, generator=None) -> None:
        if cfg.variant not in VARIANTS or cfg.project_method not in ("transformer", "identity"):
            raise ValueError(f"variant must be one of {VARIANTS} and project_method transformer | identity")
        text_ctx, visual = cfg.variant in ("upt", "coop"), cfg.variant in ("upt", "vpt")
        if text_ctx:
            layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, 0 if cfg.ctx_init else cfg.n_ctx,
                                        generator=generator)  # fmt: skip
            position = cfg.class_token_position
        else:
            layout, ctx0, position = ["a photo of a"], None, "end"  # the reference's hard VPT prompt
        super().__init__(clip_model, tokenizer, classnames, layout, position=position, truncate=cfg.truncate)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype)) if text_ctx else None
        self.vpt = self.vpt_deep = self.coupling = None
        self.vpt_dropout = nn.Dropout(cfg.vpt_dropout)
        if visual:
            self._init_vpt(clip_model, cfg, generator)
        if text_ctx and visual and cfg.project_method == "transformer":
            self.coupling = UPTCoupling(self.ctx.shape[-1], self.vpt.shape[-1], cfg.project_dim,
                                        token_mixing=cfg.token_mixing, generator=generator)  # fmt: skip

    def _init_vpt(self, clip_model, cfg: MVLPTConfig, generator) -> None:
        w, patch = vision_width(clip_model), int(clip_model.visual.conv1.weight.shape[-1])
        a, layers = vpt_init_bound(patch, w), len(clip_model.visual.transformer.resblocks)
        draw = lambda *shape: (torch.rand(*shape, generator=generator) * 2 - 1) * a  # noqa: E731
        dtype = clip_model.visual.conv1.weight.dtype
        self.vpt = nn.Parameter(draw(cfg.n_ctx, w).to(dtype))
        if cfg.vpt_deep and layers > 1:
            self.vpt_deep = nn.Parameter(draw(layers - 1, cfg.n_ctx, w).to(dtype))

    def prompts(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(ctx, v_0, [v_1..v_{L-1}])`` after the coupling (None where the variant has none)."""
        if self.coupling is None:
            return self.ctx, self.vpt, self.vpt_deep
        v = self.vpt[None] if self.vpt_deep is None else torch.cat([self.vpt[None], self.vpt_deep])
        ctx, v = self.coupling(self.ctx, v)
        return ctx, v[0], (v[1:] if self.vpt_deep is not None else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ctx, v0, deep = self.prompts()
        g = self.text(ctx)  # (C, E)
        if v0 is None:
            f = self.clip.visual(images.to(self.clip.visual.conv1.weight.dtype))
        else:
            f = encode_image_vpt(self.clip, images, v0, deep, self.vpt_dropout)
        return self.logits(f, g)


def task_mask(task_of: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` 1 where class ``c`` belongs to the dataset of ``labels[b]``, else 0 (``task_of``: ``(C,)``)."""
    return (task_of[None, :] == task_of[labels][:, None]).float()


def load_averaged(paths) -> dict[str, torch.Tensor]:
    """The element-wise mean of the prompt state dicts saved at ``paths`` (``scripts/avg_ckpt.py``)."""
    dicts = [torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in paths]
    return {k: sum(d[k].float() for d in dicts) / len(dicts) for k in dicts[0]}


def prompt_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``model`` by name (the prompt learner)."""
    return {k: v.detach().float().cpu() for k, v in model.named_parameters() if v.requires_grad}


class DatasetAccuracy(SummaryMetric, PluginMetric):
    """Top-1 accuracy on each dataset's test stream of a multi-dataset benchmark (``few_shot_multi``: streams
    ``test_<dataset>`` of its record's ``dataset_names``) and their mean (the reference's ``MULTITASK_EVALKEY:
    average``). ``result()`` -> ``{"acc_<stream>": a, ..., "mean_dataset_acc": m}``; nothing on other benchmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {}
        self._counts: dict[str, list[int]] = {}

    def reset(self) -> None:
        self.last, self._counts = {}, {}

    def result(self) -> dict[str, float]:
        out = {f"acc_{k}": v for k, v in self.last.items()}
        if self.last:
            out["mean_dataset_acc"] = sum(self.last.values()) / len(self.last)
        return out

    def _key(self, strategy) -> str | None:
        try:
            stream = strategy.experience.origin_stream
            info = attached_info(getattr(stream, "benchmark", None))
        except Exception:
            return None
        names = info.dataset_names if info is not None else None
        return stream.name if names and stream.name in {stream_key(n) for n in names} else None

    def before_eval(self, strategy) -> None:
        self._counts = {}

    def after_eval_iteration(self, strategy) -> None:
        key = self._key(strategy)
        if key is not None:
            c = self._counts.setdefault(key, [0, 0])
            c[0] += int((strategy.mb_output.argmax(dim=-1) == strategy.mb_y).sum())
            c[1] += int(strategy.mb_y.numel())

    def after_eval(self, strategy):
        self.last.update({k: c / n for k, (c, n) in self._counts.items() if n})
        step = strategy.clock.train_iterations
        return [MetricValue(self, f"Top1_Acc_Dataset/eval_phase/{k}", v, step) for k, v in self.result().items()]

    def __str__(self) -> str:
        return "DatasetAccuracy"


@STRATEGIES.register("mvlpt", config=MVLPTConfig)
class MVLPT(PromptLearnerTemplate):
    """MVLPT as an Avalanche strategy: ``model`` is an ``MVLPTModel``; SGD over its prompts and coupling; multitask
    training on a multi-dataset benchmark (``few_shot_multi``)."""

    config_class = MVLPTConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: MVLPTConfig) -> MVLPTModel:
        model = MVLPTModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
        if cfg.init_from:
            state, own = load_averaged(cfg.init_from), dict(model.named_parameters())
            if set(state) != set(prompt_state(model)):
                raise ValueError(f"init_from: prompt names {sorted(state)} differ from {sorted(prompt_state(model))}")
            with torch.no_grad():
                for k, v in state.items():
                    own[k].copy_(v.to(own[k].dtype))
        return model

    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        return (*super().extra_metrics(cfg), DatasetAccuracy())

    def _task_of(self, n_logits: int) -> torch.Tensor | None:
        """Dataset index of every label (the record's ``task_classes``), None when the head is not the union's."""
        info = origin_info(self.experience)
        groups = info.task_classes if info is not None else None
        if not groups:
            warn_once(self, "pertask", "label_pertask: the benchmark has no task_classes; logits are not masked")
            return None
        task_of = torch.empty(sum(len(g) for g in groups), dtype=torch.long)
        for t, g in enumerate(groups):
            task_of[list(g)] = t
        return task_of.to(self.device) if len(task_of) == n_logits else None

    def forward_train(self) -> torch.Tensor:
        out = super().forward_train()
        if not self.cfg.label_pertask:
            return out
        task_of = self._task_of(out.shape[1])
        return out if task_of is None else out * task_mask(task_of, self.mb_y)

    forward_eval = forward_train

    def _after_training_exp(self, **kwargs) -> None:
        if self.cfg.prompts_out:
            from pathlib import Path

            Path(self.cfg.prompts_out).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": prompt_state(self.model)}, self.cfg.prompts_out)
        super()._after_training_exp(**kwargs)
