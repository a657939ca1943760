"""Text embeddings of a frozen CLIP text tower with a cache keyed by (text-tower fingerprint, exact text).

Block R2 of ``remaining-seed-systems.md`` §19 (description banks): the zero-shot text classifiers of CuPL, FuDD,
ProAPO, GLOV, IPO and the LLM optimizer embed many texts (CuPL's ImageNet bank: 50 per class; FuDD's pair
descriptions; search candidates scored again and again), always with a frozen text tower. Papers: CLIP (Radford et
al., ICML 2021) prompt ensembling; CuPL (Pratt et al., ICCV 2023) ``classify_imagenet.py:zeroshot_classifier_gpt``
(sarahpratt/CuPL@719619c): each text embedded, L2-normalised, averaged per class, re-normalised. Behaviour read,
re-implemented, no code copied.

* ``text_fingerprint(clip, tokenizer)``: sha256 over the text tower's parameters and buffers (names, dtypes, shapes,
  bytes; every state-dict entry outside ``visual.`` and the logit scale/bias), the tokenizer's class and context
  length, and the device type (CUDA and CPU kernels differ in the last bits). Computed once per model object and
  recomputed when a text-tower tensor was replaced, moved, cast or changed in place (its version counter), so a
  changed model never reads another model's rows.
* ``TextEmbeddingCache(folder)``: rows in memory, and on disk when ``folder`` is set: ``<folder>/<fingerprint>/``
  holds shards ``<sha256 of their texts>.pt`` = ``{"texts": [...], "rows": (N, E) float32 CPU}``; each new batch of
  encoded texts becomes one shard written atomically (temporary file, then ``os.replace``), so concurrent runs and
  interrupted writes never leave a half-written shard. Hit and miss counters (``hits``, ``encoded``).
* ``encode_texts``: ``(N, E)`` float32 L2-normalised rows on the CLIP's device (texts missing from the cache are
  encoded in chunks of ``chunk``, in their order; repeated texts once). ``class_embeddings``: per class, the mean of
  its normalised rows, re-normalised (``renormalize=True``).

Shared with wave 2: the zero-shot template (CuPL, FuDD, GLOV evaluation) and the discrete searches (ProAPO, IPO,
the LLM optimizer) of issue 23.

Deviations: none in the arithmetic (fp32 normalisation and means of the tower's outputs cast to float32).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["TextEmbeddingCache", "class_embeddings", "encode_texts", "text_fingerprint"]

_NOT_TEXT = ("visual.", "logit_scale", "logit_bias")
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (signature, fingerprint)


def _text_tensors(clip_model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The text tower's parameters and buffers (the state dict without the image tower and the logit scale)."""
    return [(k, v) for k, v in clip_model.state_dict(keep_vars=True).items() if not k.startswith(_NOT_TEXT)]


def _signature(tensors, tokenizer) -> tuple:
    rows = tuple((k, v.data_ptr(), v._version, v.dtype, str(v.device), tuple(v.shape)) for k, v in tensors)
    return rows, type(tokenizer).__name__, int(getattr(tokenizer, "context_length", 0) or 0)


def text_fingerprint(clip_model: nn.Module, tokenizer=None) -> str:
    """sha256 (hex) of ``clip_model``'s text tower (see the module notes); cached per model object."""
    tensors = _text_tensors(clip_model)
    sig = _signature(tensors, tokenizer)
    known = _FINGERPRINTS.get(clip_model)
    if known is not None and known[0] == sig:
        return known[1]
    h = hashlib.sha256()
    h.update(f"{sig[1]}|{sig[2]}|".encode())
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{t.device.type}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    _FINGERPRINTS[clip_model] = (sig, digest)
    return digest


