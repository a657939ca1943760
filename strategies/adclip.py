"""AD-CLIP: domain-agnostic prompts from image style and content for unsupervised domain adaptation (Singha et al.,
"AD-CLIP: Adapting Domains in Prompt Space Using CLIP", ICCV Workshops 2023, arXiv 2308.05659). Official code:
mainaksingha01/AD-CLIP@c82d861 ``trainers/adclip_vitB16.py:{AdaIN,domain_projector,image_projector,
style_mapping_projector,PromptLearner,CustomCLIP,entropy_loss,ADCLIPB16.forward_backward}``, ``clip/model.py``
(the image tower also returns every layer's tokens), ``configs/trainer/vitB16.yaml`` (MIT; behaviour read,
re-implemented on open_clip, no code copied; spec ``remaining-seed-systems.md`` D1).

The frozen image tower's J layer outputs (detached) give, per image, with AdaIN statistics per layer (token mean
``mu`` and ``sigma = sqrt((sum (x - mu)^2 + 2.3e-8) / L)``):

* **domain tokens** (J): ``Linear(256 -> D)(Linear(W -> 256)((mu + sigma) / 2))``, one projector per layer;
* **image tokens** (``n_img_ctx`` = 4): per layer ``Linear(W -> D)`` of the token mean, stacked ``(J, D)`` and
  mixed over layers by ``Linear(J -> 1)``; the reference applies the *same* head four times, so the four tokens are
  equal (reproduced; ``shared_image_head: false`` gives each its own head);
* **style-mapping tokens** (J, the source-free path): ``[mu; sigma]`` averaged in adjacent pairs (``2W -> W``) ->
  ``Linear(W -> 384)`` -> ReLU -> ``Linear(384 -> D)``.

Prompt of an image: ``[SOS] [source domain tokens (J)] [target domain tokens (J)] [its image tokens] <name>. [EOT]``,
the source and target images of a batch paired by index; text features per image (CoCoOp-style). Loss: cross-entropy
on the source logits + 0.1 MSE(source domain tokens, source style-mapping tokens) + 0.01 entropy(target
probabilities, each class column L2-normalised over the batch first, as the reference) + KL(softmax of the target
text features || log-softmax of the source ones, both over the *class* axis, ``batchmean``). Adam lr 0.01 (wd 5e-4),
batch 16 source + 16 target, 50 epochs, cosine after one warm-up epoch at 1e-5; an epoch is one pass over the source.

The target images are the benchmark's ``target`` stream (``scenarios/domain_adaptation``), else, on a plain Avalanche
benchmark, its test stream's images, else the training experience's own (always read through ``UnlabelledImages``:
never a label). Inference is source-free: the
source domain tokens of a test image come from the style-mapping network applied to
the image itself (``source_tokens: style``; ``self``: its own domain tokens).

Deviations: the reference computes its loss only under ``amp`` (fp16 / fp32 leave it undefined) and its test path
calls the two-image model with one image (it cannot run as released); ctta computes the loss in every precision and
evaluates source-free as above. The layer count J and the widths come from the CLIP (the reference hard-codes ViT-B/16's
12 / 768 / 512); the entropy's Python double loop is vectorised (same value). An epoch's target batches cycle over
the target set (Dassl's ``COUNT_ITER: train_x``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import MASKED_LOGIT, PromptLearnerConfig, PromptLearnerTemplate
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import vision_width
from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.templates.benchmark_info import _attr, origin_benchmark, stream_dataset
from ctta.templates.transductive import TARGET_STREAM, UnlabelledImages

__all__ = ["ADCLIP", "ADCLIPConfig", "ADCLIPModel", "adain_stats", "adclip_entropy", "text_kl"]


def adain_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token mean and std of ``(B, L, W)`` tokens: ``mu``, ``sqrt((sum (x - mu)^2 + 2.3e-8) / L)``."""
    mu = x.mean(1)
    return mu, (((x - mu[:, None]) ** 2).sum(1) + 2.3e-8).div(x.shape[1]).sqrt()


def adclip_entropy(probs: torch.Tensor) -> torch.Tensor:
    """The reference's entropy term: L2-normalise each class column over the batch, then the mean row entropy."""
    p = F.normalize(probs, dim=0)
    return -(p * (p + 1e-8).log()).sum(1).mean()


