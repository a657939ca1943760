"""TFUP and TFUP-T: training-free unsupervised prompting of CLIP on an unlabelled target domain (Long et al.,
"Training-Free Unsupervised Prompt for Vision-Language Models", 2024). Official code: wlb12345/TFUP@d95d4d3
``main.py:{TFUP,TFUP_T}``, ``utils.py:{refine_few_shots_without_label,get_sim_based_kl,TextAdapter,Adapter,
marginal_loss,get_clip_weights}``, ``configs/*.yaml`` (no licence file: behaviour read, re-implemented, no code
copied; spec ``remaining-seed-systems.md`` C7).

Transductive (``ctta.templates.transductive``): the whole unlabelled target set is encoded first.

* Text classifier ``W``: per class the **un-normalised** mean of CLIP's embeddings of its descriptions (the official
  GPT-3.5 files, user-supplied: ``descriptions``), or of ``"a photo of a {}."`` (VisDA-2017, ``descriptions: ""``).
* Cache (``select_representative``): zero-shot probabilities ``p = softmax(10 cos(f, W))``; per class the ``2S``
  most probable images, each scored by its summed KL to the other candidates ``sum_k KL(p_j || p_k)``; the ``S``
  lowest become cache keys with that class as pseudo-label; ``S = clamp(floor(0.3 N / C), 9, 16)``.
* Prediction (``tfup_logits``): ``100 cos(f, W) + alpha exp(-beta (1 - A)) V`` with ``A = cos(f, keys) * sim``,
  ``sim = 2 (1 - minmax(zscore(KL(p_f || p_key))))`` per row (``kl_similarity``); alpha 0.3, beta 1.
* TFUP-T (``epochs > 0``): a class residual on ``W`` (``W' = norm(0.5 W + 0.5 res)``, res from zeros) and an image
  adapter (E -> E/4 -> E, no bias, ReLU after both; ``f' = norm(0.2 A(f) + 0.8 f)``), AdamW lr 0.012, eps 3e-3,
  wd 0.1, cosine over ``epochs x`` (batches of the warm-up set), stepped every batch. Warm-up epochs: cross-entropy
  on a second selection of ``max(9, floor(0.75 N / C))`` images per class (augmented views) labelled with the TFUP
  prediction; then every target image: the weak view (centre-crop feature) gives TFUP logits, confident ones (max
  probability > 0.9) supervise the strong (augmented) view by cross-entropy, plus 0.3 x the negative entropy of the
  batch-mean prediction. TFUP-T predicts ``100 cos(f', W')`` (no cache; ``predict_cache`` adds it).

On a test-time stream of views (``scenarios/test_time``) view 0, the original image, is used. Deviations: fp32
everywhere (the reference is fp16 on ``cuda:0``); the KL matrices are computed at once (the
reference loops over rows; same values); ``softmax`` over classes where the reference omits ``dim``. **Model
selection:** the reference keeps the epoch with the best *test* accuracy; ctta never selects on the test set and
reports the last epoch (published TFUP-T numbers are therefore optimistic relative to ctta's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.model import clip_parts
from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.templates.base import split_arguments
from ctta.templates.benchmark_info import required_classnames
from ctta.templates.transductive import TransductiveTemplate, UnlabelledImages

__all__ = ["TFUP", "TFUPConfig", "TFUPModel", "TFUPT", "TFUPTConfig", "kl_matrix", "kl_similarity",
           "marginal_entropy_loss", "select_representative", "shots_for", "tfup_logits"]  # fmt: skip


# ---------------------------------------------------------------------------------------------- closed forms
def kl_matrix(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(p_i || q_j)`` for every row pair: ``(N, C)`` x ``(M, C)`` -> ``(N, M)``."""
    return (p * p.log()).sum(-1, keepdim=True) - p @ q.log().t()


