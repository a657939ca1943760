"""HiCroPL: hierarchical cross-modal prompt learning (Zheng et al., "Hierarchical Cross-modal Prompt Learning for
Vision-Language Models", ICCV 2025, arXiv 2507.14976). Official code: zzeoZheng/HiCroPL@2c2b2f2
``trainers/hicropl.py`` and its vendored ``dassl/`` (behaviour read, re-implemented, no code copied; its LICENSE file
holds an unresolved merge conflict, MIT vs Apache-2.0, so ctta ships none of its files). Spec:
``clip-prompt-learners.md`` sections 12, 23.4.

Prompts (IVLP-style, both towers, depth J, ``n_ctx`` tokens): text ``T_0 = ctx`` (from ``ctx_init`` when
``n_ctx <= 4``, else N(0, 0.02^2) with "X" placeholders), ``T_1..T_{J-1}`` N(0, 0.02^2) replacing the context at
layers 1..J-1; vision ``V_0..V_{J-1}`` all starting from **one** N(0, 0.02^2) tensor (equal values, separate
parameters: the reference's GPU semantics), appended after the patch tokens and replaced at layers 1..J-1.

Mapping (``k = cross_layer``): a proxy token per layer pools that layer's prompts (``AttentionPooling``:
``q <- LN_2(q + MHA(LN_1 q, LN_1 P, LN_1 P))``); early layers (< k) map text to vision: ``V_0..V_{k-1}``
(concatenated) attend to the pooled ``T_0..T_{k-1}`` through ``text2visual`` (``CrossPromptAttention``:
``Q <- L_q Q; Q += MHA(LN_1 Q, LN_1 L_k P, LN_1 L_v P); Q += FFN(LN_2 Q)``, 8 heads); late layers (>= k) map
vision to text: ``T_k..T_{J-1}`` attend to the pooled ``V_k..V_{J-1}`` through ``visual2text``.

Teachers and loss: image ``f_zs`` = the unprompted frozen CLIP (normalised, no gradient); text ``g_LLM`` = the mean
of the normalised frozen-CLIP features of each class's LLM descriptions, re-normalised (CoPrompt's ``gpt_file``
JSON, ``DescriptionBank``; ``descriptions`` lists the files of every dataset the run evaluates, e.g. ImageNet's and the
ten targets' for cross-dataset transfer). Fusion at train **and** test: ``f = n(n(f_p) + f_zs)``,
``g = n(n(g_p) + fp16(g_LLM))``. Loss: ``CE + lambd * ((1 - mean cos(g, g_LLM)) + (1 - mean cos(f, f_zs)))``,
``lambd`` 12.

Official behaviour kept as the default (switches give the paper's intent; results with them are non-official):

* ``mapping: official``: the mapped prompts are **written into the prompt parameters** (``.data.copy_``) before
  each forward, and the encoders read the parameters; so the mappers, pooling nets and proxy tokens get no gradient
  and keep their initialisation (a fixed random re-write), and **every forward rewrites**, evaluation included (test
  logits depend on how many forwards came before). ``mapping: functional``: the encoders consume the mapped prompts
  directly, nothing is written back, everything trains through the loss, and evaluation is a pure function;
* ``selection: best_val``: after each epoch a validation pass (which rewrites, as every forward) scores the
  benchmark's ``valid`` stream; the prompts of the best epoch (ties to the later one) are restored after the last
  epoch. **House rule:** ctta never selects on a test set: without a validation stream (ImageNet, whose official
  reader passes its test split as validation; class-incremental streams) the last epoch is kept.
  ``selection: last``: no validation passes, last epoch (this also changes the trajectory).

Defaults: the official base-to-new config ``vit_b16_c2_ep50_batch32_16ctx`` (Adam lr 0.0025, eps 1e-3, weight decay
5e-4 coupled, batch 32, 50 epochs, n_ctx 16, J 12, k 6, lambd 12, test batch 500, fp16); ImageNet ``ep40_batch128``;
cross-dataset ``n_ctx 2, depth 6, cross_layer 5, epochs 5``.

Trainable parameters on ViT-B/16 (the reference's 11J + 36 tensors, every one flagged trainable): base-to-new (n_ctx
16, J 12, k 6) 168 tensors, 33,431,040 values, of which the 2J prompts (245,760) receive gradients in the official
mapping (the mappers 12.7M, pooling nets 20.5M and proxies never change); cross-dataset (n_ctx 2, J 6, k 5) 102
tensors, 20,316,416 values, 15,360 with gradients. No published count found to compare with.

Deviations: the image teacher is the run's frozen backbone (the reference loads a second CLIP of ``TEACHER_NAME``,
ViT-B/16 in every config: same weights); the description teacher is encoded by the backbone when the model is built
(fp32 before a CUDA ``prec: fp16`` cast) and its features stay fp32, on any device (the reference crashes without a
GPU); the mappers follow the run's dtype; ``fp32`` runs work (the reference's fp16 image
teacher breaks them); inserted prompts are fp16-rounded (``round_prompts``) as the reference's blocks do; text
encoding is exact-truncated with the shared prefix.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.descriptions import DescriptionBank, load_descriptions
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.optim import warmup_cosine
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image, vision_width
from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.utils import trainable_parameters

__all__ = ["AttentionPooling", "CrossPromptAttention", "HiCroPL", "HiCroPLConfig", "HiCroPLModel", "hicropl_loss"]

MAPPINGS = ("official", "functional")
SELECTIONS = ("best_val", "last")


@dataclass(frozen=True)
class HiCroPLConfig(PromptLearnerConfig):
    epochs: int = ranged(50, ge=1)
    batch_size: int = ranged(32, ge=1)
    eval_batch_size: int = 500
    lr: float = ranged(0.0025, gt=0)  # Adam
    adam_eps: float = 1e-3
    n_ctx: int = 16
    ctx_init: str = "a photo of a"  # used only when n_ctx <= 4 (the reference's rule)
    depth: int = 12  # J, both towers
    cross_layer: int = 6  # k: layers < k map text -> vision, layers >= k vision -> text
    heads: int = 8
    lambd: float = 12.0
    # CoPrompt-format gpt_file JSON files (or builtin:digits), merged in order, the first file's entry winning for a
    # class name two files share (list the training dataset's file first); required
    descriptions: tuple[str, ...] = ()
    mapping: str = "official"  # official (.data.copy_ re-write, every forward) | functional (the paper's intent)
    selection: str = "best_val"  # best_val (validation stream; else last) | last


class AttentionPooling(nn.Module):
    """A proxy token pools a layer's prompts: ``q <- LN_2(q + MHA(LN_1 q, LN_1 P, LN_1 P))`` (unbatched)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """``(1, d)`` proxy, ``(n, d)`` prompts -> ``(1, d)``."""
        s = self.ln_1(prompts)
        return self.ln_2(query + self.attn(self.ln_1(query), s, s, need_weights=False)[0])


