"""NegLabel: negative-label guided zero-shot OOD detection with CLIP (Jiang et al., "Negative Label Guided OOD Detection
with Pretrained Vision-Language Models", ICLR 2024, arXiv 2403.20078). Miner and grouped score as in LAPT's official
code YBZh/OpenOOD-VLM@804f331 (MIT) ``openood/networks/clip_for_wordnet_prepare.py`` and
``openood/postprocessors/oneoodprompt_postprocessor.py`` (behaviour read, re-implemented, no code copied; see
``ctta.ood_scores``).

Negative labels are mined once, at construction, from WordNet nouns and adjectives (``wordnet``: OpenOOD-VLM's lists or
a WordNet dictionary folder, default Debian's ``wordnet-base``; or the inline ``nouns`` / ``adjectives`` lists) with
the frozen CLIP's text features: the ``n_negatives`` candidates least close (95th-percentile cosine) to the ID classes.
Score: NegLabel's ID-probability mass against the negative labels, averaged over ``groups`` groups of a permutation
seeded with ``group_seed``. ID and negative prompts share CoOp's context ``ctx`` ("a photo of a"); ``epochs: 0`` is
zero-shot NegLabel, ``epochs > 0`` tunes ``ctx`` with CoOp on the ID train experience first.

Deviations: the prompts of the score are CoOp's context prompts, not the mining templates; candidates are sorted
before mining (deterministic); defaults follow the LAPT code (10,000 negatives, 100 groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctta.clip_prompting.context import ContextConfig
from ctta.clip_prompting.ood import NegPromptModel, OODPromptLearnerTemplate, mine_for
from ctta.clip_prompting.template import init_generator
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["NegLabel", "NegLabelConfig"]


@dataclass(frozen=True)
class NegLabelConfig(ContextConfig):
    """NegLabel settings (LAPT's test-time defaults)."""

    epochs: int = ranged(0, ge=0)  # 0: zero-shot NegLabel; > 0: CoOp-tuned context first
    n_negatives: int = ranged(10000, ge=1)
    groups: int = ranged(100, ge=1)
    group_seed: int = 0
    percentile: float = ranged(0.95, ge=0, le=1)
    wordnet: str = ""  # folder of the word lists ("" = Debian's /usr/share/wordnet); unused with inline lists
    nouns: tuple[str, ...] = ()  # inline candidate nouns (tests, smoke runs); with adjectives, replaces `wordnet`
    adjectives: tuple[str, ...] = ()


@STRATEGIES.register("neglabel", config=NegLabelConfig)
class NegLabel(OODPromptLearnerTemplate):
    """NegLabel as an Avalanche strategy: grouped negative-label score over mined WordNet labels."""

    config_class = NegLabelConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: NegLabelConfig) -> NegPromptModel:
        negatives = mine_for(clip_model, tokenizer, classnames, cfg, cfg.n_negatives)
        return NegPromptModel(clip_model, tokenizer, classnames, cfg, negatives, generator=init_generator(cfg))

    def ood_score(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.model.negative_score(image_features, text_features, self.cfg.groups, self.cfg.group_seed)
