"""The CLIP prompt-learner core shared by CoOp, CoCoOp, MaPLe, PromptSRC, PRE and ATPrompt.

* ``text``: ``PromptedText``, the prompted text tower (soft-token layouts, class-token position, class-specific
  and per-image contexts, deep prompts, exact truncation and shared-prefix encoding);
* ``vision``: ``encode_image`` with appended vision prompts and deep vision prompts;
* ``coupling``: MaPLe's per-layer linear maps, CoCoOp's meta-net;
* ``teacher``: a frozen-CLIP teacher (hand-crafted / template-ensemble text features, frozen image features);
* ``averaging``: Gaussian epoch weight averaging (PromptSRC's GPA);
* ``optim``: SGD and the warm-up + cosine per-epoch schedule of the Dassl-based references;
* ``model``: ``PromptedCLIP``, the frozen CLIP + prompted text tower every method's model extends, and the text
  context export TPT starts from;
* ``template``: ``PromptLearnerTemplate``, the Avalanche template of the family on ctta's ``EpochTemplate`` (schedule,
  precision switch, base/new and class-incremental text heads);
* ``metrics``: base / new accuracy and their harmonic mean; ``prompt_templates``: the teachers' template lists.

Methods (``ctta.strategies``): ``coop``, ``cocoop``, ``maple``, ``promptsrc``, ``pre``, ``coop_atp``, ``maple_atp``.
"""

from ctta.clip_prompting.averaging import GaussianEpochAverage, gaussian_epoch_weights
from ctta.clip_prompting.coupling import MaPLeCoupling, MetaNet
from ctta.clip_prompting.optim import epoch_lr, make_sgd, warmup_cosine
from ctta.clip_prompting.teacher import HAND_CRAFTED, FrozenCLIPTeacher
from ctta.clip_prompting.text import PromptedText, encode_words
from ctta.clip_prompting.vision import encode_image, vision_width

__all__ = [
    "HAND_CRAFTED",
    "FrozenCLIPTeacher",
    "GaussianEpochAverage",
    "MaPLeCoupling",
    "MetaNet",
    "PromptedText",
    "encode_image",
    "encode_words",
    "epoch_lr",
    "gaussian_epoch_weights",
    "make_sgd",
    "vision_width",
    "warmup_cosine",
]
