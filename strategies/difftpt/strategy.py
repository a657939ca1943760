"""DiffTPT: TPT with diffusion-generated views (Feng et al., ICCV 2023, arXiv 2308.06038).

Reference: chunmeifeng/DiffTPT@03f11696 (DiffTPT files last changed in f5522ef)
``tpt_classification.py:{test_time_tuning_difftpt, select_confident_samples_cosine}``, ``difftpt_utils.py``,
``image_generator_R.py``; re-implemented from the spec ``tpt-difftpt.md`` section 4 (no code copied).
Per test sample: views ``[orig, conventional..., diffusion...]`` (reference: 1 + 64 crop/flip (+AugMix) views
+ 63 Stable Diffusion image variations = 128); the filtration picks the training views once, at step 1;
``tta_steps=4`` AdamW steps on the marginal entropy of the picked views; prediction from view 0 alone with the
tuned context. The optimisation engine is TPT's ``PromptTuner`` (exact fast path, batched episodes,
AMP/GradScaler); DiffTPT plugs its filtration in as the tuner's ``select_fn`` and appends the diffusion views.

Filtration as coded (``filter_scope="pooled"``, ``cosine_space="logits"``, the defaults): cosine similarity of
each view's logit vector with view 0's; keep view 0 + the top ``int((N-1) * selection_cosine)`` views
(conventional and diffusion pooled); the loss uses the ``int(kept * selection_selfentro)`` lowest-entropy rows
of those (128 views -> 102 -> 30). Options: ``cosine_space="image_features"`` (cosine of CLIP image embeddings,
the paper's text) and ``filter_scope="split"`` (paper reading: the top ``selection_cosine`` of the diffusion
views by cosine plus the top ``selection_selfentro`` of the conventional views incl. view 0 by entropy;
63 -> 50 and 65 -> 19).

Diffusion views are generated here from view 0 (``diffusion_source="view0"``) through
``ctta.strategies.difftpt.diffusion.DiffusionViews`` and its disk cache (a second run, or a run after
``pregenerate``/``ctta generate``, generates nothing).

Deviations from the reference code:
- The generator is conditioned on the centre crop (view 0, de-normalised, 8-bit) instead of the whole image
  squashed to 224 x 224 (the reference's conditioning).
- Generation is seeded per (source image, index) (the reference is unseeded) and cached (``diffusion.py``).
- Sorting in the filtration is stable (ties keep view order).
- ``selection_p`` (TPT's confidence fraction) is unused; DiffTPT's entropy fraction is ``selection_selfentro``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from ctta.strategies.difftpt.config import DiffTPTConfig
from ctta.strategies.difftpt.diffusion import DiffusionViews

from ctta.clip_prompting.episode_tuner import PromptTuner
from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Stats, renormalize
from ctta.losses import confident_indices, cosine_keep_indices, gather_views
from ctta.registry import STRATEGIES
from ctta.templates.prompt_tuning import PromptTuningTemplate

_log = logging.getLogger(__name__)

__all__ = ["DiffTPTConfig", "DiffTPT", "difftpt_select", "make_select_fn", "make_tuner", "denormalize"]


def difftpt_select(
    logits: torch.Tensor,
    feats: torch.Tensor | None = None,
    *,
    n_diffusion: int,
    selection_cosine: float = 0.8,
    selection_selfentro: float = 0.3,
    cosine_space: str = "logits",
    filter_scope: str = "pooled",
) -> torch.Tensor:
    """DiffTPT's view filtration: indices of the views the loss uses, ``(..., k)``.

    Args:
        logits: ``(..., N, C)`` logits of the views ``[orig, conventional..., diffusion...]``.
        feats: ``(..., N, E)`` image features (needed for ``cosine_space="image_features"``).
        n_diffusion: number of diffusion views (the last ones; used by ``filter_scope="split"``).
        selection_cosine, selection_selfentro, cosine_space, filter_scope: see ``DiffTPTConfig``.

    Returns:
        Long indices into the view axis (pooled: ordered by entropy; split: conventional ones first).
    """
    if cosine_space == "image_features" and feats is None:
        raise ValueError("cosine_space='image_features' needs the image features")
    space = logits if cosine_space == "logits" else feats
    if filter_scope == "pooled":
        kept = cosine_keep_indices(space, selection_cosine)  # (..., 1 + k), view 0 first
        sel = confident_indices(gather_views(logits, kept), selection_selfentro)  # (..., k') into kept
        return torch.gather(kept, -1, sel)
    n = logits.shape[-2]
    n_conv = n - n_diffusion  # orig + conventional views
    if n_conv < 1 or n_diffusion < 1:
        raise ValueError(
            f"filter_scope='split' needs conventional and diffusion views, got {n} views, "
            f"{n_diffusion} of them diffusion"
        )
    conv = confident_indices(logits[..., :n_conv, :], selection_selfentro)  # (..., k1)
    sub = torch.cat([space[..., :1, :], space[..., n_conv:, :]], dim=-2)  # (..., 1 + n_diffusion, D)
    diff = cosine_keep_indices(sub, selection_cosine)[..., 1:] + (n_conv - 1)  # (..., k2), drop view 0
    return torch.cat([conv, diff], dim=-1)


def make_select_fn(cfg: DiffTPTConfig):
    """The ``PromptTuner`` ``select_fn`` for ``cfg``: ``(logits (B, N, C), feats (B, N, E)) -> (B, k)``."""

    def select(logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return difftpt_select(
            logits,
            feats,
            n_diffusion=cfg.n_diffusion_views,
            selection_cosine=cfg.selection_cosine,
            selection_selfentro=cfg.selection_selfentro,
            cosine_space=cfg.cosine_space,
            filter_scope=cfg.filter_scope,
        )

    return select


def make_tuner(clip_model, tokenizer, classnames: Sequence[str], cfg: DiffTPTConfig | None = None) -> PromptTuner:
    """Script-level DiffTPT: a ``PromptTuner`` with DiffTPT's filtration (views must include diffusion ones)."""
    cfg = cfg or DiffTPTConfig()
    return PromptTuner(clip_model, tokenizer, classnames, cfg, select_fn=make_select_fn(cfg))


