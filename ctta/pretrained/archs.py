"""Architectures of the backbones shipped with ctta, and the compact tokenizer of the tiny CLIP.

Both are built through their libraries' own classes, never forked: the ViT is timm's ``VisionTransformer``
(``vit_tiny_patch16_224`` with size overrides), the CLIP is open_clip's ``CLIP`` built from a config dict (as
``ctta.backbones.clip`` builds ``ctta-tiny-clip``).

The tiny CLIP's text tower has a compact vocabulary: the byte-pair tokens of its training captions (class names and
caption templates below) plus pad, unknown, start and end tokens. ``VocabTokenizer`` runs open_clip's own
``SimpleTokenizer`` and maps its token ids into that vocabulary; the end-of-text token keeps the largest id, so
open_clip's argmax (EOT) pooling and ctta's prompted text encoder work unchanged. A word the model never saw in training
maps to the unknown token (one per byte-pair piece, so a soft-token placeholder ``X`` stays one token and class names /
ATPrompt attribute words keep their token count), with a warning naming it once (not for ``X``); ``require_known``
refuses such words where an unknown token would be a wrong start (a ``ctx_init`` phrase). ``encode`` gives the compact
ids without start/end tokens, as open_clip's ``SimpleTokenizer.encode`` does, so the prompted text towers (CoOp, CoCoOp,
MaPLe, PromptSRC, PRE, ATPrompt, TPT) take this tokenizer as they take open_clip's. A text longer than the context is
refused (open_clip would cut it silently, which would misplace a prompt's soft tokens). This keeps the token embedding
at a few dozen rows instead of 49,408.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "VIT_NAME",
    "VIT_TIMM_ARCH",
    "VIT_ARCH",
    "CLIP_NAME",
    "CLIP_TAG",
    "CLIP_CONTEXT_LENGTH",
    "DIGIT_NAMES",
    "FASHION_NAMES",
    "CAPTION_TEMPLATES",
    "captions",
    "caption_vocabulary",
    "VocabTokenizer",
    "clip_config",
    "build_tiny_vit",
    "build_tiny_clip",
]

VIT_NAME = "ctta-tiny-vit"
VIT_TIMM_ARCH = "vit_tiny_patch16_224"  # timm's VisionTransformer; the sizes below override it
VIT_ARCH = dict(img_size=32, patch_size=8, depth=6, embed_dim=64, num_heads=4)

CLIP_NAME = "ctta-tiny-clip-digits"
CLIP_TAG = "ctta"  # the shipped weights (``backbone.pretrained: ctta``)
CLIP_CONTEXT_LENGTH = 16

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
CAPTION_TEMPLATES = (
    "a photo of a {}.",  # TPT's initial context "a photo of a" + class name
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a drawing of a {}.",
    "a photo of a small {}.",
    "a close-up photo of a {}.",
    "a {}.",
)


def captions(names: Sequence[str] = DIGIT_NAMES + FASHION_NAMES) -> list[str]:
    """Every training caption, template-major: ``captions()[t * len(names) + c]``."""
    return [t.format(n) for t in CAPTION_TEMPLATES for n in names]


def clip_config(vocab_size: int) -> dict:
    """open_clip ``CLIP(**cfg)`` keyword arguments of the tiny CLIP (image 32 px, patch 8; text width 64)."""
    return dict(
        embed_dim=64,
        quick_gelu=False,
        vision_cfg=dict(image_size=32, layers=4, width=64, head_width=16, patch_size=8),
        text_cfg=dict(context_length=CLIP_CONTEXT_LENGTH, vocab_size=vocab_size, width=64, heads=4, layers=2),
    )


def _bpe_tokenizer():
    import open_clip

    return open_clip.SimpleTokenizer(context_length=CLIP_CONTEXT_LENGTH)


def caption_vocabulary() -> list[int]:
    """Sorted byte-pair token ids of the training captions (start/end tokens excluded)."""
    bpe = _bpe_tokenizer()
    ids = {int(i) for cap in captions() for i in bpe.encode(cap)}
    return sorted(ids - {bpe.sot_token_id, bpe.eot_token_id})


class VocabTokenizer:
    """open_clip's ``SimpleTokenizer`` with its ids mapped into a compact vocabulary.

    Compact ids: 0 pad, 1 unknown, ``2 .. 1 + len(vocab)`` the byte-pair tokens of ``vocab`` in order, then the
    start token and the end token (the largest id, so argmax pooling finds it).

    Args:
        vocab: byte-pair token ids kept (e.g. ``caption_vocabulary()``).
        context_length: tokens per text (padded / truncated with the end token last, as open_clip does).
    """

    PAD, UNK = 0, 1

    def __init__(self, vocab: Sequence[int], context_length: int = CLIP_CONTEXT_LENGTH) -> None:
        import open_clip

        self.bpe = open_clip.SimpleTokenizer(context_length=context_length)
        self.vocab = [int(v) for v in vocab]
        self.context_length = context_length
        self.vocab_size = len(self.vocab) + 4
        self.sot_token_id, self.eot_token_id = self.vocab_size - 2, self.vocab_size - 1
        lut = torch.full((len(self.bpe.encoder),), self.UNK, dtype=torch.long)
        lut[torch.tensor(self.vocab, dtype=torch.long)] = torch.arange(2, 2 + len(self.vocab))
        lut[self.bpe.sot_token_id], lut[self.bpe.eot_token_id] = self.sot_token_id, self.eot_token_id
        self.lut = lut
        self._warned: set[str] = set()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids ``(n, context_length)`` of ``texts`` in the compact vocabulary (0 = padding).

        Raises:
            ValueError: a text needs more tokens (start and end included) than ``context_length``.
        """
        length = context_length or self.context_length
        for text in [texts] if isinstance(texts, str) else texts:
            n = len(self.bpe.encode(text)) + 2
            if n > length:
                raise ValueError(
                    f"text {text!r} has {n} tokens (start and end included) but this CLIP's text context holds "
                    f"{length}; use fewer context / attribute tokens or shorter words"
                )
        tokens = self.bpe(texts, context_length=length)  # (n, T) byte-pair ids, 0-padded
        out = self.lut[tokens]
        out[tokens == 0] = self.PAD
        if (out == self.UNK).any():
            self._warn_unknown(" ".join([texts] if isinstance(texts, str) else texts))
        return out

    def encode(self, text: str) -> list[int]:
        """Compact ids of ``text`` without start / end tokens (the ids ``__call__`` puts between them)."""
        ids = self._ids(text)
        if self.UNK in ids:
            self._warn_unknown(text)
        return ids

    def _ids(self, text: str) -> list[int]:
        return self.lut[torch.tensor(self.bpe.encode(text), dtype=torch.long)].tolist()

    def _warn_unknown(self, text: str) -> None:
        """Warn once per word that becomes the unknown token (the soft-token placeholder ``X`` is meant to)."""
        new = [w for w in dict.fromkeys(self.unknown_words(text)) if w.lower() != "x" and w not in self._warned]
        if new:
            self._warned.update(new)
            warnings.warn(f"{', '.join(map(repr, new))} not in this CLIP's vocabulary (the words of its training "
                          "captions): each becomes the unknown token", stacklevel=3)  # fmt: skip

    def known_words(self) -> list[str]:
        """The byte-pair pieces of the vocabulary as text (``er`` ends a word, ``trous`` starts one)."""
        return sorted(self.bpe.decoder[i].replace("</w>", "") for i in self.vocab)

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` with a byte-pair piece outside the vocabulary (they would become unknown tokens)."""
        return [w.strip(".,;:!?") or w for w in text.split() if self.UNK in self._ids(w)]

    def require_known(self, text: str, what: str = "text") -> None:
        """Raise a ``ValueError`` naming every word of ``text`` outside the vocabulary.

        Args:
            text: the words (e.g. a ``ctx_init`` phrase).
            what: what they are, for the message (e.g. ``"ctx_init"``).
        """
        unknown = self.unknown_words(text)
        if unknown:
            raise ValueError(
                f"{what}={text!r}: {', '.join(map(repr, unknown))} not in this CLIP's {len(self.vocab)}-piece "
                f"vocabulary (the words of its training captions: {' '.join(self.known_words())}); use those "
                "words or a random context (ctx_init='')"
            )


def build_tiny_vit(**timm_kwargs) -> nn.Module:
    """Randomly initialised ``ctta-tiny-vit``: timm ``VisionTransformer`` without head (``num_classes=0``).

    Args:
        **timm_kwargs: extra ``timm.create_model`` arguments (e.g. ``num_classes`` for pretraining,
            ``drop_path_rate``); the architecture keys of ``VIT_ARCH`` must not be changed.
    """
    import timm

    clash = {k: v for k, v in timm_kwargs.items() if k in VIT_ARCH and v != VIT_ARCH[k]}
    if clash:
        raise ValueError(f"{VIT_NAME} has a fixed architecture {VIT_ARCH}; got overrides {clash}")
    kwargs = {"num_classes": 0, **timm_kwargs, **VIT_ARCH}
    return timm.create_model(VIT_TIMM_ARCH, pretrained=False, **kwargs)


def build_tiny_clip(vocab: Sequence[int] | None = None, precision: str = "fp32"):
    """Randomly initialised tiny CLIP and its tokenizer: ``(open_clip.CLIP, VocabTokenizer)``.

    Args:
        vocab: byte-pair ids of the text vocabulary (default: ``caption_vocabulary()``).
        precision: open_clip weight precision.
    """
    import open_clip

    tokenizer = VocabTokenizer(caption_vocabulary() if vocab is None else vocab)
    model = open_clip.CLIP(**clip_config(tokenizer.vocab_size), cast_dtype=open_clip.get_cast_dtype(precision))
    return model, tokenizer