class CrossPromptAttention(nn.Module):
    """The knowledge mapper: ``Q <- L_q Q; Q += MHA(LN_1 Q, LN_1 L_k P, LN_1 L_v P); Q += FFN(LN_2 Q)``.

    Args:
        dim: width of the queries (the prompts being rewritten).
        source_dim: width of the pooled proxies of the other tower.
        heads: attention heads (must divide ``dim``).
    """

    def __init__(self, dim: int, source_dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads)
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k, self.linear_v = nn.Linear(source_dim, dim), nn.Linear(source_dim, dim)
        self.ln_1 = nn.LayerNorm(dim)
        gelu = _QuickGELU()
        self.ffn = nn.Sequential(OrderedDict(c_fc=nn.Linear(dim, 4 * dim), gelu=gelu, c_proj=nn.Linear(4 * dim, dim)))
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
        """``(Nq, dim)`` queries, ``(Nk, source_dim)`` proxies -> ``(Nq, dim)``."""
        q = self.linear_q(queries)
        k, v = self.ln_1(self.linear_k(proxies)), self.ln_1(self.linear_v(proxies))
        q = q + self.attn(self.ln_1(q), k, v, need_weights=False)[0]
        return q + self.ffn(self.ln_2(q))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@contextmanager
def _seeded(generator: torch.Generator | None):
    """Draw PyTorch's default module initialisations from ``generator`` (None: the global RNG, untouched)."""
    if generator is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        yield


