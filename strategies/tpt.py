"""TPT: test-time prompt tuning of CLIP (Shu et al., NeurIPS 2022, arXiv 2209.07511), exact and fast.

Reference: azshue/TPT@63ecbace (MIT) ``tpt_classification.py:{main_worker, test_time_tuning,
test_time_adapt_eval}``, re-implemented; no code copied.
Per test sample (an episode): reset the context to ``ctx0`` and a fresh AdamW; encode the N views; keep the
``int(N * p)`` lowest-entropy views (selected once, at step 1); ``tta_steps`` AdamW steps on the marginal entropy
of their mean prediction; predict from view 0 alone with the tuned context.

``PromptTuner`` (the engine, ``ctta/clip_prompting/episode_tuner.py``, re-exported here) is the script-level API (no
Avalanche objects); ``TPT`` wraps it as an Avalanche strategy on ``TestTimeTemplate``. ``TPTConfig(fast=False)``
runs the straightforward path (77-token text, views re-encoded at every step and for the prediction, one sample at a
time, torch's AdamW), the reference's computation. The default fast path gives the same predictions with the exact
speed-ups: text truncated at the longest EOT in length buckets with SOS + context encoded once
(shared prefix), view features encoded once per sample, zero-shot text features ``T0`` precomputed per class set
(step-1 selection needs no text pass), the step-1 text backward run on one retained forward at ``ctx0`` (shared by
every sample), or the 1-step Jacobian method, and batched episodes with stacked per-sample contexts.

Deviations from the reference code:
- View generation lives in the scenario (``scenarios/test_time.py``), so ``n_views``/``augmentation`` are scenario
  options; ``ctta.data.tta_views.make_views`` builds views for scripts.
- ``grad_scaler="auto"`` (default) = the reference's shared scaler when AMP is fp16 (CUDA), none in fp32 (CPU, where
  the reference's ``torch.cuda.amp.GradScaler`` is disabled).
- ``init="cocoop"`` is not provided (the authors' CoCoOp weights are unreleased).
- The zero-shot baseline is ``tta_steps=0`` (view 0, the hand-written prompt); the 80-template "Ensemble" baseline is
  not provided.
- Selection sorts entropies stably; the reference's crash paths (``prompt_learner[0]``) are not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctta.clip_prompting.episode_tuner import PromptTuner, PromptTuningConfig, SelectFn, TPTModel
from ctta.metrics import TopKAccuracy
from ctta.registry import STRATEGIES
from ctta.templates.prompt_tuning import PromptTuningTemplate

__all__ = ["TPTConfig", "PromptTuner", "TPTModel", "TPT", "TopKAccuracy", "SelectFn"]


@dataclass(frozen=True)
class TPTConfig(PromptTuningConfig):
    """TPT settings: every field of ``ctta.clip_prompting.episode_config.PromptTuningConfig``, at the reference's
    defaults (azshue/TPT@63ecbace: context "a photo of a", 1 AdamW step at lr 5e-3, 10 % lowest-entropy views)."""


@STRATEGIES.register("tpt", config=TPTConfig)
class TPT(PromptTuningTemplate):
    """TPT as an Avalanche strategy: ``eval(exp)`` tunes and predicts every test sample (``mb_x`` = views).

    Mini-batches are ``(B, N, 3, H, W)`` views (the ``test_time`` scenario); ``B = episode_batch``. Episodic mode
    resets the context after every sample (the paper's setting); continual mode (``episodic=False``) keeps the
    context and its AdamW state across the stream.
    """
