"""APT: approximated prompt tuning (Wu et al., "Approximated Prompt Tuning for Vision-Language Pre-trained Models",
ICCV 2023, arXiv 2306.15706) on CLIP. Unofficial, from the paper: the official repo DoubtedSteam/APT@d66bbc4 (no
licence) has ViLT / METER code only and no CLIP code; its ``approximate_prompt`` module
(``METER/meter/modules/bert_model_apt.py``) was read for the module's arithmetic and re-implemented here, no code
copied (spec ``clip-prompt-learners.md`` section 18).

Module (one per transformer block, ``ApproximatedPrompt``): memory tokens ``M`` ``(m, W)`` ~ N(0, 0.02^2) and a
rank-``r`` map ``mm = Linear(W, r) -> Linear(r, W)`` without biases (first layer ~ N(0, 1), second zero), a scalar
``s`` = 0. For the attention output ``a`` of a token and the input the attention saw ``q``::

    A = ReLU(q (M + mm(M))^T)             (per token, over the m memory tokens)
    a <- (a + (A M) * max_j A_j.detach()) * exp(s)

so the effect of ``m`` prompt tokens on attention is approximated without attending to them. At the start
(``mm``'s second layer zero) the side term is ``ReLU(q M^T) M``, small with ``M`` of std 0.02.

Classifier: the frozen CLIP text features of ``template`` (default "a photo of a {}."), so new classes need no
training; only the APT modules train, with cross-entropy on ``scale * cos(f, t_c)``.

Choices the paper / reference leave open for CLIP, with the value taken and why:

- tower: the image tower only (``towers`` has no other value): the CLIP results' tower was not read; the text tower
  would need the prompted text encoder's exact caching paths changed (a core change);
- placement: a forward hook on each vision block's ``attn`` output, before ``ls_1`` and the residual add (the
  reference applies it to the attention output projection, before the residual and LayerNorm of the post-LN BERT);
  ``q`` is ``ln_1(x)``, the normalised input the attention sees (the reference's ``input_tensor`` of a post-LN block
  is normalised too);
- ``m`` = 200 memory tokens, rank ``r`` = 4, every layer: the reference's ViLT / METER values;
- training: MaPLe's base-to-new schedule (SGD lr 0.0035, batch 4, 5 epochs, fp16), a deep-prompt method of similar
  size, since the paper's CLIP settings were not read; the attention dropout of the reference is 0 and omitted.

Trainable parameters on ViT-B/16 (W = 768, 12 blocks): 12 x (200 x 768 + 2 x 768 x 4 + 1) = 1,916,940
(``tests/test_apt.py``); no published CLIP count was found.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.teacher import FrozenCLIPTeacher
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.vision import encode_image, vision_width
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["APT", "APTConfig", "APTModel", "ApproximatedPrompt"]


@dataclass(frozen=True)
class APTConfig(PromptLearnerConfig):
    """APT settings (module sizes of the reference; MaPLe's base-to-new schedule, see the module notes)."""

    epochs: int = ranged(5, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0035, gt=0)
    memory: int = ranged(200, ge=1)  # memory tokens per block
    rank: int = ranged(4, ge=1)  # rank of the map mm
    depth: int = ranged(0, ge=0)  # blocks with a module, from the first (0: all)
    template: str = "a photo of a {}."  # frozen text classifier


class ApproximatedPrompt(nn.Module):
    """The approximated-prompt side module of one block (see the module notes).

    Args:
        width: token width ``W``.
        memory: memory tokens ``m``.
        rank: rank ``r`` of ``mm``.
        generator: RNG of the initial values (None: the global one).
    """

    def __init__(self, width: int, memory: int = 200, rank: int = 4, *, generator=None) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(memory, width, generator=generator) * 0.02)
        self.down = nn.Parameter(torch.randn(rank, width, generator=generator))  # Linear(W, r).weight ~ N(0, 1)
        self.up = nn.Parameter(torch.zeros(width, rank))  # Linear(r, W).weight, zero
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``(a + (A M) * max(A).detach()) * exp(s)`` for attention outputs ``a`` and inputs ``q`` (``(..., W)``)."""
        m = self.tokens.to(a.dtype)
        keys = m + F.linear(F.linear(m, self.down.to(a.dtype)), self.up.to(a.dtype))
        attn = F.relu(q @ keys.t())  # (..., m)
        weights = attn.max(dim=-1, keepdim=True).values.detach()
        return (a + (attn @ m) * weights) * self.scale.exp().to(a.dtype)


class APTModel(PromptedCLIP):
    """Frozen CLIP + one ``ApproximatedPrompt`` per vision block (``blocks``) + the frozen text classifier."""

    context_is_the_prompt = False

    def __init__(self, clip_model, tokenizer, classnames, cfg: APTConfig, *, generator=None) -> None:
        super().__init__(clip_model, tokenizer, classnames, [0], truncate=cfg.truncate, round_prompts=False)
        n = len(clip_model.visual.transformer.resblocks)
        depth = cfg.depth or n
        if depth > n:
            raise ValueError(f"depth={depth} but the image tower has {n} blocks")
        width = vision_width(clip_model)
        self.blocks = nn.ModuleList(ApproximatedPrompt(width, cfg.memory, cfg.rank, generator=generator)
                                    for _ in range(depth))  # fmt: skip
        self.classifier = FrozenCLIPTeacher(clip_model, tokenizer, classnames, (cfg.template,), round_embeddings=False)

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        self.classifier.set_classnames(classnames)

    @contextmanager
    def _hooked(self):
        """Apply the side modules to the vision blocks' attention outputs for the duration of one forward (the
        frozen CLIP may be shared, so the hooks never outlive it)."""

        def hook(index, module, args, output):
            return (self.blocks[index](output[0], args[0]),) + tuple(output[1:])

        blocks = self.clip.visual.transformer.resblocks
        handles = []
        try:
            for i, _ in enumerate(self.blocks):
                handles.append(blocks[i].attn.register_forward_hook(partial(hook, i)))
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with self._hooked():
            f = encode_image(self.clip, images)
        return self.logits(f, self.classifier.text_features.to(f.dtype))


@STRATEGIES.register("apt", config=APTConfig)
class APT(PromptLearnerTemplate):
    """APT as an Avalanche strategy: ``model`` is an ``APTModel``; cross-entropy, SGD over the side modules."""

    config_class = APTConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: APTConfig) -> APTModel:
        return APTModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