def denormalize(x: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
    """Images ``(..., 3, H, W)`` normalised with ``stats = (mean, std)`` (default OpenAI CLIP's) back to [0, 1]."""
    mean, std = stats if stats is not None else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


@STRATEGIES.register("difftpt", config=DiffTPTConfig)
class DiffTPT(PromptTuningTemplate):
    """DiffTPT as an Avalanche strategy on ``PromptTuningTemplate`` (shared with TPT): episodic or continual.

    Args (beyond ``TPT``'s; the fields of ``DiffTPTConfig`` are keyword arguments):
        diffusion_views: generator + cache appending diffusion views to each mini-batch; built from the config
            when none is given (generation needs the ``diffusion`` extra's packages; cached views do not).
        tuner: a ``PromptTuner`` built with DiffTPT's ``select_fn`` (``make_tuner``), instead of ``model``.
    """

    config_class = DiffTPTConfig

    def __init__(self, *, diffusion_views: DiffusionViews | None = None, **kwargs) -> None:
        tuner = kwargs.get("tuner")
        if tuner is not None and not isinstance(tuner.cfg, DiffTPTConfig):
            raise TypeError(f"DiffTPT needs a tuner configured with DiffTPTConfig, got {type(tuner.cfg).__name__}")
        self.diffusion_views = diffusion_views
        super().__init__(**kwargs)
        if diffusion_views is None:
            size = getattr(kwargs.get("model"), "image_size", None) or _image_size(self.tuner.clip)
            self.diffusion_views = DiffusionViews(
                self.cfg.diffusion, n_views=self.cfg.n_diffusion_views, view_size=size, device=self.device
            )

    def make_tuner(self, clip_model, tokenizer, classnames, cfg) -> PromptTuner:
        return make_tuner(clip_model, tokenizer, classnames, cfg)

    def make_tuner_from(self, model, cfg) -> PromptTuner:
        return PromptTuner.from_prompted(model, cfg, select_fn=make_select_fn(cfg))

    @property
    def n_diffusion(self) -> int:
        return self.tuner.cfg.n_diffusion_views

    def add_diffusion_views(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Append the diffusion views of each sample's view 0: ``(B, N, 3, H, W) -> (B, N + n_diff, 3, H, W)``.

        ``x`` is normalised with ``input_normalization`` (the stream's); the diffusion views are returned in the same
        normalisation. ``labels`` (B,) are only recorded in the cache manifest.
        """
        from torchvision.transforms.functional import to_pil_image

        if x.shape[-1] != self.diffusion_views.view_size:
            raise ValueError(f"views are {x.shape[-1]} px, the diffusion views {self.diffusion_views.view_size} px")
        gen = []
        stats = self.input_normalization
        for i, v0 in enumerate(denormalize(x[:, 0].detach().float().cpu(), stats)):  # (3, H, W) in [0, 1]
            label = int(labels[i]) if labels is not None and labels.dim() == 1 else None
            gen.append(self.diffusion_views(to_pil_image(v0), label=label))  # (n_diff, 3, H, W)
        views = renormalize(torch.stack(gen), (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), stats)  # DiffusionViews: OpenAI's
        return torch.cat([x, views.to(x)], dim=1)

    def pregenerate(self, exp_list, rank: int = 0, world_size: int = 1) -> int:
        """Generate and cache the diffusion views of every sample (no tuning); resumable and shardable.

        Sample ``i`` of each experience is handled by ``rank == i % world_size``; cached samples are skipped, so
        an interrupted call can simply be repeated. Returns the number of images generated by this call.

        Args:
            exp_list: an experience or a list/stream of them (items ``(views (N, 3, H, W), label, ...)``).
            rank, world_size: shard of this process.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        before = self.diffusion_views.generated
        for exp in [exp_list] if hasattr(exp_list, "dataset") else exp_list:
            self.input_normalization = self.normalization_of(exp)
            for i in range(rank, len(exp.dataset), world_size):
                item = exp.dataset[i]
                self.add_diffusion_views(item[0][None], torch.as_tensor([int(item[1])]))
        self.diffusion_views.flush()
        return self.diffusion_views.generated - before

    def adapt_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            mbatch = getattr(self, "mbatch", None)
            labels = mbatch[1] if mbatch is not None and mbatch[0] is x else None  # inside eval: the batch labels
            x = self.add_diffusion_views(x, labels)
        return super().adapt_and_predict(x)

    def eval(self, exp_list, **kwargs):
        """TPT's eval; the view cache's manifest is rebuilt at the end (also on error)."""
        dv = self.diffusion_views
        before = dv.generated
        try:
            return super().eval(exp_list, **kwargs)
        finally:
            dv.flush()
            _log.info("DiffTPT: %d diffusion images generated, cache %s", dv.generated - before, dv.cache.dir)


def _image_size(clip) -> int:
    size = getattr(getattr(clip, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