def hicropl_loss(logits, labels, text, text_llm, image, image_zs, lambd: float, criterion=F.cross_entropy):
    """``CE + lambd * ((1 - mean_c cos(g_c, g_LLM_c)) + (1 - mean_b cos(f_b, f_zs_b)))`` (cosine eps 1e-7)."""
    cos_t = F.cosine_similarity(text.float(), text_llm.float(), dim=1, eps=1e-7).mean()
    cos_i = F.cosine_similarity(image.float(), image_zs.float(), dim=1, eps=1e-7).mean()
    return criterion(logits, labels) + lambd * ((1.0 - cos_t) + (1.0 - cos_i))


class HiCroPLModel(PromptedCLIP):
    """Frozen CLIP + text prompts ``ctx``/``deep_text``, vision prompts ``vpt``/``deep_vision``, the mappers
    ``text2visual``/``visual2text``, pooling nets and proxy tokens, and the two teachers (``descriptions``: the
    ``DescriptionBank``; the image teacher is the unprompted backbone). Training forwards keep the fused features in
    ``self.features``."""

    context_is_the_prompt = False  # TPT tunes every prompt through the forward

    def __init__(self, clip_model, tokenizer, classnames, cfg: HiCroPLConfig, descriptions, *, generator=None):
        init = cfg.ctx_init if cfg.n_ctx <= 4 else ""
        layout, ctx0 = context_init(clip_model, tokenizer, init, cfg.n_ctx, generator=generator)
        super().__init__(
            clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=cfg.round_prompts
        )
        self._check(cfg, clip_model)
        d, w, n, depth, k = ctx0.shape[-1], vision_width(clip_model), cfg.n_ctx, cfg.depth, cfg.cross_layer
        self.mapping, self.cross_layer = cfg.mapping, k
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))
        self.deep_text = nn.ParameterList(
            nn.Parameter(torch.randn(n, d, generator=generator) * 0.02) for _ in range(depth - 1)
        )
        v = torch.randn(n, w, generator=generator) * 0.02  # one tensor: every vision prompt starts equal
        self.vpt = nn.Parameter(v.clone())
        self.deep_vision = nn.ParameterList(nn.Parameter(v.clone()) for _ in range(depth - 1))
        with _seeded(generator):
            self.text2visual = CrossPromptAttention(w, d, cfg.heads)
            self.visual2text = CrossPromptAttention(d, w, cfg.heads)
            pool_t, pool_v = AttentionPooling(d, cfg.heads), AttentionPooling(w, cfg.heads)
        self.pool_text = nn.ModuleList(copy.deepcopy(pool_t) for _ in range(k))
        self.pool_visual = nn.ModuleList(copy.deepcopy(pool_v) for _ in range(depth - k))
        pt, pv = torch.randn(1, d, generator=generator), torch.randn(1, w, generator=generator)
        self.text_proxy = nn.ParameterList(nn.Parameter(pt.clone()) for _ in range(k))
        self.visual_proxy = nn.ParameterList(nn.Parameter(pv.clone()) for _ in range(depth - k))
        self.descriptions = DescriptionBank(
            clip_model, tokenizer, descriptions, classnames, template="{desc}", reduce="mean", renormalize=True
        )
        self.features: dict[str, torch.Tensor] = {}

    @staticmethod
    def _check(cfg: HiCroPLConfig, clip_model) -> None:
        n_layers = min(len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks))
        if not 1 <= cfg.depth <= n_layers:
            raise ValueError(f"depth must be in 1..{n_layers} (layers of the towers), got {cfg.depth}")
        if not 0 <= cfg.cross_layer <= cfg.depth:
            raise ValueError(f"cross_layer must be in 0..depth={cfg.depth}, got {cfg.cross_layer}")
        if cfg.mapping not in MAPPINGS or cfg.selection not in SELECTIONS:
            raise ValueError(f"mapping must be one of {MAPPINGS} and selection one of {SELECTIONS}")

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        self.descriptions.set_classnames(classnames)

    def _apply(self, fn, recurse=True):
        feats = self.descriptions.features
        out = super()._apply(fn, recurse)
        dev = self.descriptions.features.device  # the description teacher stays fp32 (the reference's fp32 CLIP)
        self.descriptions.features = feats.to(device=dev, dtype=torch.float32)
        return out

    def raw_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``([T_0..T_{J-1}], [V_0..V_{J-1}])``: the prompt parameters."""
        return [self.ctx, *self.deep_text], [self.vpt, *self.deep_vision]

    def mapped(self, texts: list[torch.Tensor], visuals: list[torch.Tensor]):
        """The cross-modal rewrite: ``(new V_0..V_{k-1}, new T_k..T_{J-1})`` (each ``(k or J-k, n, width)``)."""
        k, n = self.cross_layer, texts[0].shape[0]
        new_v = new_t = None
        if k > 0:
            proxies = torch.cat([pool(q, t) for pool, q, t in zip(self.pool_text, self.text_proxy, texts[:k])])
            new_v = self.text2visual(torch.cat(visuals[:k]), proxies).view(k, n, -1)
        if k < len(texts):
            late = zip(self.pool_visual, self.visual_proxy, visuals[k:])
            proxies = torch.cat([pool(q, v) for pool, q, v in late])
            new_t = self.visual2text(torch.cat(texts[k:]), proxies).view(len(texts) - k, n, -1)
        return new_v, new_t

    def prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The prompts the encoders read (official: after writing the rewrite into the parameters)."""
        texts, visuals = self.raw_prompts()
        k = self.cross_layer
        if self.mapping == "functional":
            new_v, new_t = self.mapped(texts, visuals)
            visuals = [*new_v.unbind(0), *visuals[k:]] if new_v is not None else visuals
            texts = [*texts[:k], *new_t.unbind(0)] if new_t is not None else texts
            return texts, visuals
        with torch.no_grad():  # the reference's `.data.copy_`: the mappers receive no gradient
            new_v, new_t = self.mapped(texts, visuals)
            for p, new in zip(visuals[:k], new_v if new_v is not None else ()):
                p.copy_(new)
            for p, new in zip(texts[k:], new_t if new_t is not None else ()):
                p.copy_(new)
        return texts, visuals

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        texts, visuals = self.prompts()
        with torch.no_grad():
            f_zs = F.normalize(encode_image(self.clip, images).float(), dim=-1)  # frozen image teacher
        f = encode_image(self.clip, images, visuals[0], visuals[1:], round_prompts=self.round_prompts)
        f = F.normalize(F.normalize(f.float(), dim=-1) + f_zs, dim=-1)
        g_llm = self.descriptions.features.float()
        fused = g_llm.half().float() if self.round_prompts else g_llm  # the reference adds fp16(g_LLM)
        g = F.normalize(F.normalize(self.text(texts[0], texts[1:]).float(), dim=-1) + fused, dim=-1)
        if self.training:
            self.features = {"text": g, "text_llm": g_llm, "image": f, "image_zs": f_zs}
        return self.logit_scale.float() * f @ g.t()


