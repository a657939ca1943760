"""The one CLIP prompting core: the prompted CLIP every CLIP method builds on, and test-time tuning of it.

* ``text``: ``PromptedText``, the one prompted text tower (soft-token layouts, class-token position, class-specific
  and per-image contexts, deep prompts); every exactness argument (truncation, buckets, shared prefix) is in its
  docstring and tested in ``tests/test_clip_prompted_text.py``; ``tower``: the mechanics under it (open_clip's
  text modules, the bucket plan, the shared-prefix residual block);
* ``vision``: ``encode_image`` with appended vision prompts and deep vision prompts;
* ``coupling``: MaPLe's per-layer linear maps, CoCoOp's meta-net;
* ``model``: ``PromptedCLIP``, the frozen CLIP + prompted text tower every method's model extends, ``clip_parts``
  (the one way to unpack a CLIP backbone) and the text-context export TPT starts from;
* ``context``: the shared-context model of CoOp and PRE;
* ``episode_tuner`` / ``episode_model`` / ``episode_optim`` / ``episode_config``: the episodic test-time tuner
  (TPT, DiffTPT) of a CoOp context or of any trained ``PromptedCLIP`` handed over as an object, what it tunes and
  the files it starts from, its batched AdamW / loss scaler / text Jacobian, its settings;
* ``teacher``: a frozen-CLIP teacher (hand-crafted / template-ensemble text features, frozen image features); kept
  in the core because wave 2's CoPrompt, HiCroPL and MSGCoOp use it too (PromptSRC's Gaussian averaging, templates
  and consistency loss live in ``ctta.strategies.promptsrc``);
* ``descriptions``: per-class LLM description files in the official formats (CoPrompt's / HiCroPL's ``gpt_file``
  JSON, MSGCoOp's description JSON) and ``DescriptionBank``, the frozen-CLIP text classifier built from them (mean
  and per-index banks); ``adapters``: CoPrompt's bottleneck adapters, RESTORE's FFN calibrators and ``ResidualMix``
  (their mix ratio); ``compound``: MaPLe's compound prompts on the prompted CLIP (CoPrompt; RESTORE and MaPLe
  set up the same); wave 2 (CoPrompt, HiCroPL, MSGCoOp, RESTORE);
* ``optim``: SGD and the warm-up + cosine per-epoch schedule of the Dassl-based references;
* ``template``: ``PromptLearnerTemplate``, the Avalanche template of the family on ctta's ``EpochTemplate`` (schedule,
  precision switch, base/new and class-incremental text heads);
* ``metrics``: base / new accuracy and their harmonic mean.

Methods (``ctta.strategies``): ``coop``, ``cocoop``, ``maple``, ``promptsrc``, ``pre``, ``coop_atp``, ``maple_atp``,
``tpt``, ``difftpt``.
"""

from ctta.clip_prompting.adapters import BottleneckAdapter, FeatureCalibrator, ResidualMix
from ctta.clip_prompting.coupling import MaPLeCoupling, MetaNet
from ctta.clip_prompting.descriptions import DescriptionBank, load_descriptions
from ctta.clip_prompting.episode_model import load_prompts, save_prompts
from ctta.clip_prompting.model import PromptedCLIP, clip_parts, save_text_context
from ctta.clip_prompting.optim import epoch_lr, make_sgd, warmup_cosine
from ctta.clip_prompting.teacher import HAND_CRAFTED, FrozenCLIPTeacher
from ctta.clip_prompting.text import PromptedText, encode_words
from ctta.clip_prompting.vision import encode_image, vision_width

__all__ = [
    "HAND_CRAFTED",
    "BottleneckAdapter",
    "DescriptionBank",
    "FeatureCalibrator",
    "ResidualMix",
    "load_descriptions",
    "FrozenCLIPTeacher",
    "MaPLeCoupling",
    "MetaNet",
    "PromptedCLIP",
    "PromptedText",
    "clip_parts",
    "load_prompts",
    "save_prompts",
    "save_text_context",
    "encode_image",
    "encode_words",
    "epoch_lr",
    "make_sgd",
    "vision_width",
    "warmup_cosine",
]
