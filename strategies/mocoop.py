"""MoCoOp: mixture of prompt learning (Du, Niu, Zhao, "Mixture of Prompt Learning for Vision Language Models",
arXiv 2409.12011; Front. AI 2025). The paper's anonymous.4open.science/r/mocoop-6387 could not be read; the probable
official GitHub copy is dyabel/mocoop@04b5d2a (``prompting/moe.py``, no licence, authorship unconfirmed, not runnable
as stored). It was not in the reference index either, so this follows the paper and spec ``clip-prompt-learners.md``
section 13: re-implemented on ctta's prompting core, no code copied.

Model: ``K`` experts, one per semantic template group; expert ``k`` is a CoOp context ``ctx[k]`` ``(n, D)``
initialised from the words before ``{}`` in the group's first template. A router ``Linear(E, K)`` on the normalised
frozen image feature ``f`` picks the ``top_k`` experts; their weights are the softmax of the kept router logits and the
image's classifier is the weighted sum of the normalised expert text features (``top_k_weights``)::

    logits_b = scale * cos(f_b, sum_k w_bk * norm(g_k))

Frozen hard-prompt prototypes ``t_k`` ``(C, E)``: per group, the mean frozen-CLIP text feature over its templates.
Loss (``mocoop_regularisers``)::

    CE + text_weight * mean_k CE(scale * norm(g_k) norm(t_k)^T, identity)           (LASP text-to-text)
       + gate_weight * CE(router logits, softmax(cos(f_b, t_k[y_b]) + bonus * [k in top_k of the cosines]))

Defaults: the README example ``vit_b16_c4_ep50_batch32_cls_t2t_10_wcl_25_g1_b_lr32`` as the spec reads it: 4 experts
(groups), SGD lr 0.032, batch 32, 50 epochs, 5 warm-up epochs, amp, text_weight 10, gate_weight 1, top-2, bonus 10.

Unofficial (code not read): choices the paper / spec leave open, with the value taken and why:

- context length ``n_ctx`` = 4 for every expert (one text encoding for all experts): the last ``n_ctx`` tokens of the
  template's prefix, front-padded with N(0, 0.02^2) when shorter ("a photo of a" is CoOp's 4-token init);
- the words after ``{}`` ("after" context of the reference) are dropped: the prompt ends ``<name>.`` as in CoOp
  (ctta's text tower has no learnable suffix; a core change);
- the gate target uses the prototype of the image's label (the only class-wise prototype an image has at train time);
- prototypes: unnormalised mean of frozen features over the group's templates (CLIP's ensembling rule), fp32;
- the text-to-text loss and the gate use the current class set (base classes on base-to-new): the reference's use of
  new class names at train time breaks the B2N protocol;
- the ViT LayerNorm fine-tuning (ln_1/ln_2 at lr x0.1) and the ``ENABLE_CORRECTION`` bias of the LASP-derived code
  are not implemented: only ``ctx`` and the router train.

Trainable parameters on ViT-B/16 (K = 4, n = 4, E = 512): 4 x 4 x 512 + 512 x 4 + 4 = 10,244
(``tests/test_mocoop.py``); no published count was found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.teacher import FrozenCLIPTeacher
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import encode_words
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["MoCoOp", "MoCoOpConfig", "MoCoOpModel", "gate_loss", "gate_targets", "text_to_text_loss",
           "top_k_weights"]  # fmt: skip

# four semantic groups of CLIP's hand-crafted templates (one expert each)
DEFAULT_GROUPS = (
    "a photo of a {}. | a photo of the {}. | a good photo of a {}.",
    "a blurry photo of a {}. | a low resolution photo of a {}. | a bad photo of a {}.",
    "a close-up photo of a {}. | a cropped photo of a {}. | a photo of a small {}.",
    "art of the {}. | a drawing of a {}. | a painting of a {}.",
)


@dataclass(frozen=True)
class MoCoOpConfig(PromptLearnerConfig):
    """MoCoOp settings (the README example config as the spec reads it)."""

    epochs: int = ranged(50, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.032, gt=0)
    warmup_epochs: int = 5
    prec: str = "amp"
    groups: tuple = DEFAULT_GROUPS  # one expert per entry; templates with one ``{}`` separated by " | "
    n_ctx: int = ranged(4, ge=1)  # context tokens per expert
    top_k: int = ranged(2, ge=1)  # experts mixed per image
    text_weight: float = 10.0  # TEXT_LOSS_WEIGHT (LASP text-to-text)
    gate_weight: float = 1.0  # GATE_LOSS_WEIGHT
    gate_bonus: float = 10.0  # added to the top_k prototype similarities of the gate target


def parse_groups(groups) -> list[list[str]]:
    """Template groups from ``"t1 | t2"`` strings (or lists of templates); each template needs one ``{}``."""
    out = [[t.strip() for t in g.split("|")] if isinstance(g, str) else [str(t) for t in g] for g in groups]
    if not out or any(not g or any(t.count("{}") != 1 for t in g) for g in out):
        raise ValueError(f"groups must be non-empty template groups, each template with one '{{}}': {groups!r}")
    return out


def template_context(clip_model, tokenizer, template: str, n_ctx: int, generator=None) -> torch.Tensor:
    """``(n_ctx, D)`` initial context from the words before ``{}``: their last ``n_ctx`` token embeddings,
    front-padded with N(0, 0.02^2) vectors when the prefix is shorter."""
    prefix = template.split("{}")[0].strip()
    emb = encode_words(clip_model, tokenizer, prefix)[-n_ctx:] if prefix else None
    have = 0 if emb is None else len(emb)
    width = encode_words(clip_model, tokenizer, "a").shape[-1]
    pad = torch.randn(n_ctx - have, width, generator=generator) * 0.02
    return pad if emb is None else torch.cat([pad, emb.cpu()])


def top_k_weights(gate_logits: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, K)`` mixing weights: softmax over each row's ``k`` largest router logits, 0 elsewhere."""
    k = min(k, gate_logits.shape[-1])
    vals, idx = gate_logits.topk(k, dim=-1)
    return torch.zeros_like(gate_logits).scatter(-1, idx, vals.softmax(-1))