@STRATEGIES.register("hicropl", config=HiCroPLConfig)
class HiCroPL(PromptLearnerTemplate):
    """HiCroPL as an Avalanche strategy: ``model`` is a ``HiCroPLModel``; Adam (coupled weight decay) over every
    trainable parameter (in the official mapping only the 2J prompts receive a gradient); CE + the two cosine
    distillations; best-validation selection (see the module notes)."""

    config_class = HiCroPLConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: HiCroPLConfig) -> HiCroPLModel:
        if not cfg.descriptions:
            raise ValueError(
                "hicropl needs strategy.descriptions: a CoPrompt-format gpt_file JSON ({class name: [descriptions]}; "
                "ShuvenduRoy/CoPrompt@a2a6c12 gpt_file/<dataset>_prompt.json) or builtin:digits"
            )
        sources = (cfg.descriptions,) if isinstance(cfg.descriptions, str) else tuple(cfg.descriptions)
        descriptions: dict[str, list[str]] = {}
        for source in sources:
            for name, texts in load_descriptions(source, "coprompt").items():
                descriptions.setdefault(name, texts)
        return HiCroPLModel(clip_model, tokenizer, classnames, cfg, descriptions, generator=init_generator(cfg))

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return self._criterion(self.mb_output, self.mb_y)
        feats = self.model.features
        return hicropl_loss(
            self.mb_output, self.mb_y, feats["text"], feats["text_llm"], feats["image"], feats["image_zs"],
            self.cfg.lambd, self._criterion,
        )  # fmt: skip

    def make_optimizer(self, **kwargs) -> None:
        super().make_optimizer(**kwargs)
        if not self.user_optimizer:  # Dassl's "adam": coupled L2 decay; parameters without a gradient are skipped
            params = trainable_parameters(self.model)
            self.optimizer = torch.optim.Adam(params, lr=self.lr, eps=self.cfg.adam_eps, weight_decay=self.weight_decay)
            self.scheduler = warmup_cosine(self.optimizer, self.train_epochs, self.warmup_epochs, self.warmup_lr)
        self._best: tuple[float, dict] | None = None

    # ------------------------------------------------------------------ best-validation selection
    def _valid_dataset(self):
        """The benchmark's validation set for this experience (None: none, or empty)."""
        if self.cfg.selection != "best_val" or self.seen is not None:
            return None
        bench = getattr(getattr(self.experience, "origin_stream", None), "benchmark", None)
        stream = getattr(bench, "valid_stream", None) if bench is not None else None
        if stream is None or len(stream) == 0 or len(stream[0].dataset) == 0:
            return None
        return stream[0].dataset.eval()

    @torch.no_grad()
    def validation_accuracy(self, dataset) -> float:
        """Top-1 of the current model on ``dataset`` (every forward rewrites the prompts, as the reference's)."""
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.eval_mb_size, shuffle=False)
        was_training, correct, total = self.model.training, 0, 0
        self.model.eval()
        try:
            for batch in loader:
                x, y = batch[0].to(self.device), batch[1].to(self.device)
                x = x.half() if self.prec == "fp16" and self.device.type == "cuda" else x
                with self.forward_autocast():
                    pred = self.model(x).float().argmax(-1)
                correct, total = correct + int((pred == y).sum()), total + len(y)
        finally:
            self.model.train(was_training)
        return correct / max(total, 1)

    def epoch_end(self) -> None:
        dataset = self._valid_dataset()
        if dataset is None:
            return
        acc = self.validation_accuracy(dataset)
        if self._best is None or acc >= self._best[0]:  # ties go to the later epoch, as Dassl's ">="
            state = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            self._best = (acc, state)

    def restore_best(self) -> None:
        """Load the best validation epoch's trainable state (no-op without validation passes)."""
        if self._best is None:
            return
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for name, value in self._best[1].items():
                params[name].copy_(value)
        self.best_validation_accuracy = self._best[0]
        self._best = None

    def _after_training_exp(self, **kwargs) -> None:
        self.restore_best()  # before the text context is saved (context_out)
        super()._after_training_exp(**kwargs)
