"""Log-probabilities of texts: the priors of the PAC-Bayes bounds on discrete prompts.

Akinwande et al., "Understanding prompt engineering may not require rethinking generalization" (arXiv 2310.03957):
the prior over prompts is a language model's likelihood of the prompt's tokens; a uniform prior over CLIP's
vocabulary at every one of its 77 positions is the paper's baseline. Unofficial (the paper ships no code).

* ``UnigramPrior``: independent tokens, uniform over a vocabulary of V (log P = -len * ln V) or from counts with
  add-alpha smoothing. Without ``max_length`` it is a distribution over the token sequences of each given length
  (as the paper's uniform baseline, whose length is always 77); with ``max_length`` = L a uniform length prior over
  0..L is added (-ln(L + 1)), which makes it one distribution over all sequences up to L tokens (a valid PAC-Bayes
  prior for prompts of varying length).
* ``CausalLMScorer``: sum of a transformers causal LM's token log-probabilities given its BOS token (GPT-2 has none
  and uses its end-of-text token, as in its own training); ``add_eos`` also scores the end of the text, which makes
  it one distribution over all texts (without it, a text and its continuations share probability mass, so the
  probabilities of all prompts can sum to more than 1: use ``add_eos=True`` for a valid bound).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TextScorer(Protocol):
    """``log_prob(text)``: the natural log of the probability of ``text`` under a prior."""

    def log_prob(self, text: str) -> float: ...


def tokenize_fn(tokenizer) -> Callable[[str], list[int]]:
    """Token ids of a text without special tokens, for open_clip's ``SimpleTokenizer`` and transformers tokenizers."""
    if hasattr(tokenizer, "bpe"):  # open_clip SimpleTokenizer: encode() adds no start/end token
        return tokenizer.encode
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


class UnigramPrior:
    """Independent tokens: log P(text) = sum_t log p(token_t).

    Args:
        tokenize: text -> token ids (e.g. ``tokenize_fn(clip_tokenizer)``).
        vocab_size: V, the number of token ids.
        counts: token id -> count; ``None`` = uniform p = 1/V.
        smoothing: alpha of p(t) = (count_t + alpha) / (total + alpha V) (used with counts; > 0 keeps every
            token possible, so every prompt has a finite bound).
        max_length: L: add the uniform length prior -ln(L + 1) (longer texts get -inf); None: no length term.
    """

    def __init__(self, tokenize: Callable[[str], Sequence[int]], vocab_size: int,
                 counts: Mapping[int, float] | None = None, smoothing: float = 1.0, max_length: int | None = None):
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if counts is not None and smoothing <= 0 and any(c <= 0 for c in counts.values()):
            raise ValueError("counts need smoothing > 0 (or positive counts only)")
        self.tokenize, self.vocab_size, self.smoothing = tokenize, int(vocab_size), float(smoothing)
        self.counts = dict(counts) if counts is not None else None
        self._total = sum(self.counts.values()) if self.counts is not None else 0.0
        self.max_length = max_length

    @classmethod
    def from_tokenizer(cls, tokenizer, counts: Mapping[int, float] | None = None, smoothing: float = 1.0,
                       max_length: int | None = None):
        """Over a tokenizer's whole vocabulary (CLIP's: V = 49408)."""
        vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
        return cls(tokenize_fn(tokenizer), vocab, counts, smoothing, max_length)

    @classmethod
    def from_corpus(cls, tokenizer, texts: Iterable[str], smoothing: float = 1.0, max_length: int | None = None):
        """Token frequencies of ``texts`` (add-``smoothing``) over the tokenizer's vocabulary."""
        tokenize = tokenize_fn(tokenizer)
        counts = Counter(t for text in texts for t in tokenize(text))
        vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
        return cls(tokenize, vocab, counts, smoothing, max_length)

    def token_log_prob(self, token: int) -> float:
        """log p(token)."""
        if self.counts is None:
            return -math.log(self.vocab_size)
        num = self.counts.get(token, 0.0) + self.smoothing
        return math.log(num) - math.log(self._total + self.smoothing * self.vocab_size) if num > 0 else -math.inf

    def log_prob(self, text: str) -> float:
        """Sum of the tokens' log-probabilities (+ the length prior when ``max_length`` is set)."""
        tokens = self.tokenize(text)
        length = 0.0
        if self.max_length is not None:
            if len(tokens) > self.max_length:
                return -math.inf
            length = -math.log(self.max_length + 1)
        return float(length + sum(self.token_log_prob(t) for t in tokens))


class CausalLMScorer:
    """log P(text) under a transformers causal LM: sum over tokens of log p(x_t | BOS, x_<t).

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (``ctta.llm.hf.load_causal_lm``).
        add_eos: also count log p(EOS | text).
    """

    def __init__(self, model, tokenizer, add_eos: bool = False):
        self.model, self.tokenizer, self.add_eos = model, tokenizer, add_eos
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if self.bos is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")
        if add_eos and tokenizer.eos_token_id is None:
            raise ValueError("add_eos needs a tokenizer with an EOS token")

    @classmethod
    def from_pretrained(cls, model_id: str, device=None, dtype: str | None = None, add_eos: bool = False):
        """Load ``model_id`` (hub id or local folder; transformers is the extra ``ctta[diffusion]``)."""
        from ctta.llm.hf import load_causal_lm

        model, tokenizer = load_causal_lm(model_id, device, dtype)
        return cls(model, tokenizer, add_eos)

    @torch.no_grad()
    def log_prob(self, text: str) -> float:
        """Natural-log probability of the text's tokens (the BOS token itself is given, not scored)."""
        ids = [self.bos] + list(self.tokenizer.encode(text, add_special_tokens=False))
        if self.add_eos:
            ids.append(self.tokenizer.eos_token_id)
        device = next(self.model.parameters()).device
        x = torch.tensor([ids], device=device)  # (1, T)
        logits = self.model(input_ids=x).logits.float()  # (1, T, V)
        logp = torch.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V): predictions of tokens 1..T-1
        return float(logp.gather(1, x[0, 1:, None]).sum())