def gate_targets(image: torch.Tensor, protos: torch.Tensor, labels: torch.Tensor, k: int, bonus: float):
    """Soft router targets ``(B, K)``: ``softmax(cos(f_b, t_k[y_b]) + bonus * [k in the row's top-k])`` for
    normalised-or-not image features ``(B, E)`` and prototypes ``(K, C, E)``."""
    f = F.normalize(image.float(), dim=-1)
    t = F.normalize(protos.float()[:, labels], dim=-1)  # (K, B, E)
    sim = torch.einsum("be,kbe->bk", f, t)
    idx = sim.topk(min(k, sim.shape[-1]), dim=-1).indices
    return (sim + torch.zeros_like(sim).scatter(-1, idx, bonus)).softmax(-1)


def gate_loss(gate_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the router logits against soft targets, averaged over the batch."""
    return -(targets * gate_logits.float().log_softmax(-1)).sum(-1).mean()


def text_to_text_loss(text: torch.Tensor, protos: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """LASP text-to-text loss: ``mean_k CE(scale * norm(g_k) norm(t_k)^T, [0..C-1])`` for ``(K, C, E)`` inputs."""
    g, t = F.normalize(text.float(), dim=-1), F.normalize(protos.float(), dim=-1)
    logits = scale * torch.einsum("kce,kde->kcd", g, t)  # (K, C, C)
    k, c = logits.shape[:2]
    target = torch.arange(c, device=logits.device).repeat(k)
    return F.cross_entropy(logits.reshape(k * c, c), target)


class MoCoOpModel(PromptedCLIP):
    """Frozen CLIP + ``K`` expert contexts ``ctx`` ``(K, n, D)``, the ``router`` and per-group frozen prototypes
    (``prototypes()`` ``(K, C, E)``); training forwards keep ``text``, ``gate``, ``image`` in ``self.features``."""

    context_is_the_prompt = False  # a routed mixture: TPT tunes it through the forward

    def __init__(self, clip_model, tokenizer, classnames, cfg: MoCoOpConfig, *, generator=None) -> None:
        super().__init__(clip_model, tokenizer, classnames, [cfg.n_ctx], truncate=cfg.truncate, round_prompts=False)
        self.groups, self.top_k = parse_groups(cfg.groups), cfg.top_k
        ctx = [template_context(clip_model, tokenizer, g[0], cfg.n_ctx, generator) for g in self.groups]
        self.ctx = nn.Parameter(torch.stack(ctx).to(self.text.cast_dtype))
        width = clip_model.text_projection.shape[1] if clip_model.text_projection is not None else ctx[0].shape[-1]
        self.router = nn.Linear(width, len(self.groups))
        with torch.no_grad():  # the router starts from torch's default init, drawn from ``generator`` when given
            bound = 1 / width**0.5
            self.router.weight.copy_(torch.rand(self.router.weight.shape, generator=generator) * 2 * bound - bound)
            self.router.bias.copy_(torch.rand(self.router.bias.shape, generator=generator) * 2 * bound - bound)
        self.teachers = nn.ModuleList(FrozenCLIPTeacher(clip_model, tokenizer, classnames, g, round_embeddings=False)
                                      for g in self.groups)  # fmt: skip
        self.features: dict[str, torch.Tensor] = {}

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        for t in self.teachers:
            t.set_classnames(classnames)

    def prototypes(self) -> torch.Tensor:
        """Frozen hard-prompt prototypes ``(K, C, E)`` of the current classes."""
        return torch.stack([t.text_features for t in self.teachers])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = F.normalize(encode_image(self.clip, images), dim=-1)  # (B, E)
        g = self.text(self.ctx.unsqueeze(1))  # (K, C, E)
        gate = self.router(f.to(self.router.weight.dtype))  # (B, K)
        w = top_k_weights(gate, self.top_k)
        mixed = torch.einsum("bk,kce->bce", w.to(g.dtype), F.normalize(g, dim=-1))
        if self.training:
            self.features = {"text": g, "gate": gate, "image": f}
        return self.logits(f, mixed)


def mocoop_regularisers(features: dict, protos: torch.Tensor, labels, scale, cfg: MoCoOpConfig) -> torch.Tensor:
    """``text_weight * text_to_text_loss + gate_weight * gate_loss`` from a training forward's features."""
    t2t = text_to_text_loss(features["text"], protos, scale)
    target = gate_targets(features["image"], protos, labels, cfg.top_k, cfg.gate_bonus)
    return cfg.text_weight * t2t + cfg.gate_weight * gate_loss(features["gate"], target)


@STRATEGIES.register("mocoop", config=MoCoOpConfig)
class MoCoOp(PromptLearnerTemplate):
    """MoCoOp as an Avalanche strategy: ``model`` is a ``MoCoOpModel``; CE on the routed mixture + text-to-text +
    gate losses, SGD over the expert contexts and the router."""

    config_class = MoCoOpConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: MoCoOpConfig) -> MoCoOpModel:
        return MoCoOpModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def criterion(self) -> torch.Tensor:
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training:
            return ce
        m = self.model
        return ce + mocoop_regularisers(m.features, m.prototypes(), self.mb_y, m.logit_scale.float(), self.cfg)
