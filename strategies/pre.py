"""PRE: prompt learning with a reparameterization encoder (Pham Minh et al., "PRE: Vision-Language Prompt Learning
with Reparameterization Encoder", arXiv 2309.07760). Official code: minhanh151/PRE@08be701 ``trainers/pre.py``
(MIT, inherited from CoOp; behaviour read, re-implemented on open_clip, no code copied).

CoOp whose context is re-parameterised before the text encoder: ``ctx' = Enc(ctx) + ctx`` (residual), ``Enc`` a
bidirectional LSTM over the context tokens (hidden ``D/2`` per direction, so its output has the token width; one
layer for ``LSTM1``, two for ``LSTM2``); the encoder runs at training and inference alike. Trained: ``ctx`` and
the encoder, cross-entropy. Defaults: the official base-to-new config ``PRE/vit_b16_ep50_ctxv1`` (M = 4 from
"a photo of a", SGD lr 0.002, batch 32, 50 epochs, ``prec: amp`` (only amp works in the reference), ``LSTM1``,
residual).

Deviations: the MLP and transformer encoders and ``SEPARATE`` (one encoder per token) options are not offered (the
base-to-new script uses ``LSTM1``, shared); the LSTM's dropout 0.05 only acts between layers (``LSTM2``), as in
PyTorch; the text is truncated at the longest EOT with the class-independent prefix encoded once (exact);
``prec: amp`` uses autocast without a gradient scaler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.clip_prompting.context import ContextConfig, ContextModel
from ctta.clip_prompting.template import PromptLearnerTemplate, init_generator
from ctta.registry import STRATEGIES

__all__ = ["PRE", "PREConfig", "PREModel", "ReparamLSTM"]


@dataclass(frozen=True)
class PREConfig(ContextConfig):
    epochs: int = 50
    prec: str = "amp"
    encoder: str = "LSTM1"  # LSTM1 | LSTM2
    residual: bool = True


class ReparamLSTM(nn.Module):
    """``Enc(ctx) (+ ctx)``: a bidirectional LSTM over the context tokens ``(M, D)`` (or ``(C, M, D)``)."""

    def __init__(self, width: int, layers: int = 1, residual: bool = True) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"token width must be even for a bidirectional LSTM, got {width}")
        self.lstm = nn.LSTM(width, width // 2, num_layers=layers, dropout=0.05 if layers > 1 else 0.0,
                            bidirectional=True, batch_first=True)  # fmt: skip
        self.residual = residual

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        out = self.lstm(ctx)[0]  # (M, D) or (C, M, D)
        return out + ctx if self.residual else out


class PREModel(ContextModel):
    """CoOp's context model (``ContextModel``) whose context passes through ``encoder`` before the text tower."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: PREConfig = PREConfig(), *, generator=None) -> None:
        if cfg.encoder not in ("LSTM1", "LSTM2"):
            raise ValueError(f"encoder must be LSTM1 or LSTM2, got {cfg.encoder!r}")
        super().__init__(clip_model, tokenizer, classnames, cfg, generator=generator)
        layers = 1 if cfg.encoder == "LSTM1" else 2
        self.encoder = ReparamLSTM(self.ctx.shape[-1], layers, cfg.residual).to(self.ctx.dtype)

    def text_features(self) -> torch.Tensor:
        return self.text(self.encoder(self.ctx))  # (C, E)

    def text_context(self) -> torch.Tensor:
        """The re-parameterised context ``Enc(ctx) + ctx`` the text tower sees."""
        return self.encoder(super().text_context())


@STRATEGIES.register("pre", config=PREConfig)
class PRE(PromptLearnerTemplate):
    """PRE as an Avalanche strategy: ``model`` is a ``PREModel``; SGD over ``ctx`` and the encoder."""

    config_class = PREConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: PREConfig) -> PREModel:
        return PREModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))
