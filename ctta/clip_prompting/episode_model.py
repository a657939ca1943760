"""What the episodic test-time tuner (TPT, DiffTPT) tunes: a CoOp context over ``PromptedText``, or a whole prompted
CLIP handed over as an object (CoOp, CoCoOp, MaPLe, PromptSRC, PRE, ATPrompt models).

Paper: TPT (Shu et al., NeurIPS 2022, arXiv 2209.07511). Reference: azshue/TPT@63ecbace
``clip/custom_clip.py:{PromptLearner, ClipTestTimeTuning}`` (behaviour read, re-implemented, no code copied): the
prompt ``[SOS] ctx <name>. [EOT]`` with a context initialised from "a photo of a" or a CoOp checkpoint's ``ctx``.

- ``TunedContext``: the tuned context ``ctx`` (parameter) and its start ``ctx0`` (buffer) over the one prompted text
  tower ``PromptedText`` (layout ``[n]``, class token at the end); every exact speed-up is ``PromptedText``'s.
- ``TPTModel``: the frozen CLIP plus a ``TunedContext``.
- ``load_coop_ctx`` / ``load_prompts`` / ``save_prompts``: the files a tuner starts from (CoOp's ``state_dict.ctx``;
  the trainable prompt state of any prompted CLIP).

Deviations: a context initialised from words needs one BPE token per word (the reference takes the first ``n``
tokens of the phrase silently).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ctta.clip_prompting.text import PromptedText, context_init

__all__ = ["TunedContext", "TPTModel", "load_coop_ctx", "load_prompts", "save_prompts", "trainable_state"]


class TunedContext(nn.Module):
    """A shared CoOp context over ``PromptedText``: ``forward(ctx) -> (C, E)`` text features.

    Args:
        clip_model: frozen open_clip CLIP.
        tokenizer: its BPE tokenizer (duck-typed: ``encode``, ``eot_token_id``, callable on a list of texts).
        classnames: class names.
        ctx0: ``(n, D)`` initial context.
        truncate, n_buckets, shared_prefix: ``PromptedText``'s exact speed-ups.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        ctx0: torch.Tensor,
        *,
        truncate: bool = True,
        n_buckets: int = 4,
        shared_prefix: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = PromptedText(
            clip_model, tokenizer, classnames, [ctx0.shape[0]], truncate=truncate, n_buckets=n_buckets,
            shared_prefix=shared_prefix,
        )  # fmt: skip
        dev = self.encoder.token_embedding.device
        self.ctx = nn.Parameter(ctx0.detach().float().clone().to(dev))  # (n, D)
        self.register_buffer("ctx0", ctx0.detach().float().clone().to(dev))

    @classmethod
    def from_words(cls, clip_model, tokenizer, classnames, ctx_init: str, n_ctx: int, *, generator=None, **kw):
        """Context from ``ctx_init`` (one token per word, ``n_ctx`` ignored) or ``n_ctx`` random N(0, 0.02^2)."""
        _, ctx0 = context_init(clip_model, tokenizer, ctx_init, 0 if ctx_init else n_ctx, generator=generator)
        return cls(clip_model, tokenizer, classnames, ctx0, **kw)

    @property
    def tower(self):
        return self.encoder.tower

    @property
    def classnames(self) -> list[str]:
        return self.encoder.classnames

    @property
    def n_classes(self) -> int:
        return self.encoder.n_classes

    @property
    def tokens_encoded(self) -> int:
        return self.encoder.tokens_encoded

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.encoder.set_classnames(classnames)

    def forward(self, ctx: torch.Tensor | None = None, *, per_class: bool = False, normalize: bool = False):
        """Text features: ``(n, D)`` -> ``(C, E)``; stacked contexts ``(S, n, D)`` -> ``(S, C, E)``; with
        ``per_class=True`` one context per class ``(C, n, D)`` -> ``(C, E)``."""
        ctx = self.ctx if ctx is None else ctx
        if ctx.shape[-2:] != self.ctx.shape:
            raise ValueError(f"ctx must end with shape {tuple(self.ctx.shape)}, got {tuple(ctx.shape)}")
        soft = ctx[:, None] if ctx.dim() == 3 and not per_class else ctx
        return self.encoder(soft, normalize=normalize)


class TPTModel(nn.Module):
    """The frozen CLIP plus the tuned context (its ``text.ctx`` is the only trainable parameter)."""

    def __init__(self, clip_model: nn.Module, text: TunedContext) -> None:
        super().__init__()
        self.clip = clip_model
        self.text = text

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()
        return self


def load_coop_ctx(path: str) -> torch.Tensor:
    """The ``ctx`` entry of a CoOp checkpoint (``state_dict.ctx`` or ``prompt_learner.ctx``), as fp32."""
    state = _load_state(
        path,
        "CoOp checkpoint not found: {path}. Download CoOp's released 16-shot ImageNet prompt (KaiyangZhou/CoOp, "
        "e.g. prompt_learner/model.pth.tar-50) and set strategy.init=coop:/path/to/it",
    )
    ctx = state.get("ctx", state.get("prompt_learner.ctx"))
    if ctx is None:
        raise KeyError(f"{path}: no 'ctx' entry in the checkpoint's state_dict (keys: {list(state)[:10]})")
    return ctx.float()


def _load_state(path: str, missing: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(missing.format(path=path)) from None
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> detached copy of every trainable parameter of ``model`` (its prompts, couplings, meta-net...)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_prompts(model: nn.Module, path: str | Path) -> Path:
    """Save the trainable prompt state of a prompted CLIP as ``{"state_dict": {name: tensor}}`` (TPT's
    ``init="prompts:<path>"`` loads it into a model of the same method and settings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.cpu() for k, v in trainable_state(model).items()}}, path)
    return path


@torch.no_grad()
def load_prompts(model: nn.Module, path: str) -> None:
    """Load a ``save_prompts`` file into ``model``'s trainable parameters (every one must be in the file)."""
    state = _load_state(path, "prompt file not found: {path} (written by ctta.clip_prompting.save_prompts)")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    if missing:
        raise KeyError(f"{path}: no entry for the trainable parameters {missing[:5]} of {type(model).__name__}")
    for name, p in params.items():
        if state[name].shape != p.shape:
            raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, the model {tuple(p.shape)}")
        p.copy_(state[name])
