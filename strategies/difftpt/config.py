"""DiffTPT settings (``difftpt`` strategy): the prompt-tuning engine's fields plus the view filtration and generator."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctta.strategies.difftpt.diffusion import DiffusionConfig

from ctta.clip_prompting.episode_tuner import PromptTuningConfig


@dataclass(frozen=True)
class DiffTPTConfig(PromptTuningConfig):
    """DiffTPT settings: TPT's fields (``tta_steps`` defaults to 4) plus the filtration and the generator.

    Attributes:
        n_diffusion_views: diffusion views per sample, placed last (reference 63).
        selection_cosine: fraction of the non-original views kept by cosine similarity to view 0 (0.8).
        selection_selfentro: fraction of the kept views used for the loss, lowest entropy first (0.3).
        cosine_space: ``logits`` (reference code) | ``image_features`` (paper text).
        filter_scope: ``pooled`` (reference code) | ``split`` (paper reading, see module docstring).
        diffusion_source: ``view0`` (the diffusion views of each sample's view 0, generated or read from the view
            cache) | ``auto`` (the same; kept for existing configs). No ctta scenario carries pre-generated diffusion
            views, so there is no ``stream`` source.
        diffusion: generation and cache settings (``ctta.strategies.difftpt.diffusion.DiffusionConfig``).
    """

    tta_steps: int = 4
    n_diffusion_views: int = 63
    selection_cosine: float = 0.8
    selection_selfentro: float = 0.3
    cosine_space: str = "logits"
    filter_scope: str = "pooled"
    diffusion_source: str = "auto"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = {
            "cosine_space": (self.cosine_space, ("logits", "image_features")),
            "filter_scope": (self.filter_scope, ("pooled", "split")),
            "diffusion_source": (self.diffusion_source, ("auto", "view0")),
        }
        if self.diffusion_source == "stream":
            raise ValueError(
                "DiffTPTConfig.diffusion_source='stream' is not supported: no scenario carries pre-generated diffusion "
                "views; use 'view0' (views generated from each sample's view 0 and cached under "
                "strategy.diffusion.cache_dir; pre-generate them with `ctta generate`, then runs read the cache)"
            )
        for key, (val, valid) in checks.items():
            if val not in valid:
                raise ValueError(f"DiffTPTConfig.{key}={val!r}; valid: {list(valid)}")
        if self.n_diffusion_views < 1:
            raise ValueError(f"DiffTPTConfig.n_diffusion_views must be >= 1, got {self.n_diffusion_views}")
        for key in ("selection_cosine", "selection_selfentro"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ValueError(f"DiffTPTConfig.{key} must be in (0, 1], got {getattr(self, key)}")