class TextEmbeddingCache:
    """Normalised text rows keyed by (text-tower fingerprint, exact text); in memory, and on disk with ``folder``.

    Args:
        folder: where shards are written and read (created when needed); None or ``""``: memory only.

    Attributes:
        hits: rows answered from the cache so far; encoded: texts the text tower encoded so far.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self._rows: dict[str, dict[str, torch.Tensor]] = {}  # fingerprint -> text -> (E,) float32 CPU
        self.hits = 0
        self.encoded = 0

    def _table(self, fingerprint: str) -> dict[str, torch.Tensor]:
        if fingerprint not in self._rows:
            table: dict[str, torch.Tensor] = {}
            for shard in sorted(self._dir(fingerprint).glob("*.pt")) if self.folder else ():
                data = torch.load(shard, map_location="cpu", weights_only=True)
                table.update(zip(data["texts"], data["rows"]))
            self._rows[fingerprint] = table
        return self._rows[fingerprint]

    def _dir(self, fingerprint: str) -> Path:
        return self.folder / fingerprint

    def lookup(self, fingerprint: str, texts: Sequence[str]) -> list[torch.Tensor | None]:
        """The cached row of each text (None where missing)."""
        table = self._table(fingerprint)
        return [table.get(t) for t in texts]

    def store(self, fingerprint: str, texts: Sequence[str], rows: torch.Tensor) -> None:
        """Add ``rows`` ``(N, E)`` for ``texts`` (one atomic shard on disk when ``folder`` is set)."""
        rows = rows.detach().float().cpu()
        self._table(fingerprint).update(zip(texts, rows))
        if self.folder is None or not texts:
            return
        folder = self._dir(fingerprint)
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:32] + ".pt"
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"texts": list(texts), "rows": rows.clone()}, tmp)
            os.replace(tmp, folder / name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@torch.no_grad()
def _encode(clip_model: nn.Module, tokenizer, texts: list[str], chunk: int) -> torch.Tensor:
    dev = next(clip_model.parameters()).device
    parts = [clip_model.encode_text(tokenizer(texts[i : i + chunk]).to(dev)).float()
             for i in range(0, len(texts), chunk)]  # fmt: skip
    feats = torch.cat(parts)
    return feats / feats.norm(dim=-1, keepdim=True)


@torch.no_grad()
def encode_texts(clip_model: nn.Module, tokenizer, texts: Sequence[str], cache: TextEmbeddingCache | None = None,
                 chunk: int = 256) -> torch.Tensor:  # fmt: skip
    """``(N, E)`` float32 L2-normalised text embeddings on the CLIP's device (see the module notes).

    Without ``cache`` every text is encoded, in chunks of ``chunk``, in the order given.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("encode_texts: no texts")
    dev = next(clip_model.parameters()).device
    if cache is None:
        return _encode(clip_model, tokenizer, texts, chunk)
    fp = text_fingerprint(clip_model, tokenizer)
    found = cache.lookup(fp, texts)
    missing = list(dict.fromkeys(t for t, r in zip(texts, found) if r is None))  # unique, in order
    cache.hits += len(texts) - sum(r is None for r in found)
    if missing:
        cache.store(fp, missing, _encode(clip_model, tokenizer, missing, chunk))
        cache.encoded += len(missing)
        found = cache.lookup(fp, texts)
    return torch.stack(found).to(dev)


def class_embeddings(clip_model: nn.Module, tokenizer, per_class: Sequence[Sequence[str]],
                     cache: TextEmbeddingCache | None = None, renormalize: bool = True,
                     chunk: int = 256) -> torch.Tensor:  # fmt: skip
    """``(C, E)``: per class, the mean of its texts' normalised embeddings (re-normalised with ``renormalize``).

    Raises:
        ValueError: a class has no text (names its index).
    """
    empty = [i for i, texts in enumerate(per_class) if not texts]
    if empty:
        raise ValueError(f"class_embeddings: classes {empty} have no texts")
    rows = encode_texts(clip_model, tokenizer, [t for texts in per_class for t in texts], cache, chunk)
    means = torch.stack([r.mean(0) for r in rows.split([len(t) for t in per_class])])  # (C, E)
    return means / means.norm(dim=-1, keepdim=True) if renormalize else means
