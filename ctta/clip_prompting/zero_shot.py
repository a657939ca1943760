"""Zero-shot strategies: a frozen CLIP whose classifier is built from texts (no trainable parameter).

Shape of CuPL, FuDD (``remaining-seed-systems.md`` C1, C2), GLOV's discovered-prompt evaluation and, through
``fit_experience``, the discrete searches (ProAPO, IPO, the LLM optimizer: ``ctta.clip_prompting.search``). Papers:
CLIP (Radford et al., ICML 2021) zero-shot classification; CuPL (Pratt et al., ICCV 2023; sarahpratt/CuPL@719619c
``classify_imagenet.py``). Behaviour read, re-implemented, no code copied.

``TextHeadModel``: frozen CLIP + ``texts_for(classnames) -> [[texts of class c]]``; the head ``(C, E)`` is
``class_embeddings`` (mean of normalised rows, re-normalised) and the logits ``logit_scale * cos`` (CLIP's zero-shot
classifier; the scale does not change the argmax the references take).

``ZeroShotTemplate``: an Avalanche strategy (the CLIP prompt learners' template, ``PromptLearnerTemplate``) that
trains nothing: no optimizer (a user ``optimizer`` is refused), one call ``fit_experience()`` per train experience
(default: nothing; a search strategy scores texts on the experience's data there) instead of epochs. The head follows
the streams as the prompt learners' does: few-shot benchmarks name the classes of every stream (base-to-new,
cross-dataset: the head is rebuilt per stream); on a class-incremental stream (Avalanche's classes timeline) the head
covers the classes seen so far and the other labels get ``MASKED_LOGIT``; a test-time benchmark (``test_time``
scenario: no train stream; each experience carries its class names) is evaluated directly (the runner's
``zero_shot`` capability), on ``views[0]`` (the centre crop) mapped from the views' normalisation to the model's.

Shared with wave 2: CuPL and FuDD, GLOV's evaluation, and the search template of ProAPO, IPO and the LLM
optimizer (issue 23).

Deviations: none in the classifier; the references evaluate one dataset in one pass, not an Avalanche stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctta.clip_prompting.template import MASKED_LOGIT, PromptLearnerTemplate
from ctta.clip_prompting.text_cache import TextEmbeddingCache, class_embeddings
from ctta.clip_prompting.vision import encode_image
from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_image_stats, renormalize
from ctta.templates.benchmark_info import _attr, origin_info
from ctta.templates.epoch import EpochTemplate

__all__ = ["TextHeadModel", "ZeroShotConfig", "ZeroShotTemplate", "single_template"]

TextsFor = Callable[[list[str]], list[list[str]]]


def single_template(template: str = "a photo of a {}.") -> TextsFor:
    """``texts_for`` of one template per class (``_`` in a name becomes a space)."""
    return lambda names: [[template.format(c.replace("_", " "))] for c in names]


class TextHeadModel(nn.Module):
    """Frozen CLIP with a text classifier built from texts (buffer ``head`` ``(C, E)``; nothing trainable).

    Args:
        clip_model: the frozen open_clip ``CLIP`` (a submodule, kept in eval mode, never trained).
        tokenizer: its tokenizer.
        classnames: the classes of the head.
        texts_for: ``texts_for(classnames)`` -> the texts of each class (one non-empty list per class).
        cache: the text-embedding cache (None: encode every time).
        renormalize: re-normalise each class mean (the references do).
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], texts_for: TextsFor, *,
                 cache: TextEmbeddingCache | None = None, renormalize: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.clip = clip_model.requires_grad_(False)
        self.tokenizer, self.texts_for, self.cache, self.renormalize = tokenizer, texts_for, cache, renormalize
        self.classnames: list[str] = []
        self.set_classnames(classnames)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen backbone, always in eval mode
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    def class_texts(self, classnames: Sequence[str]) -> list[list[str]]:
        """The texts of each class of ``classnames`` (``texts_for``), checked to be non-empty."""
        texts = self.texts_for(list(classnames))
        if len(texts) != len(classnames):
            raise ValueError(f"texts_for returned {len(texts)} lists for {len(classnames)} classes")
        return texts

    @torch.no_grad()
    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Recompute the head for ``classnames``."""
        per_class = self.class_texts(classnames)
        head = class_embeddings(self.clip, self.tokenizer, per_class, self.cache, self.renormalize)
        self.register_buffer("head", head, persistent=False)
        self.classnames = list(classnames)

    def set_texts_for(self, texts_for: TextsFor) -> None:
        """Use ``texts_for`` and recompute the head."""
        self.texts_for = texts_for
        self.set_classnames(self.classnames)

    def refresh(self) -> None:
        """Recompute the head (e.g. after a precision change of the CLIP)."""
        self.set_classnames(self.classnames)

    def text_features(self) -> torch.Tensor:
        """The head ``(C, E)`` (normalised when ``renormalize``)."""
        return self.head

    @torch.no_grad()
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``(B, E)`` (float32)."""
        f = encode_image(self.clip, x).float()
        return f / f.norm(dim=-1, keepdim=True)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * f @ g.T`` for normalised features."""
        return self.logit_scale * image_features.float() @ text_features.float().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(x), self.text_features())


@dataclass(frozen=True)
class ZeroShotConfig:
    """Fields every zero-shot strategy shares (nothing trains: no epochs, no learning rate)."""

    eval_batch_size: int = 100
    prec: str = "fp32"  # fp32 | amp | fp16 (CUDA only: CLIP in half precision) | auto (the run's precision)
    text_cache: str = ""  # folder of the text-embedding cache ("": in memory only)
    init_seed: int | None = None  # seed of any random choice a method makes (None: the run's RNG)
    num_workers: int = 0


class ZeroShotTemplate(PromptLearnerTemplate):
    """A strategy whose classifier is built from texts; see the module notes.

    Subclasses set ``config_class`` and implement ``build_prompted(clip, tokenizer, classnames, cfg)`` (default:
    CLIP's "a photo of a {}."), and may override ``fit_experience()`` (search strategies) and ``forward_eval()``
    (per-image classifiers, e.g. FuDD).
    """

    config_class = ZeroShotConfig
    model_class = TextHeadModel
    records_epochs = False  # no epochs
    training_free = True  # the contract: no trainable parameter, predictions from texts
    zero_shot = True  # the runner evaluates a benchmark without train stream directly (test-time scenario)
    optimizer_refusal = "a zero-shot classifier has no trainable parameter (its head is built from texts)"
    train_epochs_refusal = "a zero-shot strategy does not train (one fit_experience() per train experience)"

    def __init__(self, *, model: nn.Module, tokenizer=None, classnames: Sequence[str] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        if "num_classes" in kwargs:
            raise TypeError(f"{type(self).__name__}() takes classnames=[...], not num_classes (one name per label)")
        self._tokenizer, self._classnames = tokenizer, classnames
        EpochTemplate.__init__(self, model=model, **kwargs)
        del self._tokenizer, self._classnames
        self.user_optimizer, self.scheduler, self.prec = False, None, self.cfg.prec
        if self.prec == "fp16" and self.device.type == "cuda":
            self.model.half()
            self.model.refresh()
        self.train_classnames = list(self.model.classnames)
        self.all_classnames = list(self.train_classnames)
        self.seen: list[int] | None = None
        self.model_normalization = clip_image_stats(self.model.clip)

    @classmethod
    def build_prompted(cls, clip_model: nn.Module, tokenizer, classnames: list[str], cfg) -> TextHeadModel:
        """The method's ``TextHeadModel`` (default: the single template "a photo of a {}.")."""
        return TextHeadModel(clip_model, tokenizer, classnames, single_template(), cache=text_cache_of(cfg))

    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        from ctta.clip_prompting.metrics import BaseNewAccuracy
        from ctta.metrics import TopKAccuracy

        return (BaseNewAccuracy(), TopKAccuracy(5))

    # ------------------------------------------------------------------ "training"
    def make_optimizer(self, **kwargs: Any) -> None:
        """Nothing to optimise."""

    def train_experience(self, **kwargs: Any) -> None:
        """One ``fit_experience()`` (the head already covers the experience's classes)."""
        with torch.no_grad():
            self.fit_experience()

    def _after_training_exp(self, **kwargs: Any) -> None:
        EpochTemplate._after_training_exp(self, **kwargs)  # no text context to save

    def fit_experience(self) -> None:
        """Called once per train experience (``self.experience.dataset``); default: nothing."""

    # ------------------------------------------------------------------ evaluation
    def _before_eval_exp(self, **kwargs: Any) -> None:
        info = origin_info(self.experience)
        own = _attr(self.experience, "classnames")  # test-time experiences carry their class names
        if own and not (info is not None and info.stream_classnames) and self.seen is None:
            self._head(list(own), None)
            EpochTemplate._before_eval_exp(self, **kwargs)
            return
        super()._before_eval_exp(**kwargs)

    def eval_inputs(self) -> torch.Tensor:
        """``mb_x``; views ``(B, N, 3, H, W)`` -> ``views[:, 0]`` in the model's normalisation."""
        x = self.mb_x
        if x.dim() == 5:
            info = origin_info(self.experience)
            src = info.normalization if info is not None and info.normalization else (OPENAI_CLIP_MEAN,
                                                                                       OPENAI_CLIP_STD)
            x = renormalize(x[:, 0], src, self.model_normalization)
        if self.prec == "fp16" and self.device.type == "cuda":
            x = x.half()
        return x

    def head_logits(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` over the head's classes -> logits over every label (``MASKED_LOGIT`` for classes not seen)."""
        out = out.float()
        if self.seen is None:
            return out
        full = out.new_full((out.shape[0], len(self.all_classnames)), MASKED_LOGIT)
        full[:, self.seen] = out
        return full

    @torch.no_grad()
    def forward_train(self) -> torch.Tensor:
        return self.head_logits(self.model(self.eval_inputs()))

    forward_eval = forward_train


def text_cache_of(cfg) -> TextEmbeddingCache:
    """The text-embedding cache ``cfg.text_cache`` names (``""``: memory only)."""
    return TextEmbeddingCache(getattr(cfg, "text_cache", "") or None)
