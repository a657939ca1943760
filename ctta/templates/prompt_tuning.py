"""Test-time prompt tuning of CLIP as an Avalanche template, shared by TPT and DiffTPT.

``PromptTuningTemplate`` drives a ``ctta.clip_prompting.episode_tuner.PromptTuner`` inside ``eval()`` (one episode per
test sample, or continual), reports top-5 accuracy next to top-1, and rebuilds the text artefacts when an experience
brings other class names. Views normalised with other statistics than the CLIP weights expect (open_clip's
``visual.image_mean``/``image_std``, from the weights' pretrained config) are mapped to the weights' statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ctta.clip_prompting.episode_tuner import PromptTuner, PromptTuningConfig
from ctta.clip_prompting.model import PromptedCLIP, clip_parts
from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Stats, clip_image_stats, renormalize
from ctta.metrics import TopKAccuracy
from ctta.templates.base import split_arguments
from ctta.templates.benchmark_info import infer_classnames, origin_info, required_classnames
from ctta.templates.test_time import TestTimeTemplate

__all__ = ["PromptTuningTemplate"]

_OWN_ARGS = ("config", "classnames", "tokenizer", "tuner", "precision", "view_normalization")
_PLACEHOLDER_CLASSNAMES = ("object",)  # until the first experience brings the class names


class PromptTuningTemplate(TestTimeTemplate):
    """Test-time prompt tuning of CLIP as an Avalanche strategy: ``eval(exp)`` tunes and predicts every test sample
    (``mb_x`` = views) with a ``PromptTuner`` (TPT, DiffTPT).

    Mini-batches are ``(B, N, 3, H, W)`` views (``ctta.scenarios.test_time``); ``B = episode_batch``. The class
    names of an experience come from ``experience.classnames`` (else its dataset's or benchmark's, else
    ``classnames=``), and text artefacts are rebuilt when they change. Episodic mode resets the context after
    every sample (the paper's setting); continual mode (``episodic=False``) keeps the context and its AdamW state.

    Args (beyond Avalanche's; the config's fields are keyword arguments too):
        model: an open_clip CLIP model or ctta's ``CLIPBackbone`` (its tokenizer is used), or a trained prompted
            CLIP (``ctta.clip_prompting.PromptedCLIP``: CoOp, CoCoOp, MaPLe, PromptSRC, ...) to tune at test time.
        config: the method's config dataclass.
        classnames: class names when the benchmark does not carry them.
        tokenizer: text tokenizer (default: the backbone's, else open_clip's ``SimpleTokenizer``, offline).
        tuner: an already built ``PromptTuner`` (instead of ``model``).
        precision: accepted for the runner's contract; mixed precision is the config's ``amp`` field.
        view_normalization: ``(mean, std)`` the views are normalised with (default: the benchmark's
            ``normalization``, else OpenAI CLIP's, what ``ctta.scenarios.test_time`` applies). When the CLIP
            weights expect other statistics (``visual.image_mean``/``image_std``), views are mapped to them.
    """

    config_class = PromptTuningConfig
    optimizer_refusal = (
        "test-time prompt tuning resets its own AdamW for every test sample (episode); set lr, weight_decay, "
        "betas, eps and tta_steps instead"
    )
    criterion_refusal = (
        "the loss is the marginal entropy of the mean prediction over the selected confident views; set "
        "selection_p (and the method's selection fields) instead"
    )

    def __init__(
        self,
        *,
        model=None,
        config=None,
        classnames: Sequence[str] | None = None,
        tokenizer=None,
        tuner: PromptTuner | None = None,
        precision: str = "fp32",
        view_normalization: Stats | None = None,
        **kwargs,
    ) -> None:
        template, method_kwargs = split_arguments(kwargs)
        self.check_arguments(template.get("optimizer"), template.get("criterion"), template.get("train_epochs"))
        if tuner is None:
            if model is None:
                raise TypeError(f"{type(self).__name__} needs model= (an open_clip CLIP model)")
            self.cfg = self.resolve_config(config, method_kwargs, _OWN_ARGS)
            if isinstance(model, PromptedCLIP):  # a trained CoOp / CoCoOp / MaPLe / PromptSRC / ... model
                tuner = self.make_tuner_from(model, self.cfg)
            else:
                clip, tok = clip_parts(model, tokenizer)
                tuner = self.make_tuner(clip, tok, classnames if classnames else _PLACEHOLDER_CLASSNAMES, self.cfg)
        else:
            self.resolve_config(None, method_kwargs, _OWN_ARGS)
            self.cfg = tuner.cfg
        self.tuner = tuner
        self.view_normalization = _as_stats(view_normalization)
        self.model_normalization = clip_image_stats(tuner.clip)  # what the weights expect
        self.input_normalization = self.view_normalization or (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        self.default_classnames = list(classnames) if classnames else None
        self.selected: list[torch.Tensor] = []
        template["eval_mb_size"] = template.get("eval_mb_size") or tuner.cfg.episode_batch
        super().__init__(model=tuner.model, episodic=tuner.cfg.episodic, precision="fp32", **template)

    def make_tuner(self, clip_model, tokenizer, classnames: Sequence[str], cfg) -> PromptTuner:
        """The method's ``PromptTuner`` (DiffTPT plugs its view filtration in)."""
        return PromptTuner(clip_model, tokenizer, classnames, cfg)

    def make_tuner_from(self, model: PromptedCLIP, cfg) -> PromptTuner:
        """The method's ``PromptTuner`` over a trained prompted CLIP (``PromptTuner.from_prompted``)."""
        return PromptTuner.from_prompted(model, cfg)

    def _before_eval_exp(self, **kwargs) -> None:
        names = infer_classnames(self.experience, self.default_classnames)
        if names is None:
            raise ValueError(
                f"{type(self).__name__} needs class names: pass classnames= to the strategy, or use a benchmark "
                "whose experiences (or datasets) carry .classnames"
            )
        self.tuner.set_classnames(names)
        self.input_normalization = self.normalization_of(self.experience)
        self.tuner.plan(len(self.experience.dataset))
        super()._before_eval_exp(**kwargs)

    def adapt_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(
                f"{type(self).__name__} expects mini-batches of views (B, N, 3, H, W), got shape {tuple(x.shape)}; "
                f"use the test_time scenario (it produces the views)"
            )
        logits = self.tuner.predict_many(renormalize(x, self.input_normalization, self.model_normalization))
        if self.tuner.cfg.log_selected and self.tuner.last_selected is not None:
            self.selected.extend(self.tuner.last_selected)
        return logits

    def normalization_of(self, experience) -> Stats:
        """``(mean, std)`` of ``experience``'s views: ``view_normalization``, else its benchmark's, else OpenAI's."""
        if self.view_normalization is not None:
            return self.view_normalization
        info = origin_info(experience)
        found = _as_stats(info.normalization) if info is not None else None
        return found or (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    @classmethod
    def extra_metrics(cls, cfg: PromptTuningConfig):
        """Top-5 accuracy next to the default top-1 (the reference reports both)."""
        return (TopKAccuracy(5),)

    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict:
        return {"classnames": required_classnames(benchmark, cls.__name__)}


def _as_stats(value) -> Stats | None:
    if value is None:
        return None
    mean, std = value
    return tuple(float(m) for m in mean), tuple(float(v) for v in std)
