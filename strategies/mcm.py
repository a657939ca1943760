"""MCM: maximum concept matching, zero-shot OOD detection with CLIP (Ming et al., "Delving into Out-of-Distribution
Detection with Vision-Language Representations", NeurIPS 2022, arXiv 2211.13445). Reference: deeplearning-wisc/MCM
``utils/detection_util.py`` (score ``max softmax(cos / T)``, T = 1); behaviour re-implemented, no code copied.

The ID classes' prompts are CoOp's ``[SOS] ctx <name> . [EOT]`` with ``ctx`` = "a photo of a" (the paper's prompt):
``epochs: 0`` is zero-shot MCM; ``epochs > 0`` first tunes ``ctx`` with CoOp on the ID train experience (the
"CoOp + MCM" baseline of LAPT / OGEN's OOD tables). Evaluation reports ID accuracy and the OOD metrics of
``ctta.ood_metrics`` on the streams of ``ctta.scenarios.ood``.

Deviations: the paper ensembles no templates either; its "a photo of a <name>." ends with the same period.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctta.clip_prompting.context import ContextConfig, ContextModel
from ctta.clip_prompting.ood import OODPromptLearnerTemplate, cosine
from ctta.clip_prompting.template import init_generator
from ctta.fields import ranged
from ctta.ood_scores import mcm_score
from ctta.registry import STRATEGIES

__all__ = ["MCM", "MCMConfig"]


@dataclass(frozen=True)
class MCMConfig(ContextConfig):
    """MCM settings: CoOp's context fields (``ctx_init`` "a photo of a") plus the softmax temperature."""

    epochs: int = ranged(0, ge=0)  # 0: zero-shot MCM; > 0: CoOp-tuned context first
    temperature: float = ranged(1.0, gt=0)


@STRATEGIES.register("mcm", config=MCMConfig)
class MCM(OODPromptLearnerTemplate):
    """MCM as an Avalanche strategy: score = ``max_c softmax(cos(f, g_c) / T)``."""

    config_class = MCMConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: MCMConfig) -> ContextModel:
        return ContextModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def ood_score(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return mcm_score(cosine(image_features, text_features), self.cfg.temperature)
