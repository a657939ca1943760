"""Test-time prompt tuning of CLIP as an Avalanche template, shared by TPT and DiffTPT.

``PromptTuningTemplate`` drives a ``ctta.backbones.clip_tuner.PromptTuner`` inside ``eval()`` (one episode per test
sample, or continual), reports top-5 accuracy next to top-1, and rebuilds the text artefacts when an experience
brings other class names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ctta.backbones.clip_tuner import PromptTuner, PromptTuningConfig
from ctta.metrics import TopKAccuracy
from ctta.templates import TestTimeTemplate

__all__ = ["PromptTuningTemplate"]


class PromptTuningTemplate(TestTimeTemplate):
    """Test-time prompt tuning of CLIP as an Avalanche strategy: ``eval(exp)`` tunes and predicts every test sample
    (``mb_x`` = views) with a ``PromptTuner`` (TPT, DiffTPT).

    Mini-batches are ``(B, N, 3, H, W)`` views (``scenarios/test_time.py``); ``B = episode_batch``. The class names
    of an experience come from ``experience.classnames`` (else the benchmark's), and text artefacts are rebuilt
    when they change. Episodic mode resets the context after every sample (the paper's setting); continual mode
    (``episodic=False``) keeps the context and its AdamW state across the stream.
    """

    def __init__(
        self,
        *,
        tuner: PromptTuner,
        classnames: Sequence[str] | None = None,
        device="auto",
        plugins=None,
        evaluator=None,
        **kwargs,
    ) -> None:
        self.tuner = tuner
        self.default_classnames = list(classnames) if classnames is not None else None
        self.selected: list[torch.Tensor] = []
        super().__init__(
            model=tuner.model,
            episodic=tuner.cfg.episodic,
            eval_mb_size=tuner.cfg.episode_batch,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            precision="fp32",
            **kwargs,
        )

    def _before_eval_exp(self, **kwargs) -> None:
        names = getattr(self.experience, "classnames", None) or self.default_classnames
        if names is None:
            raise ValueError(
                f"{type(self).__name__} needs class names: set benchmark.classnames or experience.classnames"
            )
        self.tuner.set_classnames(names)
        self.tuner.plan(len(self.experience.dataset))
        super()._before_eval_exp(**kwargs)

    def adapt_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(
                f"{type(self).__name__} expects mini-batches of views (B, N, 3, H, W), got shape {tuple(x.shape)}; "
                f"use the test_time scenario (it produces the views)"
            )
        logits = self.tuner.predict_many(x)
        if self.tuner.cfg.log_selected and self.tuner.last_selected is not None:
            self.selected.extend(self.tuner.last_selected)
        return logits

    @classmethod
    def extra_metrics(cls, cfg: PromptTuningConfig):
        """Top-5 accuracy next to the default top-1 (the reference reports both)."""
        return (TopKAccuracy(5),)

    @classmethod
    def from_config(
        cls, cfg: PromptTuningConfig, *, backbone, benchmark, device, evaluator, plugins=(), precision="auto"
    ):
        names = getattr(benchmark, "classnames", None)
        if not names:
            raise ValueError(f"{cls.__name__} needs a benchmark with class names (benchmark.classnames)")
        tuner = PromptTuner(backbone.model, backbone.tokenizer, names, cfg)
        return cls(tuner=tuner, classnames=names, device=device, plugins=list(plugins), evaluator=evaluator)
