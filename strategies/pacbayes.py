"""PAC-Bayes generalisation bounds for discrete prompts, and a greedy prompt search that lowers them.

Paper: Akinwande, Jiang, Sam, Kolter, "Understanding prompt engineering may not require rethinking generalization"
(arXiv 2310.03957; ICML 2023 SODS workshop version). **Unofficial, from the paper**: no code was released; the
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
lowers the bound or after ``max_words`` words. ``select: error`` follows the paper's aim instead ("improving upon
training performance while retaining the same bound"): the lowest train error among the extensions whose bound is not
above the current one. The paper proposes the tokens with a language model; ours come from a given word list.

Benchmarks: few-shot (base-to-new: the search runs on the base classes' training images; the found prompt is
class-agnostic, so the new classes get it too); class-incremental (a new search per experience over the classes seen
so far, on the features of every experience seen so far: n grows; each experience's bound holds at its own delta);
test-time (no training data: the head is ``init_prompt``, no bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from avalanche.evaluation import PluginMetric

from ctta.clip_prompting.search import FewShotFeatures, SearchHistory, SearchTemplate, fill, fitness_scores
from ctta.clip_prompting.text_cache import encode_texts
from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotConfig, single_template, text_cache_of
from ctta.fields import ranged
from ctta.llm.scoring import CausalLMScorer, TextScorer, UnigramPrior
from ctta.metrics import SummaryMetric
from ctta.registry import STRATEGIES

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


# ---------------------------------------------------------------------------------------------- greedy search
@dataclass(frozen=True)
class BoundedPrompt:
    """A prompt (the searched words) with its train error, prior and bound."""

    prompt: str
    train_error: float
    log_prior: float
    bound: float


def extend(prompt: str, word: str) -> str:
    """``prompt`` followed by ``word`` (one space between; none before the first word)."""
    return f"{prompt} {word}".strip()


def greedy_search(train_errors: Callable[[list[str]], list[float]], log_prior: Callable[[str], float],
                  words: Sequence[str], n: int, *, init_prompt: str = "", max_words: int = 5, delta: float = 0.05,
                  kind: str = "kl", select: str = "bound", history: SearchHistory | None = None) -> BoundedPrompt:
    """Append words one at a time while that helps; ``select`` says which word and what helps.

    ``"bound"``: the extension with the lowest bound, while the bound drops. ``"error"`` (the paper's aim, "improving
    upon training performance while retaining the same bound"): among the extensions whose bound is not above the
    current one, the lowest train error (ties: lower bound), while the train error drops.

    Args:
        train_errors: prompts -> their train errors (0-1) on the n samples (batched: one call per step).
        log_prior: prompt -> ln P(prompt) (the prior's ``log_prob``).
        words: the candidate vocabulary (ties go to the earlier word).
        n: training samples behind the train errors.
        init_prompt: the words the search starts from (scored too: the search never returns a worse bound).
        max_words: most words appended.
        delta, kind: the bound's confidence and form (``prompt_bound``).
        select: ``"bound"`` or ``"error"`` (above).
        history: receives one row per scored prompt (``fitness`` = -bound, ``chosen`` on the kept ones).
    """

    def score(prompts: list[str]) -> list[BoundedPrompt]:
        errors = train_errors(prompts)
        out = []
        for p, e in zip(prompts, errors):
            lp = log_prior(p)
            bound = prompt_bound(e, n, lp, delta, kind) if lp > -math.inf else math.inf
            out.append(BoundedPrompt(p, float(e), float(lp), bound))
        return out

    def record(step: int, cands: list[BoundedPrompt], chosen: BoundedPrompt | None) -> None:
        for c in cands if history is not None else ():
            history.append(step, c.prompt, {"fitness": -c.bound, **asdict(c)}, chosen=c is chosen)

    current = score([init_prompt])[0]
    record(0, [current], current)
    for step in range(1, max_words + 1):
        cands = score([extend(current.prompt, w) for w in words])
        best, improved = _pick(cands, current, select)
        record(step, cands, best if improved else None)
        if not improved:
            break
        current = best
    return current


def _pick(cands: list[BoundedPrompt], current: BoundedPrompt, select: str) -> tuple[BoundedPrompt | None, bool]:
    """The candidate ``select`` prefers (min keeps the first of equal keys) and whether it improves on ``current``."""
    if select == "bound":
        best = min(cands, key=lambda c: c.bound, default=None)
        return best, best is not None and best.bound < current.bound
    if select != "error":
        raise ValueError(f"select must be 'bound' or 'error', got {select!r}")
    best = min((c for c in cands if c.bound <= current.bound), key=lambda c: (c.train_error, c.bound), default=None)
    return best, best is not None and best.train_error < current.train_error


def candidate_words(words: Sequence[str], vocab_file: str = "", clip_tokenizer=None, clip_vocab: int = 0) -> list[str]:
    """The search's vocabulary: ``words``, then the lines of ``vocab_file``, then the first ``clip_vocab`` whole-word
    alphabetic tokens of CLIP's BPE vocabulary (merge order: frequent first); de-duplicated, order kept, words with
    braces or spaces dropped (they would break the template)."""
    out = list(words)
    if vocab_file:
        out += Path(vocab_file).read_text(encoding="utf-8").split()
    if clip_vocab > 0:
        ids = sorted(clip_tokenizer.decoder)  # token id -> BPE string; whole words end with "</w>"
        whole = (clip_tokenizer.decoder[i][:-4] for i in ids if clip_tokenizer.decoder[i].endswith("</w>"))
        out += [w for w in whole if len(w) > 1 and w.isalpha()][:clip_vocab]
    return list(dict.fromkeys(w for w in out if w and not set(w) & set("{} ")))


def make_prior(spec: str, clip_tokenizer, max_length: int = 75, device=None) -> TextScorer:
    """The prior a config names.

    ``unigram``: uniform over the CLIP tokenizer's vocabulary (49,408 tokens) with a uniform length prior over
    0..``max_length``, a proper prior over prompts of varying length; ``uniform77``: the paper's baseline, every
    prompt -77 ln 49408 (a full context of uniform tokens); ``hf:<hub id or folder>``: a causal LM's likelihood with
    its end-of-text token scored.
    """
    if spec == "unigram":
        return UnigramPrior.from_tokenizer(clip_tokenizer, max_length=max_length)
    if spec == "uniform77":
        return _Constant(uniform_log_prior())
    if spec.startswith("hf:"):
        return CausalLMScorer.from_pretrained(spec[3:], device=device, add_eos=True)
    raise ValueError(f"unknown prior {spec!r}: unigram | uniform77 | hf:<model id or local folder>")


@dataclass(frozen=True)
class _Constant:
    value: float

    def log_prob(self, text: str) -> float:
        return self.value


# ---------------------------------------------------------------------------------------------- strategy
@dataclass(frozen=True)
class PacBayesConfig(ZeroShotConfig):
    """Greedy search for a prompt with a low PAC-Bayes bound (see the module notes; unofficial)."""

    prompt_template: str = "{prompt} {}."  # the class text: {prompt} = the searched words, {} = the class name
    init_prompt: str = "a photo of a"  # the words the search starts from ("" = empty prompt)
    words: tuple[str, ...] = ()  # candidate words
    vocab_file: str = ""  # more candidate words, whitespace-separated
    clip_vocab: int = ranged(0, ge=0)  # + the first K whole-word tokens of CLIP's vocabulary
    max_words: int = ranged(5, ge=0)  # most words appended
    prior: str = "unigram"  # unigram | uniform77 | hf:<causal LM id or local folder>
    max_length: int = ranged(75, ge=1)  # unigram prior: longest prompt (CLIP: 77 positions - start/end tokens)
    delta: float = ranged(0.05, gt=0, lt=1)  # confidence: the bound holds with probability >= 1 - delta
    bound: str = "kl"  # kl | mcallester: the bound the search minimises and reports
    select: str = "bound"  # bound: lowest bound while it drops | error: lowest train error at a bound not above
    feature_memory: bool = True


@STRATEGIES.register("pacbayes", config=PacBayesConfig)
class PacBayes(SearchTemplate):
    """Zero-shot CLIP with the prompt of lowest PAC-Bayes bound found by greedy search on the train experience.

    ``self.results``: per train experience ``{"experience", "prompt", "train_error", "log_prior", "bound", "n",
    "delta", "kind", "prior"}`` (also the run artifact ``pacbayes_bound``). Each experience's bound holds at its own
    delta; for all T experiences at once use delta / T.
    """

    config_class = PacBayesConfig

    @classmethod
    def check_resources(cls, cfg: PacBayesConfig) -> None:
        """The vocabulary file and a local ``hf:`` prior's folder exist, before anything loads."""
        if cfg.vocab_file and not Path(cfg.vocab_file).is_file():
            raise FileNotFoundError(f"pacbayes: vocab_file {cfg.vocab_file} not found (whitespace-separated words)")
        if cfg.prior.startswith("hf:"):
            from ctta.llm import check_llm

            check_llm(cfg.prior, None)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.cfg.bound not in KINDS:
            raise ValueError(f"pacbayes: bound must be one of {KINDS}, got {self.cfg.bound!r}")
        if self.cfg.select not in ("bound", "error"):
            raise ValueError(f"pacbayes: select must be 'bound' or 'error', got {self.cfg.select!r}")
        if "{prompt}" not in self.cfg.prompt_template:
            raise ValueError(f"pacbayes: prompt_template needs a {{prompt}} slot, got {self.cfg.prompt_template!r}")
        self.words = candidate_words(self.cfg.words, self.cfg.vocab_file, self.model.tokenizer, self.cfg.clip_vocab)
        self.prior = make_prior(self.cfg.prior, self.model.tokenizer, self.cfg.max_length, self.device)
        self.results: list[dict[str, Any]] = []

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames: list[str], cfg) -> TextHeadModel:
        template = class_template(cfg.prompt_template, cfg.init_prompt)
        return TextHeadModel(clip_model, tokenizer, classnames, single_template(template), cache=text_cache_of(cfg))

    def search(self, feats: FewShotFeatures, classnames: list[str]) -> list[list[str]]:
        n = int(feats.labels.numel())
        best = greedy_search(lambda prompts: self.train_errors(feats, classnames, prompts), self.prior.log_prob,
                             self.words, n, init_prompt=self.cfg.init_prompt, max_words=self.cfg.max_words,
                             delta=self.cfg.delta, kind=self.cfg.bound, select=self.cfg.select,
                             history=self.history)  # fmt: skip
        self.results.append({"experience": len(self.results), **asdict(best), "n": n, "delta": self.cfg.delta,
                             "kind": self.cfg.bound, "prior": self.cfg.prior})  # fmt: skip
        template = class_template(self.cfg.prompt_template, best.prompt)
        return [[fill(template, name)] for name in classnames]

    def fallback_texts(self, name: str) -> list[str]:
        """A class the search never saw gets the last found prompt (prompts are class-agnostic)."""
        if not self.results:
            return super().fallback_texts(name)
        return [fill(class_template(self.cfg.prompt_template, self.results[-1]["prompt"]), name)]

    def train_errors(self, feats: FewShotFeatures, classnames: list[str], prompts: list[str]) -> list[float]:
        """The 0-1 train error of each prompt's one-template zero-shot classifier (one encoding pass)."""
        templates = [class_template(self.cfg.prompt_template, p) for p in prompts]
        texts = [fill(t, c) for t in templates for c in classnames]
        emb = encode_texts(self.model.clip, self.model.tokenizer, texts, self.model.cache)
        emb = emb.view(len(prompts), len(classnames), -1)  # (P, C, E), rows normalised
        n = int(feats.labels.numel())  # top-1 is a float32 mean: round back to a count of errors
        return [round((1.0 - fitness_scores(feats, e)["top1"]) * n) / n for e in emb]

    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        return (*super().extra_metrics(cfg), BoundSummary())

    def run_artifacts(self) -> dict[str, Any]:
        return {**super().run_artifacts(), "pacbayes_bound": list(self.results)}


class BoundSummary(SummaryMetric, PluginMetric[dict]):
    """The last search's bound and train error (fractions) in the run's summary; the log-prior, n and the prompt are
    in the ``pacbayes_bound`` artifact (the summary is printed as percentages)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {}

    def reset(self) -> None:
        self.last = {}

    def result(self) -> dict[str, float]:
        return dict(self.last)

    def after_training_exp(self, strategy: PacBayes) -> None:
        if strategy.results:
            r = strategy.results[-1]
            self.last = {"pacbayes_bound": float(r["bound"]), "pacbayes_train_error": float(r["train_error"])}

    def __str__(self) -> str:
        return "PacBayesBound"


def class_template(prompt_template: str, prompt: str) -> str:
    """The one-slot class template of a prompt: ``{prompt}`` replaced, spaces collapsed (``"{prompt} {}."`` with
    prompt ``""`` gives ``"{}."``)."""
    return " ".join(prompt_template.replace("{prompt}", prompt).split())