def text_kl(source_text: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
    """``KLDiv(log_softmax(source, dim=1), softmax(target, dim=1), batchmean)`` of ``(B, C, E)`` text features."""
    return F.kl_div(F.log_softmax(source_text, dim=1), F.softmax(target_text, dim=1), reduction="batchmean")


class _TwoLayerPerLayer(nn.Module):
    """One ``Linear(W -> hidden)`` (``down``) and one ``Linear(hidden -> D)`` (``up``) per vision layer."""

    def __init__(self, layers: int, width: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(width, hidden) for _ in range(layers))
        self.up = nn.ModuleList(nn.Linear(hidden, dim) for _ in range(layers))


class DomainProjector(_TwoLayerPerLayer):
    """Per layer ``Linear(hidden -> D)(Linear(W -> hidden)((mu + sigma) / 2))`` -> ``(B, J, D)``."""

    def forward(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for x, down, up in zip(tokens, self.down, self.up):
            mu, sigma = adain_stats(x)
            out.append(up(down((mu + sigma) / 2)))
        return torch.stack(out, 1)


class ImageProjector(nn.Module):
    """Per layer ``Linear(W -> D)`` of the token mean, mixed over layers by ``Linear(J -> 1)`` -> ``(B, n, D)``."""

    def __init__(self, layers: int, width: int, dim: int, n_tokens: int, shared_head: bool = True) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(width, dim) for _ in range(layers))
        self.heads = nn.ModuleList(nn.Linear(layers, 1) for _ in range(1 if shared_head else n_tokens))
        self.n_tokens = n_tokens

    def forward(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        feat = torch.stack([p(x.mean(1)) for x, p in zip(tokens, self.proj)], 2)  # (B, D, J)
        heads = [self.heads[i % len(self.heads)] for i in range(self.n_tokens)]
        return torch.stack([h(feat).squeeze(-1) for h in heads], 1)


class StyleMappingProjector(_TwoLayerPerLayer):
    """Per layer ``[mu; sigma]`` averaged in adjacent pairs -> ``Linear(W -> hidden)`` -> ReLU -> ``Linear(hidden
    -> D)`` -> ``(B, J, D)``."""

    def forward(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for x, down, up in zip(tokens, self.down, self.up):
            s = torch.cat(adain_stats(x), -1)  # (B, 2W)
            out.append(up(F.relu(down(s.view(s.shape[0], -1, 2).mean(-1)))))
        return torch.stack(out, 1)


@dataclass(frozen=True)
class ADCLIPConfig(PromptLearnerConfig):
    """AD-CLIP settings (official ``configs/trainer/vitB16.yaml`` and ``forward_backward``)."""

    epochs: int = ranged(50, ge=1)
    batch_size: int = ranged(16, ge=1)
    lr: float = ranged(0.01, gt=0)  # Adam
    prec: str = "amp"
    n_img_ctx: int = ranged(4, ge=1)
    domain_hidden: int = 256
    style_hidden: int = 384
    shared_image_head: bool = True  # the reference's four identical image tokens
    style_weight: float = 0.1
    entropy_weight: float = 0.01
    kl_weight: float = 1.0
    source_tokens: str = "style"  # inference: style-mapping tokens (source-free) | self: the image's domain tokens


class ADCLIPModel(PromptedCLIP):
    """Frozen CLIP + the domain, image and style-mapping projectors (the prompt is built per image)."""

    context_is_the_prompt = False

    def __init__(self, clip_model, tokenizer, classnames, cfg: ADCLIPConfig = ADCLIPConfig()) -> None:
        layers = len(clip_model.visual.transformer.resblocks)
        layout, ctx0 = context_init(clip_model, tokenizer, "", 2 * layers + cfg.n_img_ctx)
        super().__init__(clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=False)
        width, dim = vision_width(clip_model), ctx0.shape[-1]
        self.cfg = cfg
        self.domain = DomainProjector(layers, width, cfg.domain_hidden, dim)
        self.image = ImageProjector(layers, width, dim, cfg.n_img_ctx, cfg.shared_image_head)
        self.style = StyleMappingProjector(layers, width, cfg.style_hidden, dim)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised image features and every layer's output tokens ``(B, L, W)`` (frozen, detached)."""
        taps: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda m, i, o: taps.append(o.detach().float()))
                 for b in self.clip.visual.transformer.resblocks]  # fmt: skip
        try:
            f = self.clip.encode_image(images)
        finally:
            for h in hooks:
                h.remove()
        if not getattr(self.clip.visual.transformer, "batch_first", True):
            taps = [t.transpose(0, 1) for t in taps]
        return F.normalize(f.float(), dim=-1), taps

    def per_image_logits(self, f: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)`` and normalised text features ``(B, C, E)`` of per-image contexts ``(B, M, D)``."""
        g = self.text(ctx[:, None], normalize=True)
        return self.logit_scale * torch.einsum("be,bce->bc", f, g.to(f.dtype)), g

    def forward_pair(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training forward of paired source / target batches (what the loss reads)."""
        fs, ts = self.encode(source)
        ft, tt = self.encode(target)
        ds, dt, style = self.domain(ts), self.domain(tt), self.style(ts)
        src_logits, src_text = self.per_image_logits(fs, torch.cat([ds, dt, self.image(ts)], 1))
        tgt_logits, tgt_text = self.per_image_logits(ft, torch.cat([ds, dt, self.image(tt)], 1))
        return {"source_logits": src_logits, "target_probs": F.softmax(tgt_logits, -1), "source_domain": ds,
                "source_style": style, "source_text": src_text, "target_text": tgt_text}  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Source-free prediction: source tokens from the style-mapping network (or the image's domain tokens)."""
        f, t = self.encode(images)
        d = self.domain(t)
        src = self.style(t) if self.cfg.source_tokens == "style" else d
        return self.per_image_logits(f, torch.cat([src, d, self.image(t)], 1))[0]


@STRATEGIES.register("adclip", config=ADCLIPConfig)
class ADCLIP(PromptLearnerTemplate):
    """AD-CLIP as an Avalanche strategy: epochs over the labelled source experience, each batch paired with a batch
    of the benchmark's unlabelled ``target`` stream (``scenarios/domain_adaptation``); Adam over the projectors."""

    config_class = ADCLIPConfig

    @classmethod
    def resolve_config(cls, config, method_kwargs: dict[str, Any], extra_valid=()):
        cfg = super().resolve_config(config, method_kwargs, extra_valid)
        if cfg.source_tokens not in ("style", "self"):
            raise ValueError(f"source_tokens={cfg.source_tokens!r}; valid: style, self")
        return cfg

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: ADCLIPConfig) -> ADCLIPModel:
        return ADCLIPModel(clip_model, tokenizer, classnames, cfg)

    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        return ()

    def make_optimizer(self, **kwargs: Any) -> None:
        from ctta.clip_prompting.optim import warmup_cosine

        if not self.user_optimizer:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            self.scheduler = warmup_cosine(self.optimizer, self.train_epochs, self.warmup_epochs, self.warmup_lr)
        else:
            super().make_optimizer(**kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        bench = origin_benchmark(self.experience)
        streams = _attr(bench, "streams") or {}
        stream = streams[TARGET_STREAM] if TARGET_STREAM in streams else _attr(bench, "test_stream")
        ds = stream_dataset(stream) if stream is not None else self.experience.dataset
        target = UnlabelledImages(ds.train() if hasattr(ds, "train") else ds)  # (image, index): labels never read
        drop = len(target) >= self.train_mb_size
        self._target_loader = torch.utils.data.DataLoader(target, batch_size=self.train_mb_size, shuffle=True,
                                                          drop_last=drop)  # fmt: skip
        self._target_iter = iter(self._target_loader)
        super()._before_training_exp(**kwargs)

    def _next_target(self) -> torch.Tensor:
        """The next batch of target images, cycling over the target set."""
        try:
            batch = next(self._target_iter)
        except StopIteration:
            self._target_iter = iter(self._target_loader)
            batch = next(self._target_iter)
        return batch[0].to(self.device)

    def forward_train(self) -> torch.Tensor:
        if not self.is_training:
            return self._full_head(self.model(self.mb_x).float())
        target = self._next_target()
        n = min(len(self.mb_x), len(target))
        self._out = self.model.forward_pair(self.mb_x[:n], target[:n])
        return self._full_head(self._out["source_logits"].float())

    def _full_head(self, out: torch.Tensor) -> torch.Tensor:
        """On a class-incremental stream, the logits of the classes seen so far; the others ``MASKED_LOGIT``."""
        if self.seen is None:
            return out
        full = out.new_full((out.shape[0], len(self.all_classnames)), MASKED_LOGIT)
        full[:, self.seen] = out
        return full

    forward_eval = forward_train

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return F.cross_entropy(self.mb_output, self.mb_y)
        out, cfg = self._out, self.cfg
        ce = F.cross_entropy(self.mb_output, self.mb_y[: len(self.mb_output)])
        style = F.mse_loss(out["source_domain"], out["source_style"])
        return (ce + cfg.style_weight * style + cfg.entropy_weight * adclip_entropy(out["target_probs"])
                + cfg.kl_weight * text_kl(out["source_text"], out["target_text"]))  # fmt: skip
