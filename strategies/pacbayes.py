"""PAC-Bayes generalisation bounds for discrete prompts, and a greedy prompt search that lowers them.

Paper: Akinwande, Jiang, Sam, Kolter, "Understanding prompt engineering may not require rethinking generalization"
(arXiv 2310.03957; ICLR 2024, ICML 2023 SODS workshop). **Unofficial, from the paper**: no code was released; the
constants below are ours where the paper's could not be confirmed, each stated with its reason.

A prompt is a hypothesis: with CLIP's encoders frozen, the prompt's token sequence fixes the zero-shot classifier.
The posterior is a point mass on the chosen prompt, so KL(Q || P) = -ln P(prompt) for a prior P over prompts fixed
before seeing the data (a language model's likelihood of the prompt's tokens, or a uniform prior: the paper's
baseline 77 ln 49408, every one of CLIP's 77 positions uniform over its 49,408 tokens). With probability >= 1 - delta
over n i.i.d. training samples, for every prompt at once (0-1 loss, train error r):

* ``"mcallester"``: test error <= r + sqrt((KL + ln(2 sqrt(n) / delta)) / (2 n))  (McAllester's bound with Maurer's
  ln(2 sqrt(n)/delta) constant, as in the brief and the common modern statement);
* ``"kl"``: test error <= kl^-1(r, (KL + ln(2 sqrt(n) / delta)) / n), the largest p >= r with binary
  kl(r || p) <= the right-hand side (Langford-Seeger / Maurer), found by bisection; never looser than the first
  (Pinsker: kl(r || p) >= 2 (p - r)^2).

Choices (ours): delta = 0.05 by default (the paper's value could not be checked); the bounds are not clipped at 1
(a value above 1 is vacuous but still orders prompts); the prior scores only the searched words (the fixed parts of
the prompt template are chosen before the data and are the same for every hypothesis, so they carry no prior mass).

Greedy search (``pacbayes``): start from ``init_prompt``; each step appends to the prompt every word of a candidate
vocabulary in turn, scores each extension by its bound (train error of the one-template zero-shot classifier on the
cached few-shot features, KL from the prior), keeps the lowest (ties: the earlier word) and stops when no extension
lowers the bound or after ``max_words`` words. The paper's search proposes tokens with a language model and keeps
those that lower the training error while keeping the bound; ours ranks by the bound itself over a given word list.
"""

from __future__ import annotations

import math

KINDS = ("mcallester", "kl")
CLIP_CONTEXT, CLIP_VOCAB = 77, 49408  # CLIP's context length and BPE vocabulary (the paper's uniform prior)


def uniform_log_prior(length: int = CLIP_CONTEXT, vocab_size: int = CLIP_VOCAB) -> float:
    """ln P of any prompt under the uniform prior over ``length`` positions of ``vocab_size`` tokens
    (``-77 ln 49408`` = -832.2 for CLIP: the paper's uniform baseline)."""
    return -length * math.log(vocab_size)


def binary_kl(q: float, p: float) -> float:
    """kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)) for Bernoulli parameters (0 ln 0 = 0; inf where p excludes q)."""

    def term(a: float, b: float) -> float:
        if a == 0:
            return 0.0
        return math.inf if b == 0 else a * math.log(a / b)

    return term(q, p) + term(1 - q, 1 - p)


def kl_inverse(q: float, c: float, iters: int = 100) -> float:
    """sup {p in [q, 1]: kl(q || p) <= c} by bisection (kl(q || .) increases on [q, 1]); 1 when no p < 1 exceeds c.

    Returns the bracket's upper end, so float rounding can only loosen (never invalidate) the bound.
    """
    if not 0 <= q <= 1 or c < 0:
        raise ValueError(f"kl_inverse needs 0 <= q <= 1 and c >= 0, got q={q}, c={c}")
    lo, hi = q, 1.0
    if binary_kl(q, hi) <= c:
        return 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binary_kl(q, mid) <= c else (lo, mid)
    return hi


def complexity(n: int, log_prior: float, delta: float) -> float:
    """KL + ln(2 sqrt(n) / delta) with KL = -ln P(prompt) (the numerator both bounds share)."""
    if n < 1 or not 0 < delta < 1 or log_prior > 0:
        raise ValueError(f"need n >= 1, 0 < delta < 1 and log_prior <= 0, got n={n}, delta={delta}, {log_prior=}")
    return -log_prior + math.log(2 * math.sqrt(n) / delta)


def prompt_bound(train_error: float, n: int, log_prior: float, delta: float = 0.05, kind: str = "mcallester") -> float:
    """Upper bound on a prompt's test error (see the module notes).

    Args:
        train_error: the prompt's 0-1 error on the n training samples (0-1).
        n: number of training samples.
        log_prior: ln P(prompt) under a prior fixed before the data (<= 0; e.g. ``TextScorer.log_prob``).
        delta: the bound holds with probability >= 1 - delta.
        kind: ``"mcallester"`` (square root) or ``"kl"`` (kl-inverse, tighter).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0 <= train_error <= 1:
        raise ValueError(f"train_error must lie in [0, 1], got {train_error}")
    c = complexity(n, log_prior, delta)
    if kind == "mcallester":
        return train_error + math.sqrt(c / (2 * n))
    return kl_inverse(train_error, c / n)