def kl_similarity(keys: torch.Tensor, feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TFUP's multi-level similarity ``2 (1 - minmax(zscore(KL(p_f || p_key))))`` per row, ``(N, M)``.

    ``keys`` ``(M, E)``, ``feats`` ``(N, E)`` and ``weights`` ``(C, E)`` as the caller normalised them; ``p`` =
    ``softmax(10 x @ weights.T)``; z-score with the unbiased row std, then min-max over the row.
    """
    kl = kl_matrix(F.softmax(10.0 * feats @ weights.t(), -1), F.softmax(10.0 * keys @ weights.t(), -1))
    z = (kl - kl.mean(1, keepdim=True)) / kl.std(1, keepdim=True)
    lo, hi = z.min(1, keepdim=True).values, z.max(1, keepdim=True).values
    return 2.0 * (1.0 - (z - lo) / (hi - lo))


def cache_logits(feats, keys, values, weights, beta: float) -> torch.Tensor:
    """``exp(-beta (1 - cos(f, k) * sim)) @ V`` (features, keys, weights L2-normalised by the caller)."""
    affinity = (feats @ keys.t()) * kl_similarity(keys, feats, weights)
    return (-beta * (1.0 - affinity)).exp() @ values


def tfup_logits(feats, weights, keys, values, alpha: float = 0.3, beta: float = 1.0) -> torch.Tensor:
    """TFUP's prediction ``100 cos(f, W) + alpha * cache`` (inputs un-normalised; ``values`` one-hot ``(M, C)``)."""
    f, w, k = (F.normalize(t, dim=-1) for t in (feats, weights, keys))
    return 100.0 * f @ w.t() + alpha * cache_logits(f, k, values, w, beta)


def select_representative(probs: torch.Tensor, shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class the ``shots`` most prototypical of its ``2 shots`` most probable samples (lowest summed KL to the
    other candidates). Returns ``(indices, pseudo-labels)``, class-major; an image may serve two classes."""
    idx, labels = [], []
    for c in range(probs.shape[1]):
        cand = probs[:, c].sort(descending=True, stable=True).indices[: 2 * shots]
        score = kl_matrix(probs[cand], probs[cand]).sum(1)
        keep = cand[score.sort(stable=True).indices[:shots]]
        idx.append(keep)
        labels.append(torch.full_like(keep, c))
    return torch.cat(idx), torch.cat(labels)


def shots_for(n: int, n_classes: int, proportion: float, lo: int = 9, hi: int | None = 16) -> int:
    """``clamp(floor(n * proportion / C), lo, hi)`` (cache: 0.3, 9..16; TFUP-T training set: 0.75, >= 9)."""
    s = max(lo, int(n * proportion / n_classes))
    return min(hi, s) if hi is not None else s


def marginal_entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Negative entropy of the batch-mean prediction (``log(p + 1e-6)``, the reference's)."""
    p = F.softmax(logits, -1).mean(0)
    return (p * (p + 1e-6).log()).sum()


# ---------------------------------------------------------------------------------------------- config and model
@dataclass(frozen=True)
class TFUPConfig:
    """TFUP settings (official ``configs/office_home.yaml`` defaults).

    Attributes:
        alpha, beta: cache weight and sharpness.
        cache_proportion: cache shots per class = clamp(floor(N * proportion / C), 9, 16).
        descriptions: per-class description JSON ``{class: [texts]}`` (TFUP's ``gpt3_prompts`` files) or
            ``builtin:digits``; ``""``: the template alone (the reference's VisDA-2017 setting).
        template: the prompt without descriptions.
        batch_size: images per feature-encoding batch (and TFUP-T update).
    """

    alpha: float = 0.3
    beta: float = 1.0
    cache_proportion: float = ranged(0.3, gt=0)
    descriptions: str = ""
    template: str = "a photo of a {}."
    batch_size: int = ranged(256, ge=1)
    episodic: bool = True


class TFUPModel(nn.Module):
    """Frozen CLIP, its text classifier ``weights`` (buffer, un-normalised), the cache (buffers) and, for TFUP-T,
    the text residual ``text_res`` and the image ``adapter``."""

    def __init__(self, clip_model, tokenizer, classnames: Sequence[str], cfg: TFUPConfig, adapters: bool = False):
        super().__init__()
        self.clip = clip_model.requires_grad_(False)
        self.cfg, self.classnames = cfg, list(classnames)
        self.register_buffer("weights", _text_weights(self.clip, tokenizer, self.classnames, cfg), persistent=False)
        self.register_buffer("keys", torch.zeros(0, self.weights.shape[1]), persistent=False)
        self.register_buffer("values", torch.zeros(0, len(self.classnames)), persistent=False)
        self.text_res = self.adapter = None
        if adapters:
            e = self.weights.shape[1]
            self.text_res = nn.Parameter(torch.zeros_like(self.weights))
            self.adapter = nn.Sequential(nn.Linear(e, e // 4, bias=False), nn.ReLU(), nn.Linear(e // 4, e, bias=False),
                                         nn.ReLU())  # fmt: skip

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) CLIP image features."""
        return self.clip.encode_image(images).float()

    def adapted(self, feats: torch.Tensor, ratio_alpha: float = 0.2, ratio_beta: float = 0.5):
        """``(f', W')``: adapted, normalised features and class weights (unchanged without adapters)."""
        if self.adapter is None:
            return F.normalize(feats, dim=-1), F.normalize(self.weights, dim=-1)
        f = ratio_alpha * self.adapter(feats) + (1 - ratio_alpha) * feats
        w = (1 - ratio_beta) * self.weights + ratio_beta * self.text_res
        return F.normalize(f, dim=-1), F.normalize(w, dim=-1)

    def cached(self, f: torch.Tensor, w: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        """``100 f W^T + alpha cache`` for normalised ``f``, ``w`` (TFUP's logits)."""
        return 100.0 * f @ w.t() + alpha * cache_logits(f, F.normalize(self.keys, dim=-1), self.values, w, beta)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f, w = self.adapted(self.encode(images))
        return self.cached(f, w, self.cfg.alpha, self.cfg.beta)


@torch.no_grad()
def _text_weights(clip, tokenizer, classnames: list[str], cfg: TFUPConfig) -> torch.Tensor:
    """Per class the un-normalised mean text embedding of its descriptions (or of the template)."""
    from ctta.clip_prompting.descriptions import load_descriptions, match_classnames

    if cfg.descriptions:
        per_class = match_classnames(load_descriptions(cfg.descriptions), classnames)
    else:
        per_class = [[cfg.template.format(c.replace("_", " "))] for c in classnames]
    dev = next(clip.parameters()).device
    return torch.stack([clip.encode_text(tokenizer(list(t)).to(dev)).float().mean(0) for t in per_class])


def _first_view(x: torch.Tensor) -> torch.Tensor:
    """Images ``(B, 3, H, W)``; a test-time stream's views ``(B, N, 3, H, W)`` give view 0 (the original image)."""
    return x[:, 0] if x.dim() == 5 else x


class _Pseudo(torch.utils.data.Dataset):
    """``(strong view, pseudo-label)`` of the selected target images (re-augmented at every access)."""

    def __init__(self, images: UnlabelledImages, indices: list[int], labels: list[int]) -> None:
        self.images, self.indices, self.labels = images, indices, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.images[self.indices[i]][0], self.labels[i]


# ---------------------------------------------------------------------------------------------- strategies
@STRATEGIES.register("tfup", config=TFUPConfig)
class TFUP(TransductiveTemplate):
    """TFUP as an Avalanche strategy: ``eval(exp)`` builds the cache from the experience's unlabelled target set
    (``ctta.templates.transductive``), then predicts with the re-weighted cache. Nothing is trained.

    Args (beyond Avalanche's; the config's fields are keyword arguments too):
        model: an open_clip CLIP (or ``CLIPBackbone``, or ``(model, tokenizer)``).
        classnames: the target classes (the runner passes the benchmark's).
        tokenizer: its tokenizer (default: the backbone's, else open_clip's ``SimpleTokenizer``).
        config: a ``TFUPConfig``.
    """

    config_class = TFUPConfig
    training_free = True  # no parameter is trained (the smoke contract checks predictions instead)
    adapters = False
    optimizer_refusal = "TFUP is training-free (TFUP-T builds its own AdamW from lr, eps and weight_decay)"
    criterion_refusal = "TFUP's prediction is fixed by the cache (TFUP-T's losses are set by its config)"

    def __init__(self, *, model, config=None, classnames: Sequence[str] | None = None, tokenizer=None,
                 precision: str = "fp32", **kwargs) -> None:  # fmt: skip
        template, method_kwargs = split_arguments(kwargs)
        self.check_arguments(template.get("optimizer"), template.get("criterion"), template.get("train_epochs"))
        self.cfg = self.resolve_config(config, method_kwargs, ("classnames", "tokenizer", "precision"))
        if not classnames:
            raise ValueError(f"{type(self).__name__} needs classnames=[...] (one per label)")
        clip, tok = clip_parts(model, tokenizer)
        tfup_model = TFUPModel(clip, tok, classnames, self.cfg, adapters=self.adapters)
        template["eval_mb_size"] = template.get("eval_mb_size") or self.cfg.batch_size
        super().__init__(model=tfup_model, episodic=self.cfg.episodic, precision=precision, **template)
        self.target_features: torch.Tensor | None = None

    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict:
        return {"classnames": required_classnames(benchmark, cls.__name__)}

    def encode_all(self, images: UnlabelledImages) -> torch.Tensor:
        """Raw CLIP features of every target image (centre views), in dataset order."""
        feats = [self.model.encode(_first_view(x).to(self.device)) for x, _ in images.loader(self.cfg.batch_size)]
        return torch.cat(feats)

    def fit_target(self, images: UnlabelledImages) -> None:
        """Encode the target set and fill the cache with its representative, pseudo-labelled samples."""
        m = self.model
        self.target_features = feats = self.encode_all(images)
        probs = F.softmax(10.0 * F.normalize(feats, dim=-1) @ F.normalize(m.weights, dim=-1).t(), -1)
        shots = shots_for(len(feats), len(m.classnames), self.cfg.cache_proportion)
        idx, labels = select_representative(probs, shots)
        m.keys = feats[idx].clone()
        m.values = F.one_hot(labels, len(m.classnames)).float()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_first_view(x))

    def load_reset_state(self, state) -> None:
        super().load_reset_state(state)
        self.model.keys, self.model.values = self.model.keys[:0], self.model.values[:0]


@dataclass(frozen=True)
class TFUPTConfig(TFUPConfig):
    """TFUP-T settings (official ``configs/office_home.yaml`` and ``main.py:TFUP_T``).

    Attributes:
        epochs, warmup_epochs: training epochs in all, the first ones cross-entropy on the pseudo-labelled set.
        lr, eps, weight_decay: AdamW.
        training_proportion: pseudo-labelled warm-up images per class = max(9, floor(N * proportion / C)).
        ratio_alpha, ratio_beta: image-adapter and text-residual mixing.
        confidence: weak-view probability above which a pseudo-label supervises the strong view.
        marginal_weight: weight of the marginal-entropy term.
        predict_cache: add the cache to the adapted prediction (the reference reports it without).
    """

    epochs: int = ranged(30, ge=0)
    warmup_epochs: int = ranged(5, ge=0)
    lr: float = ranged(0.012, gt=0)
    eps: float = 3e-3
    weight_decay: float = 0.1
    training_proportion: float = ranged(0.75, gt=0)
    ratio_alpha: float = 0.2
    ratio_beta: float = 0.5
    confidence: float = 0.9
    marginal_weight: float = 0.3
    predict_cache: bool = False


@STRATEGIES.register("tfup_t", config=TFUPTConfig)
class TFUPT(TFUP):
    """TFUP-T: TFUP's cache, then a text residual and an image adapter trained on the unlabelled target set (warm-up
    cross-entropy on pseudo-labelled representatives, then confident weak-to-strong pseudo-labels + marginal
    entropy). Reports the last epoch (never selected on the test set)."""

    config_class = TFUPTConfig
    training_free = False
    adapters = True

    def fit_target(self, images: UnlabelledImages) -> None:
        super().fit_target(images)
        cfg, m = self.cfg, self.model
        warm = self._warmup_set(images)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
        warm_loader, all_loader = self._loader(warm), self._loader(images.strong())
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * len(warm_loader)))
        for epoch in range(cfg.epochs):
            warmup = epoch < cfg.warmup_epochs
            for batch in warm_loader if warmup else all_loader:
                loss = self._warmup_loss(*batch) if warmup else self._main_loss(*batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                self.loss = loss.detach()

    def _warmup_set(self, images: UnlabelledImages):
        """The pseudo-labelled warm-up set: representatives of each class labelled with TFUP's prediction."""
        m, feats = self.model, self.target_features
        probs = F.softmax(10.0 * F.normalize(feats, dim=-1) @ F.normalize(m.weights, dim=-1).t(), -1)
        shots = shots_for(len(feats), len(m.classnames), self.cfg.training_proportion, hi=None)
        idx, _ = select_representative(probs, shots)
        with torch.no_grad():
            f, w = F.normalize(feats[idx], dim=-1), F.normalize(m.weights, dim=-1)
            pseudo = m.cached(f, w, self.cfg.alpha, self.cfg.beta).argmax(-1)
        return _Pseudo(images.strong(), idx.tolist(), pseudo.tolist())

    def _loader(self, data):
        drop_last = len(data) >= self.cfg.batch_size  # Dassl's train loader
        return torch.utils.data.DataLoader(data, batch_size=self.cfg.batch_size, shuffle=True, drop_last=drop_last)

    def _adapted_logits(self, feats: torch.Tensor) -> torch.Tensor:
        f, w = self.model.adapted(feats, self.cfg.ratio_alpha, self.cfg.ratio_beta)
        return 100.0 * f @ w.t()

    def _warmup_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode(_first_view(x).to(self.device))
        return F.cross_entropy(self._adapted_logits(feats), y.to(self.device))

    def _main_loss(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        cfg, m = self.cfg, self.model
        strong = self._adapted_logits(m.encode(_first_view(x).to(self.device)))
        with torch.no_grad():
            fw, w = m.adapted(self.target_features[index.to(self.target_features.device)], cfg.ratio_alpha,
                              cfg.ratio_beta)  # fmt: skip
            prob = F.softmax(m.cached(fw, w, cfg.alpha, cfg.beta), -1)
        conf = prob.max(-1).values > cfg.confidence
        ce = F.cross_entropy(strong[conf], prob.argmax(-1)[conf]) if conf.any() else strong.sum() * 0.0
        return ce + cfg.marginal_weight * marginal_entropy_loss(strong)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        cfg, m = self.cfg, self.model
        f, w = m.adapted(m.encode(_first_view(x)), cfg.ratio_alpha, cfg.ratio_beta)
        return m.cached(f, w, cfg.alpha, cfg.beta) if cfg.predict_cache else 100.0 * f @ w.t()
