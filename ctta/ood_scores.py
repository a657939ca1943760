"""Zero-shot OOD scores of CLIP and the negative-label miner: MCM, NegLabel's grouped score, WordNet word lists.

Papers: MCM (Ming et al., "Delving into OOD Detection with Vision-Language Representations", NeurIPS 2022);
NegLabel (Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language Models", ICLR 2024);
LAPT (Zhang et al., ECCV 2024), whose official code YBZh/OpenOOD-VLM@804f331 (MIT) holds the miner
``openood/networks/clip_for_wordnet_prepare.py:generate_cossim_idname_wordnet_dedup`` and the grouped score
``openood/postprocessors/oneoodprompt_postprocessor.py`` (behaviour read, re-implemented, no code copied).

* MCM: ``max_c softmax(cos(f, g_c) / T)`` (T = 1 in the paper), higher = more ID.
* NegLabel score: with ID logits ``s`` (C) and negative-label logits ``n`` (M) (logit scale 100, i.e. tau = 0.01),
  ``S = sum_c e^{s_c} / (sum_c e^{s_c} + sum_j e^{n_j})``; grouped: the M negatives are split into G groups after a
  permutation seeded with ``seed``, S is computed per group and averaged.
* Miner: candidates = nouns and adjectives (sorted, deduplicated: lower-cased ID class names removed, adjectives that
  are also nouns removed); prompts "The nice {c}." for ID classes and nouns, "This is a {w} photo." for adjectives;
  closeness of a candidate = its ``floor(0.95 C)``-th smallest cosine to the C ID classes; the ``n`` least close are
  selected, split between adjectives and nouns in proportion to the pool sizes.

Deviations: candidates are sorted before mining and ties broken by the word (the official ``set()`` dedup makes the
order hash-dependent); the grouped score uses its own seeded generator (the official code re-seeds the global RNG
every batch); groups may differ in size by one when G does not divide M (``torch.tensor_split``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "NOUN_TEMPLATE", "ADJ_TEMPLATE", "load_wordnet_words", "mcm_score", "mine_negative_labels", "neglabel_score",
    "percentile_closeness",
]  # fmt: skip

NOUN_TEMPLATE = "The nice {}."
ADJ_TEMPLATE = "This is a {} photo."
DEBIAN_WORDNET = "/usr/share/wordnet"
_GET = (
    "Give a folder with wordnet_nouns.txt and wordnet_adjs.txt (one word per line; OpenOOD-VLM's "
    "corpus_datasets/wordnet/, MIT, https://github.com/YBZh/OpenOOD-VLM) or WordNet's dictionary folder with "
    f"index.noun and index.adj (Debian: apt install wordnet-base, files in {DEBIAN_WORDNET})."
)


def mcm_score(cos: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """MCM: ``(B, C)`` cosine similarities -> ``(B,)`` maximum softmax of ``cos / temperature``."""
    return (cos.float() / temperature).softmax(-1).amax(-1)


def neglabel_score(id_logits: torch.Tensor, neg_logits: torch.Tensor, groups: int = 1, seed: int = 0) -> torch.Tensor:
    """NegLabel's (grouped) score: ``(B, C)`` ID and ``(B, M)`` negative logits -> ``(B,)`` mean ID-probability mass."""
    m = neg_logits.shape[-1]
    if not 1 <= groups <= max(m, 1):
        raise ValueError(f"groups must be in 1..{m} (the negative labels), got {groups}")
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed)).to(neg_logits.device)
    c = id_logits.shape[-1]
    per_group = []
    for idx in torch.tensor_split(perm, groups):
        p = torch.cat([id_logits, neg_logits[:, idx]], -1).float().softmax(-1)  # (B, C + M_g)
        per_group.append(p[:, :c].sum(-1))
    return torch.stack(per_group).mean(0)


def percentile_closeness(cand: torch.Tensor, ids: torch.Tensor, percentile: float = 0.95) -> torch.Tensor:
    """Per candidate ``(W, E)``: its ``floor(percentile * C)``-th smallest cosine to the ID features ``(C, E)``."""
    cand = cand.float() / cand.float().norm(dim=-1, keepdim=True)
    ids = ids.float() / ids.float().norm(dim=-1, keepdim=True)
    sims = (cand @ ids.t()).sort(-1).values  # (W, C) ascending
    return sims[:, min(int(percentile * sims.shape[1]), sims.shape[1] - 1)]


def _clean(words: Sequence[str], drop: set[str]) -> list[str]:
    return sorted({w.strip() for w in words if w.strip() and w.strip().lower() not in drop})


def mine_negative_labels(
    encode, classnames: Sequence[str], nouns: Sequence[str], adjectives: Sequence[str], n: int,
    percentile: float = 0.95,
) -> list[str]:  # fmt: skip
    """The ``n`` negative labels (adjectives first, then nouns; each part in selection order).

    Args:
        encode: ``encode(texts) -> (len(texts), E)`` text features (CLIP's text tower on finished prompts).
        classnames: the ID class names.
        nouns, adjectives: candidate pools (deduplicated and sorted here).
        n: labels to select (at most the candidates).
        percentile: the closeness percentile (0.95).
    """
    ids = {c.lower() for c in classnames}
    nouns = _clean(nouns, ids)
    adjectives = _clean(adjectives, ids | {w.lower() for w in nouns})
    total = len(nouns) + len(adjectives)
    if not 0 < n <= total:
        raise ValueError(f"cannot select {n} negative labels from {total} candidates")
    id_feats = encode([NOUN_TEMPLATE.format(c) for c in classnames])
    n_adj = int(n * len(adjectives) / total)
    chosen = []
    for words, template, k in ((adjectives, ADJ_TEMPLATE, n_adj), (nouns, NOUN_TEMPLATE, n - n_adj)):
        if not k:
            continue
        close = percentile_closeness(encode([template.format(w) for w in words]), id_feats, percentile).tolist()
        chosen += [w for _, w in sorted(zip(close, words))[:k]]
    return chosen


def _read_list(path: Path) -> list[str]:
    return [w.strip() for w in path.read_text().splitlines() if w.strip()]


def _read_wordnet_index(path: Path) -> list[str]:
    """Lemmas of a WordNet ``index.<pos>`` file (licence header lines start with spaces)."""
    lines = path.read_text(errors="replace").splitlines()
    return [line.split(" ", 1)[0].replace("_", " ") for line in lines if line and not line.startswith(" ")]


def load_wordnet_words(source: str | Path = "") -> tuple[list[str], list[str]]:
    """``(nouns, adjectives)`` from ``source`` (OpenOOD-VLM's lists or a WordNet dictionary folder; default Debian's).

    Raises:
        FileNotFoundError: neither layout is found, naming where to get the lists.
    """
    folder = Path(source or DEBIAN_WORDNET).expanduser()
    if (folder / "wordnet_nouns.txt").is_file() and (folder / "wordnet_adjs.txt").is_file():
        return _read_list(folder / "wordnet_nouns.txt"), _read_list(folder / "wordnet_adjs.txt")
    if (folder / "index.noun").is_file() and (folder / "index.adj").is_file():
        return _read_wordnet_index(folder / "index.noun"), _read_wordnet_index(folder / "index.adj")
    raise FileNotFoundError(f"no WordNet word lists in {folder}. {_GET}")
