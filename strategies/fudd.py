"""FuDD: follow-up differential descriptions (Esfandiarpoor & Bach, "Follow-Up Differential Descriptions: Language
Models Resolve Ambiguities for Image Classification", ICLR 2024, arXiv 2311.07593). Official code
BatsResearch/fudd@3226423 (no licence file): ``fudd_model.py:FuDD.{get_text_embeddings, forward, image_logit_pred}``,
``prompt_factory.py:PromptFactory``, ``main.py:evaluate``; behaviour read, re-implemented, no code copied (spec
``remaining-seed-systems.md`` C2, §22).

Per image, two stages, no gradients (a ``ZeroShotTemplate``):

1. every class of the head: ``"a photo of a {c}.".capitalize()`` (Python's ``capitalize``: first letter upper, the
   rest lower case), embedded and normalised; cosine logits; the ``k`` classes with the largest are the image's
   ambiguous set (``k = 10``; capped by the head's class count).
2. for every pair of candidates (in rank order) the pair's differential descriptions go to each side (a pair the bank
   lacks gives each side "a photo of a {c}."); per candidate: de-duplicated, capitalised, embedded, the normalised
   rows averaged and re-normalised; the image's logits over its ``k`` candidates decide.

``k: all`` is the official "gpt" classifier (K = |C|, no follow-up): per class every description of every bank pair
holding it (none: "a photo of a {c}."), de-duplicated, capitalised, averaged. Bank: the official pair files (no
licence: user-supplied, ``descriptions:`` = the ``differential_descriptions`` folder with ``dataset:``, or the pairs
file) or ``builtin:digits`` (ctta's own); ``classname_map`` aligns ctta's class names with the bank's.

Logits returned (top-1 and top-5 work, the loss stays finite): ``logit_scale * cos`` for the ``k`` candidates; every
other class of the head ``FAR_LOGIT + logit_scale * cos_stage1`` (below every candidate, in stage-1 order, above the
classes of a class-incremental head not seen yet, ``MASKED_LOGIT``).

Continual learning: the head is the classes of the stream (base-to-new, cross-dataset) or those seen so far
(class-incremental), so the ambiguous sets hold seen classes only and ``k`` is capped by their number; nothing is
learnt, so nothing is forgotten; a test-time benchmark is evaluated directly.

Deviations: the official de-duplication is a Python ``set`` whose order depends on the hash seed (it changes only
the summation order: ~1e-7 in the logits, §22); here the order is deterministic (first occurrence); the stage-1
class names are the bank's (aligned), as the official code's; candidates of equal stage-1 logit are ordered by a
stable sort (class index); texts are embedded through ``ctta.clip_prompting.text_cache`` (same arithmetic).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ctta.clip_prompting.descriptions import (
    PAIR_DEFAULT,
    PairwiseBank,
    align_classnames,
    load_alignment,
    load_pairwise,
    pairwise_files,
)
from ctta.clip_prompting.template import MASKED_LOGIT
from ctta.clip_prompting.text_cache import class_embeddings
from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotConfig, ZeroShotTemplate, text_cache_of
from ctta.registry import STRATEGIES

__all__ = ["FAR_LOGIT", "FuDD", "FuDDConfig", "FuDDModel", "candidate_texts", "dedup_capitalize", "pooled_texts"]

FAR_LOGIT = MASKED_LOGIT / 2  # offset of the head's classes outside an image's ambiguous set
MAX_SETS = 4096  # stage-2 classifiers kept (least recently used dropped; the text rows stay in the text cache)


def dedup_capitalize(texts: list[str]) -> list[str]:
    """De-duplicate (first occurrence kept: deterministic), then ``str.capitalize`` each (as the reference: texts that
    differ only in case stay separate rows)."""
    return [t.capitalize() for t in dict.fromkeys(texts)]


def candidate_texts(bank: PairwiseBank, ids: list[int]) -> list[list[str]]:
    """Stage 2: the texts of each candidate (bank class ids, in rank order) over every candidate pair."""
    texts: list[list[str]] = [[] for _ in ids]
    for a, b in itertools.combinations(range(len(ids)), 2):
        ta, tb = bank.pair_texts(ids[a], ids[b])
        texts[a] += ta
        texts[b] += tb
    return [dedup_capitalize(t) for t in texts]


def pooled_texts(bank: PairwiseBank, ids: list[int]) -> list[list[str]]:
    """``k: all`` (the official "gpt" classifier): every description of each class over the whole bank."""
    return [dedup_capitalize(bank.pooled(i)) for i in ids]


@dataclass(frozen=True)
class FuDDConfig(ZeroShotConfig):
    """FuDD settings (official: K = 10 with the follow-up; ``k: all`` = the K = |C| "gpt" classifier)."""

    descriptions: str = "builtin:digits"  # pair bank: FuDD's folder / pairs file, or builtin:digits
    dataset: str = ""  # ctta catalogue name, to find the official files in a folder
    classname_map: str = ""  # class-name alignment table (JSON {ctta class name: bank class name})
    k: int | str = 10  # candidates per image (>= 1), or "all"
    template: str = PAIR_DEFAULT  # stage-1 template (capitalised)

    def __post_init__(self) -> None:
        if self.k != "all" and not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k={self.k!r}; expected an integer >= 1 or 'all'")


class FuDDModel(TextHeadModel):
    """Frozen CLIP with FuDD's two-stage classifier (head = stage 1, or the pooled classifier with ``k="all"``).

    Args:
        clip_model, tokenizer, classnames: as ``TextHeadModel``.
        bank: the pairwise bank.
        k: candidates per image, or ``"all"``.
        table: class-name alignment table ``{ctta name: bank name}``.
        template: the stage-1 template.
        cache: the text-embedding cache.
    """

    def __init__(self, clip_model, tokenizer, classnames, bank: PairwiseBank, k: int | str = 10, *, table=None,
                 template: str = PAIR_DEFAULT, cache=None) -> None:  # fmt: skip
        self.bank, self.k, self.table, self.template = bank, k, dict(table or {}), template
        self.sets: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # candidate ids -> (k, E), LRU
        super().__init__(clip_model, tokenizer, classnames, self._stage_one, cache=cache)

    def bank_ids(self, names: list[str]) -> list[int]:
        """The bank class id of each ctta class name (alignment table, exact, case-insensitive)."""
        keys = align_classnames(self.bank.classnames, names, self.table, what="FuDD descriptions")
        return [self.bank.classnames.index(k) for k in keys]

    def _stage_one(self, names: list[str]) -> list[list[str]]:
        ids = self.bank_ids(names)
        if self.k == "all":
            return pooled_texts(self.bank, ids)
        return [[self.template.format(self.bank.classnames[i]).capitalize()] for i in ids]

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        self.ids = self.bank_ids(list(classnames))

    @torch.no_grad()
    def stage_two(self, f: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Cosines ``(k,)`` of one normalised image feature ``f`` with the classifier of its candidates ``cand``
        (head indices, rank order)."""
        key = tuple(self.ids[int(c)] for c in cand)
        if key in self.sets:
            self.sets.move_to_end(key)
        else:
            texts = candidate_texts(self.bank, list(key))
            self.sets[key] = class_embeddings(self.clip, self.tokenizer, texts, self.cache)
            if len(self.sets) > MAX_SETS:
                self.sets.popitem(last=False)
        return self.sets[key].to(f.device) @ f.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.image_features(x)  # (B, E)
        first = f @ self.head.float().t()  # (B, C) stage-1 cosines
        if self.k == "all":
            return self.logit_scale * first
        k = min(int(self.k), first.shape[1])
        order = torch.argsort(first, dim=1, descending=True, stable=True)[:, :k]  # (B, k)
        out = FAR_LOGIT + self.logit_scale * first
        if k == 1:  # one candidate, no pair: its stage-1 logit decides (the reference takes class 0's texts here)
            out.scatter_(1, order, (self.logit_scale * first).gather(1, order))
            return out
        for i in range(f.shape[0]):
            out[i, order[i]] = self.logit_scale * self.stage_two(f[i], order[i])
        return out


@STRATEGIES.register("fudd", config=FuDDConfig)
class FuDD(ZeroShotTemplate):
    """FuDD as an Avalanche strategy (zero-shot, per-image two-stage classifier)."""

    config_class = FuDDConfig

    @classmethod
    def check_resources(cls, cfg: FuDDConfig) -> None:
        """FuDD's two files (pairs, class names) and the alignment table resolve, before anything loads."""
        if cfg.descriptions != "builtin:digits":
            pairwise_files(cfg.descriptions, cfg.dataset)
        load_alignment(cfg.classname_map)

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: FuDDConfig) -> FuDDModel:
        bank = load_pairwise(cfg.descriptions, cfg.dataset)
        return FuDDModel(clip_model, tokenizer, classnames, bank, cfg.k, table=load_alignment(cfg.classname_map),
                         template=cfg.template, cache=text_cache_of(cfg))  # fmt: skip
