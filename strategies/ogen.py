"""OGEN: CoOp regularised by synthesised features of unknown classes (Wang et al., "Overcoming the Pitfalls of
Vision-Language Model Finetuning for OOD Generalization", ICLR 2024, arXiv 2401.15914). Official code
apple/ml-ogen@ccfa0df (Apple sample-code licence) ``trainers/ogen.py:{PromptLearner, CustomCLIP.feature_generator,
CustomCLIP.forward, OGEN.forward_backward}``; behaviour read, re-implemented, no code copied.

CoOp context ("a photo of a") on the base classes; the same context also prompts the **new class names** (names only,
never new-class images: the benchmark's ``test_new`` stream names, or ``new_classnames``). Class-conditional feature
generator (``FeatureGenerator``): ``MLP(q) + MHA(q, k, v)`` (4 heads, dropout 0.1; MLP E->E->E with ReLU),
L2-normalised. Per-class mean and std of the base classes' CLIP image features are computed once from the training
experience; each base class has its k = 3 nearest base classes (cosine of the means). Per batch (labels y, features f),
with one uniform vector ``u ~ U(0, 1)^E`` per batch and synthetic features ``mean + u * std``:

* unknown: query ``w_y`` (detached), keys = its neighbours' text features, values = their synthetic features ->
  ``f_hat_y``; CE of its logits over the base classes against y; MSE(``f_hat_y``, f);
* known: queries = the neighbours' text features, key ``w_y``, value f -> their features; MSE against their synthetic
  features; CE against the neighbour labels;
* new: the 3 new-class text features nearest to ``w_y`` as queries, key ``w_y``, value f; CE over the new classes.

Loss: during the first ``warmup_fraction`` (20 %) of the epochs ``512 * (MSE_unknown + MSE_known)``; then also
``0.25 CE_unknown + 0.25/3 CE_known + 0.5/3 CE_new + 0.25 CE(real logits, y)``. ``self_distillation``: the paper's
adaptive self-distillation (**not in the released code**, which builds a teacher but never uses it; off by default):
here the teacher is the mean of the context over the finished epochs and the student's real logits are pulled to the
teacher's with ``distill_weight * KL`` (a paper-level reading, unofficial). Evaluation: ID logits and MCM's score
(OOD tables), base / new accuracy on a base-to-new benchmark.

Deviations: the feature statistics are computed from the few-shot training images (the released files' source is
unknown) under the evaluation transform; fp32 generator; the MSE is the mean over elements (``F.mse_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.context import ContextConfig, ContextModel
from ctta.clip_prompting.ood import OODPromptLearnerTemplate, cosine
from ctta.clip_prompting.template import init_generator
from ctta.clip_prompting.text import PromptedText
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.ood_scores import mcm_score
from ctta.registry import STRATEGIES
from ctta.templates.benchmark_info import benchmark_info

__all__ = ["FeatureGenerator", "OGEN", "OGENConfig", "OGENModel", "ogen_loss"]


@dataclass(frozen=True)
class OGENConfig(ContextConfig):
    """OGEN settings (official ``vit_b16_ep{10,50,200}_ctxv1``: SGD lr 0.002, batch 32)."""

    epochs: int = ranged(10, ge=1)
    neighbours: int = ranged(3, ge=1)
    heads: int = ranged(4, ge=1)
    dropout: float = 0.1
    warmup_fraction: float = ranged(0.2, ge=0, le=1)  # MSE-only epochs (fraction of `epochs`)
    mse_weight: float = 512.0
    new_classnames: tuple[str, ...] = ()  # default: the benchmark's test_new stream names
    self_distillation: bool = False  # the paper's teacher (unofficial; the released code does not use it)
    distill_weight: float = 1.0
    temperature: float = ranged(1.0, gt=0)  # MCM score


class FeatureGenerator(nn.Module):
    """``norm(MLP(q) + MHA(q, k, v))``: ``(B, Q, E)`` queries, ``(B, K, E)`` keys and values -> ``(B, Q, E)``."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(q) + self.attn(q, k, v, need_weights=False)[0], dim=-1)


class OGENModel(ContextModel):
    """CoOp context model + the new classes' prompts (same context) + the feature generator + feature statistics."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: OGENConfig, new_classnames, *, generator=None) -> None:
        super().__init__(clip_model, tokenizer, classnames, cfg, generator=generator)
        if not new_classnames:
            raise ValueError("OGEN needs the new class names: a base-to-new benchmark (test_new) or new_classnames")
        self.new_text = PromptedText(clip_model, tokenizer, list(new_classnames), self.text.layout,
                                     position=self.text.position, truncate=cfg.truncate)  # fmt: skip
        dim = int(clip_model.text_projection.shape[1])
        self.generator = FeatureGenerator(dim, cfg.heads, cfg.dropout)
        self.register_buffer("mean", torch.zeros(len(classnames), dim))
        self.register_buffer("std", torch.zeros(len(classnames), dim))
        self.register_buffer("nearest", torch.zeros(len(classnames), cfg.neighbours, dtype=torch.long))

    def set_statistics(self, feats: torch.Tensor, labels: torch.Tensor, k: int) -> None:
        """Per-class mean / std of ``feats`` (N, E) and each class's ``k`` nearest classes (cosine of the means)."""
        for c in labels.unique().tolist():  # classes without images (class-incremental streams) keep their values
            fc = feats[labels == c]
            self.mean[c], self.std[c] = fc.mean(0), (fc.std(0) if len(fc) > 1 else torch.zeros_like(fc[0]))
        sim = cosine(self.mean, self.mean).fill_diagonal_(-2.0)
        self.nearest.copy_(sim.topk(min(k, len(self.mean) - 1), dim=-1).indices)


