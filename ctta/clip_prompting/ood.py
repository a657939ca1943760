"""OOD detection with a prompted CLIP: the template of the CLIP OOD detectors (MCM, NegLabel, LAPT) and the CoOp
model with negative-label prompts.

Papers: MCM (Ming et al., NeurIPS 2022), NegLabel (Jiang et al., ICLR 2024), LAPT (Zhang et al., ECCV 2024; official
code YBZh/OpenOOD-VLM@804f331 ``openood/networks/clip_coop_negprompt.py``, MIT; behaviour read, re-implemented, no
code copied). The scores and the miner are ``ctta.ood_scores``; the metrics ``ctta.ood_metrics``.

``OODPromptLearnerTemplate``: a ``PromptLearnerTemplate`` (few-shot epochs on the ID train experience; ``epochs: 0`` =
zero-shot) whose evaluation sets ``mb_output`` = the ID logits (ID accuracy) and ``mb_ood_score`` = the method's score
(``ood_score(image_features)``); the loss ignores the label -1 of OOD samples. ``NegPromptModel``: CoOp's context for
the ID classes and, for the negative labels, the same context (NegLabel) or a second one ``ood_ctx`` (LAPT's
``dis_aware`` prompts), both ``[SOS] ctx <name> . [EOT]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.context import ContextConfig, ContextModel
from ctta.clip_prompting.teacher import FrozenCLIPTeacher
from ctta.clip_prompting.template import MASKED_LOGIT, PromptLearnerTemplate
from ctta.clip_prompting.text import PromptedText
from ctta.clip_prompting.vision import encode_image
from ctta.ood_scores import load_wordnet_words, mine_negative_labels, neglabel_score

__all__ = ["NegPromptModel", "OODPromptLearnerTemplate", "mine_for", "ood_cross_entropy"]


def ood_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the samples with an ID label (``y >= 0``); 0 (with a graph) when there is none."""
    keep = y >= 0
    return F.cross_entropy(logits[keep], y[keep]) if keep.any() else logits.sum() * 0.0


def mine_for(clip_model, tokenizer, classnames, cfg, ns: int | tuple[int, ...]) -> list[str] | list[list[str]]:
    """Negative labels for ``classnames`` with ``clip_model``'s text tower, from ``cfg``'s inline ``nouns`` /
    ``adjectives`` or its ``wordnet`` folder (``ctta.ood_scores.mine_negative_labels`` at ``cfg.percentile``).

    ``ns``: one count (-> its labels) or several (-> one list per count; the word lists are read and the candidate
    prompts encoded once for all of them: LAPT mines its test and training negatives from the same WordNet pools).
    """
    inline = cfg.nouns or cfg.adjectives
    nouns, adjs = (list(cfg.nouns), list(cfg.adjectives)) if inline else load_wordnet_words(cfg.wordnet)
    encoded: dict[tuple[str, ...], torch.Tensor] = {}

    def encode(texts):
        key = tuple(texts)
        if key not in encoded:
            teacher = FrozenCLIPTeacher(clip_model, tokenizer, texts, ("{}",), round_embeddings=False)
            encoded[key] = teacher.text_features
        return encoded[key]

    counts = (ns,) if isinstance(ns, int) else tuple(ns)
    mined = [mine_negative_labels(encode, classnames, nouns, adjs, n, cfg.percentile) for n in counts]
    return mined[0] if isinstance(ns, int) else mined


class NegPromptModel(ContextModel):
    """CoOp context model plus negative-label prompts; ``forward`` returns the ID logits only.

    Args:
        negatives: the negative labels (mined words).
        separate_context: learn a second context ``ood_ctx`` for the negatives (LAPT) instead of sharing ``ctx``.
    """

    def __init__(self, clip_model, tokenizer, classnames, cfg: ContextConfig, negatives: Sequence[str], *,
                 separate_context: bool = False, generator=None) -> None:  # fmt: skip
        super().__init__(clip_model, tokenizer, classnames, cfg, generator=generator)
        if not negatives:
            raise ValueError("NegPromptModel needs at least one negative label")
        self.negatives = list(negatives)
        self.neg_text = PromptedText(clip_model, tokenizer, self.negatives, self.text.layout,
                                     position=self.text.position, truncate=cfg.truncate)  # fmt: skip
        self.ood_ctx = nn.Parameter(self.ctx.detach().clone()) if separate_context else None

    def negative_features(self) -> torch.Tensor:
        """Text features of the negative labels ``(M, E)``."""
        return self.neg_text(self.ood_ctx if self.ood_ctx is not None else self.ctx)

    def negative_score(self, image_features: torch.Tensor, text_features: torch.Tensor, groups: int, seed: int):
        """NegLabel's grouped score ``(B,)`` of image features against the ID and the negative-label prompts."""
        neg = self.negative_features().float()
        return neglabel_score(self.logits(image_features, text_features), self.logits(image_features, neg), groups,
                              seed)  # fmt: skip


class OODPromptLearnerTemplate(PromptLearnerTemplate):
    """Prompt learner whose evaluation also scores OOD-ness (see the module docstring); subclasses implement
    ``ood_score(image_features, id_text_features) -> (B,)`` (higher = more ID)."""

    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        from ctta.ood_metrics import OODDetectionMetric

        return (*super().extra_metrics(cfg), OODDetectionMetric())

    def ood_score(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}.ood_score")

    def criterion(self) -> torch.Tensor:
        return ood_cross_entropy(self.mb_output, self.mb_y)

    def make_optimizer(self, **kwargs) -> None:
        """As the prompt learners; zero epochs (zero-shot) make no schedule (the cosine needs an epoch count)."""
        if self.train_epochs == 0:
            self.scheduler = None
            return
        super().make_optimizer(**kwargs)

    def forward_eval(self) -> torch.Tensor:
        """ID logits; sets ``mb_ood_score``."""
        x = self.mb_x
        if self.prec == "fp16" and self.device.type == "cuda":
            x = x.half()
        f = encode_image(self.model.clip, x).float()  # (B, E)
        g = self.model.text_features().float()  # (C, E)
        self.mb_ood_score = self.ood_score(f, g).detach()
        out = self.model.logits(f, g).float()
        if self.seen is not None:  # class-incremental head: the classes seen so far, the others masked out
            full = out.new_full((out.shape[0], len(self.all_classnames)), MASKED_LOGIT)
            full[:, self.seen] = out
            out = full
        return out

    def _before_eval_exp(self, **kwargs) -> None:
        self.mb_ood_score = None
        super()._before_eval_exp(**kwargs)


def cosine(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``norm(f) @ norm(g).T``: ``(B, E)`` x ``(C, E)`` -> ``(B, C)``."""
    return F.normalize(f.float(), dim=-1) @ F.normalize(g.float(), dim=-1).t()
