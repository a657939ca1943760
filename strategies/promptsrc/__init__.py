"""PromptSRC (Khattak et al., ICCV 2023): ``strategy.py`` (the ``promptsrc`` strategy, its config and model), and
what only PromptSRC uses: ``averaging.py`` (Gaussian prompt aggregation over epochs), ``templates.py`` (its 60
teacher templates) and ``losses.py`` (the self-regulating consistency loss). ``disa.py`` is DiSa (the ``disa``
strategy): PromptSRC plus two terms, so it lives beside the PromptSRC it extends (methods never import each other).
The frozen teacher (``ctta.clip_prompting.teacher``) and the L1 / KL terms (``ctta.losses``) stay in the core:
wave 2's CoPrompt, HiCroPL and MSGCoOp use them too.
"""

from ctta.strategies.promptsrc import disa  # noqa: F401  (registers "disa"; it extends PromptSRC)
from ctta.strategies.promptsrc.averaging import GaussianEpochAverage, gaussian_epoch_weights
from ctta.strategies.promptsrc.losses import promptsrc_consistency
from ctta.strategies.promptsrc.strategy import (
    TEACHER_TEMPLATES,
    PromptSRC,
    PromptSRCConfig,
    PromptSRCModel,
)
from ctta.strategies.promptsrc.templates import PROMPTSRC_TEMPLATES

__all__ = [
    "PROMPTSRC_TEMPLATES",
    "TEACHER_TEMPLATES",
    "GaussianEpochAverage",
    "PromptSRC",
    "PromptSRCConfig",
    "PromptSRCModel",
    "gaussian_epoch_weights",
    "promptsrc_consistency",
]