def ogen_loss(parts: dict[str, torch.Tensor], ce_on: bool, mse_weight: float = 512.0) -> torch.Tensor:
    """OGEN's total loss from its terms (``mse_unknown``, ``mse_known``, ``ce_unknown``, ``ce_known``, ``ce_new``,
    ``ce_real``); the CE terms count only after the MSE-only warm-up (``ce_on``)."""
    loss = mse_weight * (parts["mse_unknown"] + parts["mse_known"])
    if ce_on:
        loss = loss + 0.25 * parts["ce_unknown"] + 0.25 / 3 * parts["ce_known"] + 0.5 / 3 * parts["ce_new"]
        loss = loss + 0.25 * parts["ce_real"]
    return loss


@STRATEGIES.register("ogen", config=OGENConfig)
class OGEN(OODPromptLearnerTemplate):
    """OGEN as an Avalanche strategy (see the module docstring)."""

    config_class = OGENConfig

    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict:
        out = super().benchmark_kwargs(cfg, benchmark)
        new = benchmark_info(benchmark).stream_classnames.get("test_new")
        return out | ({"new_classnames": list(new)} if new and not cfg.new_classnames else {})

    def __init__(self, *, new_classnames=None, **kwargs) -> None:
        self._new = new_classnames
        super().__init__(**kwargs)
        self.teacher_ctx: torch.Tensor | None = None
        self._epochs_done = 0

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: OGENConfig, new=None) -> OGENModel:
        return OGENModel(clip_model, tokenizer, classnames, cfg, new or cfg.new_classnames,
                         generator=init_generator(cfg))  # fmt: skip

    def build_model(self, backbone, experience):
        from ctta.clip_prompting.model import clip_parts

        if not self._classnames:
            return super().build_model(backbone, experience)  # the error naming classnames
        clip_model, tokenizer = clip_parts(backbone, self._tokenizer, require_tokenizer="OGEN")
        return self.build_prompted(clip_model, tokenizer, list(self._classnames), self.cfg, self._new)

    @torch.no_grad()
    def _before_training_exp(self, **kwargs) -> None:
        super()._before_training_exp(**kwargs)
        loader = torch.utils.data.DataLoader(self.experience.dataset.eval(), batch_size=self.eval_mb_size)
        feats, labels = [], []
        for batch in loader:
            feats.append(F.normalize(encode_image(self.model.clip, batch[0].to(self.device)).float(), dim=-1))
            labels.append(batch[1].to(self.device))
        self.model.set_statistics(torch.cat(feats), torch.cat(labels), self.cfg.neighbours)

    def _after_training_epoch(self, **kwargs) -> None:
        self._epochs_done += 1
        ctx = self.model.ctx.detach().clone()
        n = self._epochs_done
        self.teacher_ctx = ctx if self.teacher_ctx is None else self.teacher_ctx * (n - 1) / n + ctx / n
        super()._after_training_epoch(**kwargs)

    def forward_train(self) -> torch.Tensor:
        x = self.mb_x.half() if self.prec == "fp16" and self.device.type == "cuda" else self.mb_x
        f = F.normalize(encode_image(self.model.clip, x).float(), dim=-1)  # (B, E)
        self.mb_features = f
        return self.model.logits(f, self.model.text_features().float())

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return super().criterion()
        parts = self.loss_terms(self.mb_features, self.mb_y)
        ce_on = self._epochs_done >= int(self.cfg.warmup_fraction * self.train_epochs)
        loss = ogen_loss(parts, ce_on, self.cfg.mse_weight)
        if self.cfg.self_distillation and self.teacher_ctx is not None:
            with torch.no_grad():
                teacher = self.model.logits(self.mb_features, self.model.text(self.teacher_ctx).float())
            loss = loss + self.cfg.distill_weight * F.kl_div(self.mb_output.log_softmax(-1), teacher.softmax(-1),
                                                             reduction="batchmean")  # fmt: skip
        return loss

    def loss_terms(self, f: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """OGEN's loss terms for normalised image features ``f`` (B, E) and labels ``y`` (B,)."""
        m, gen = self.model, self.model.generator
        w = m.text_features().float()  # (C, E)
        w_new = m.new_text(m.ctx).float()  # (N, E)
        nb = m.nearest[y]  # (B, k)
        u = torch.rand(w.shape[1], device=f.device)  # one uniform vector per batch
        synth = m.mean[nb] + u * m.std[nb]  # (B, k, E)
        wy = w[y].detach()[:, None]  # (B, 1, E)
        unknown = gen(wy, w[nb].detach(), synth)[:, 0]  # (B, E)
        known = gen(w[nb].detach(), wy, f[:, None])  # (B, k, E)
        near_new = cosine(wy[:, 0], w_new.detach()).topk(min(self.cfg.neighbours, len(w_new)), dim=-1).indices
        new = gen(w_new[near_new].detach(), wy, f[:, None])  # (B, k, E)
        scale = m.logit_scale.float()
        return {
            "mse_unknown": F.mse_loss(unknown, f), "mse_known": F.mse_loss(known, F.normalize(synth, dim=-1)),
            "ce_unknown": F.cross_entropy(m.logits(unknown, w), y),
            "ce_known": F.cross_entropy(scale * cosine(known.flatten(0, 1), w), nb.flatten()),
            "ce_new": F.cross_entropy(scale * cosine(new.flatten(0, 1), w_new), near_new.flatten()),
            "ce_real": F.cross_entropy(m.logits(f, w), y),
        }  # fmt: skip

    def ood_score(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return mcm_score(cosine(image_features, text_features), self.cfg.temperature)
