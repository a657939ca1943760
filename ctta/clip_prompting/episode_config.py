"""Settings of the episodic test-time prompt tuner (``ctta.clip_prompting.episode_tuner.PromptTuner``; TPT, DiffTPT).

Paper: TPT (Shu et al., NeurIPS 2022, arXiv 2209.07511). Reference: azshue/TPT@63ecbace ``tpt_classification.py``
(argument defaults), re-implemented; no code copied. Deviations: see ``episode_tuner``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctta.fields import ranged

__all__ = ["PromptTuningConfig"]


@dataclass(frozen=True)
class PromptTuningConfig:
    """Settings of the prompt-tuning engine (TPT, DiffTPT); defaults are TPT's reference values (azshue/TPT@63ecbace).

    Attributes:
        ctx_init: initial context phrase (its word count sets ``n_ctx``); "" = ``n_ctx`` random vectors.
        n_ctx: context length for random init.
        lr, weight_decay, betas, eps: AdamW, reset per sample.
        tta_steps: optimiser steps per sample (0 = zero-shot CLIP on view 0 with the hand-written prompt).
        selection_p: fraction of lowest-entropy views kept (64 views -> 6).
        amp: ``auto`` (fp16 autocast on CUDA, fp32 on CPU) | ``fp16`` | ``bf16`` | ``off``.
        grad_scaler: ``auto`` (``shared`` under fp16, else ``none``) | ``shared`` | ``fixed`` | ``none``.
        init_scale: initial loss scale (1000 as the reference).
        episodic: reset the context after every sample (False = continual TTA, a ctta extension).
        init: ``text`` (from ``ctx_init``), ``coop:<path>`` (a CoOp checkpoint's ``ctx``) or ``prompts:<path>``
            (a ``save_prompts`` file loaded into the prompted model handed to ``PromptTuner.from_prompted``).
        fast: False runs the straightforward reference computation (all switches below ignored).
        text_truncation: ``bucket`` | ``longest`` | ``none``; n_buckets: maximum length buckets.
        shared_prefix: encode SOS + context once per context instead of once per class (exact).
        cache_view_features: encode the views once per sample.
        step1_graph: at step 1 back-propagate through one retained text forward at ``ctx0`` shared by all samples.
        text_grad: ``auto`` | ``backward`` | ``jacobian`` (1 step, episodic only; ``auto`` uses it when the
            expected number of samples exceeds ``jacobian_min_ratio`` x E and J fits ``jacobian_max_gb``).
        episode_batch: samples tuned together (stacked contexts); also the strategy's eval mini-batch size.
        log_selected: keep the selected view indices of every sample (``TPT.selected``).
    """

    ctx_init: str = "a photo of a"
    n_ctx: int = 4
    lr: float = ranged(5e-3, gt=0)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    tta_steps: int = 1
    selection_p: float = 0.1
    amp: str = "auto"
    grad_scaler: str = "auto"
    init_scale: float = 1000.0
    episodic: bool = True
    init: str = "text"
    fast: bool = True
    text_truncation: str = "bucket"
    n_buckets: int = 4
    shared_prefix: bool = True
    cache_view_features: bool = True
    step1_graph: bool = True
    text_grad: str = "auto"
    jacobian_max_gb: float = 4.0
    jacobian_min_ratio: float = 2.0
    episode_batch: int = 1
    log_selected: bool = False

    def __post_init__(self) -> None:
        checks = {
            "amp": (self.amp, ("auto", "fp16", "bf16", "off")),
            "grad_scaler": (self.grad_scaler, ("auto", "shared", "fixed", "none")),
            "text_truncation": (self.text_truncation, ("bucket", "longest", "none")),
            "text_grad": (self.text_grad, ("auto", "backward", "jacobian")),
        }
        for key, (val, valid) in checks.items():
            if val not in valid:
                raise ValueError(f"{type(self).__name__}.{key}={val!r}; valid: {list(valid)}")
        if self.tta_steps < 0 or self.episode_batch < 1 or self.n_buckets < 1:
            raise ValueError("need tta_steps >= 0 (0 = zero-shot CLIP), episode_batch >= 1 and n_buckets >= 1")
        if not (self.init == "text" or self.init.startswith(("coop:", "prompts:"))):
            raise ValueError(
                f"{type(self).__name__}.init={self.init!r}; valid: 'text', 'coop:<path to CoOp checkpoint>' or "
                "'prompts:<path written by save_prompts>' (with a prompted model)"
            )
        if self.text_grad == "jacobian" and (self.tta_steps != 1 or not self.episodic):
            raise ValueError("text_grad='jacobian' needs tta_steps=1 and episodic=True (J is taken at ctx0)")
