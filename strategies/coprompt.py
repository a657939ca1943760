"""CoPrompt: consistency-guided prompt learning (Roy & Etemad, "Consistency-guided Prompt Learning for
Vision-Language Models", ICLR 2024, arXiv 2306.01195). Official code: ShuvenduRoy/CoPrompt@a2a6c12
``trainers/coprompt.py``, ``trainers/constants.py``, ``train.py`` (MIT; behaviour read, re-implemented on ctta's
prompting core, no code copied; spec ``clip-prompt-learners.md`` sections 4, 23.1).

Model: MaPLe's compound prompts (``ctta.clip_prompting.compound``: context, J-1 deep text prompts, linear couplings
to the vision tower) plus two bottleneck adapters on the joint embedding
(``ctta.clip_prompting.adapters``), mixed as ``0.1 * A_img(f) + 0.9 * f`` and ``0.2 * A_txt(g) + 0.8 * g``, then
normalised; logits ``scale * f @ g.T``. Each training image comes as two independently augmented views (``TwoViews``):
view 1 feeds the prompted model, view 2 only the frozen CLIP image tower. Loss::

    CE + w * [(1 - mean_c cos(g_c, t_c^(r))) + (1 - mean_b cos(f_b, frozen(x2_b)))]

with ``t^(r)`` one description bank row per step (``r = random.randint(0, D - 1)`` from Python's ``random``, shared
by every class) of the per-index bank of the LLM descriptions (``gpt_file/<stem>_prompt.json``, encoded verbatim).
``distill: mse`` gives the reference's other option (``mse_loss`` on the same features). The teacher is unused at
inference. Defaults: the official ``coprompt.yaml`` (SGD lr 0.0035, batch 4, 8 epochs, n_ctx 2, J 9, w 1.0) and then,
as ``train.py`` merges it after everything else, the per-dataset table of ``trainers/constants.py`` for ``dataset``
(``DATASET_TABLE``: J, n_ctx, w, and Food101's 5 epochs). ``dataset_table: false`` lets the config's values stand
(non-official). Context init: the first ``n_ctx`` words of "a photo of a" when ``n_ctx`` <= its word count (the text
keeps the whole phrase), else N(0, 0.02^2).

Trainable parameters on ViT-B/16 (``tests/test_coprompt.py``): 3,817,216 at the yaml defaults (MaPLe's published
3.55M = 3,555,072, plus 2 x 131,072 adapter weights); with the table: 5,014,528 (J 12, n_ctx 4: ImageNet, Caltech101,
Cars, SUN397, UCF101), 5,002,240 (J 12, n_ctx 2: Pets, DTD, EuroSAT), 3,826,432 (J 9, n_ctx 4: Flowers, Food101,
Aircraft). No published count was found to compare with (spec section 4 lists none).

Deviations: the reference's random crop-free RandAugment train transform is the scenario's (two views of whatever
train transform the benchmark has); the teacher shares the frozen backbone (the reference builds a second CLIP:
same weights) and the description bank is computed lazily, when the loss first needs it for a class set; J larger
than the towers' depth is refused (the reference builds and never uses the surplus); CPU, fp32 and amp work; text
truncated at the longest EOT with the shared prefix encoded once (exact; ``truncate: false`` is the 77-token path);
adapter parameters are named ``adapter_{image,text}.module.fc.{0,2}.weight``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils.transforms import MultiParamTransform

from ctta.clip_prompting.adapters import BottleneckAdapter, ResidualMix
from ctta.clip_prompting.compound import CompoundPromptedCLIP
from ctta.clip_prompting.descriptions import DescriptionBank, load_descriptions
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.losses import cosine_consistency
from ctta.registry import STRATEGIES

__all__ = ["DATASET_TABLE", "CoPrompt", "CoPromptConfig", "CoPromptModel", "TwoViews", "apply_dataset_table"]

#: ``trainers/constants.py``: dataset -> (J, n_ctx, w[, epochs]); merged last by the reference's ``setup_cfg``
DATASET_TABLE: dict[str, tuple] = {
    "imagenet": (12, 4, 8.0), "caltech101": (12, 4, 4.0), "oxford_pets": (12, 2, 0.1), "stanford_cars": (12, 4, 4.0),
    "oxford_flowers": (9, 4, 8.0), "food101": (9, 4, 0.5, 5), "fgvc_aircraft": (9, 4, 2.0), "sun397": (12, 4, 8.0),
    "dtd": (12, 2, 8.0), "eurosat": (12, 2, 0.1), "ucf101": (12, 4, 2.0),
}  # fmt: skip


@dataclass(frozen=True)
class CoPromptConfig(PromptLearnerConfig):
    """CoPrompt settings (official ``coprompt.yaml``; the per-dataset table applies on top, see the module notes)."""

    epochs: int = ranged(8, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0035, gt=0)
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9  # J: the input layer plus J-1 deep layers (both towers)
    w: float = 1.0  # weight of the two consistency terms
    image_mix: float = 0.1  # adapter mix ratio, image
    text_mix: float = 0.2  # adapter mix ratio, text
    adapter_reduction: int = 4
    distill: str = "cosine"  # cosine | mse
    descriptions: str = ""  # gpt_file JSON, or a folder with the official layout, or builtin:digits
    dataset: str = ""  # catalogue name: the table row and the official file name inside a descriptions folder
    dataset_table: bool = True  # the official per-dataset (J, n_ctx, w, epochs) override, merged last


def apply_dataset_table(cfg: CoPromptConfig) -> CoPromptConfig:
    """``cfg`` with the table row of ``cfg.dataset`` over it (unchanged without a row or with ``dataset_table``
    off): the reference's precedence, the table over the yaml files and the command line."""
    row = DATASET_TABLE.get(cfg.dataset) if cfg.dataset_table else None
    if row is None:
        return cfg
    over = dict(depth=row[0], n_ctx=row[1], w=row[2])
    if len(row) > 3:
        over["epochs"] = row[3]
    return dataclasses.replace(cfg, **over)


class CoPromptModel(CompoundPromptedCLIP):
    """MaPLe's prompts (``ctx``, ``deep_text``, ``coupling``) + ``adapter_image`` / ``adapter_text`` (``ResidualMix``
    of a ``BottleneckAdapter``) and the description ``teacher`` (per-index bank). Training forwards keep the
    normalised features in ``self.features``."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: CoPromptConfig, *, generator=None) -> None:
        if cfg.distill not in ("cosine", "mse"):
            raise ValueError(f"distill={cfg.distill!r}; valid: cosine, mse")
        if not cfg.descriptions:
            raise ValueError("CoPrompt needs class descriptions: set descriptions= to the gpt_file JSON (official: "
                             "ShuvenduRoy/CoPrompt gpt_file/<stem>_prompt.json) or builtin:digits")
        texts = load_descriptions(cfg.descriptions, "coprompt", cfg.dataset)
        init = cfg.ctx_init if cfg.n_ctx <= len(cfg.ctx_init.split()) else ""  # beyond the phrase: random
        super().__init__(
            clip_model, tokenizer, classnames, n_ctx=cfg.n_ctx, ctx_init=init, depth=cfg.depth,
            truncate=cfg.truncate, round_prompts=cfg.round_prompts, generator=generator,
        )  # fmt: skip
        dim = clip_model.text_projection.shape[-1]
        self.adapter_image = ResidualMix(BottleneckAdapter(dim, cfg.adapter_reduction, generator=generator),
                                         cfg.image_mix)  # fmt: skip
        self.adapter_text = ResidualMix(BottleneckAdapter(dim, cfg.adapter_reduction, generator=generator),
                                        cfg.text_mix)  # fmt: skip
        self.teacher = DescriptionBank(clip_model, tokenizer, texts, classnames, reduce="index")
        self.features: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ctx, deep, v0, vs = self.prompts()
        g = F.normalize(self.adapter_text(self.text(ctx, deep)), dim=-1)  # (C, E)
        f = encode_image(self.clip, images, v0, vs, round_prompts=self.round_prompts)
        f = F.normalize(self.adapter_image(f), dim=-1)  # (B, E)
        if self.training:
            self.features = {"text": g, "image": f}
        return self.logit_scale * f @ g.t()

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen (unprompted) CLIP's normalised image features ``(B, E)``."""
        return F.normalize(encode_image(self.clip, images).float(), dim=-1)


def coprompt_consistency(model: CoPromptModel, view2: torch.Tensor, distill: str = "cosine") -> torch.Tensor:
    """``text + image`` consistency of the last training forward: one random description row for every class
    (Python's ``random``), the frozen image features of ``view2``."""
    bank = model.teacher.features_for(model.classnames)  # (D, C, E), normalised rows
    t_text = bank[random.randint(0, bank.shape[0] - 1)]
    t_image = model.frozen_image_features(view2)
    g, f = model.features["text"], model.features["image"]
    if distill == "cosine":
        return cosine_consistency(g, t_text) + cosine_consistency(f, t_image)
    return F.mse_loss(g, t_text.to(g.dtype)) + F.mse_loss(f, t_image.to(f.dtype))


class TwoViews(MultiParamTransform):
    """Dassl's ``K_TRANSFORMS 2``: the whole train transform run twice, independently, on the same sample; the
    image becomes ``(2, C, H, W)`` (view 1, view 2), the other elements come from the first run."""

    def __init__(self, inner: MultiParamTransform | None) -> None:
        self.inner = inner

    def __call__(self, *args):
        if self.inner is None:
            return [torch.stack([args[0], args[0]]), *args[1:]]
        a, b = self.inner(*args), self.inner(*args)
        return [torch.stack([a[0], b[0]]), *a[1:]]

    def flat_transforms(self, position: int):
        return [] if self.inner is None else self.inner.flat_transforms(position)


@STRATEGIES.register("coprompt", config=CoPromptConfig)
class CoPrompt(PromptLearnerTemplate):
    """CoPrompt as an Avalanche strategy: ``model`` is a ``CoPromptModel``; training batches carry two views per
    image; CE + ``w`` * (text + image) consistency, SGD over the prompts, couplings and adapters."""

    config_class = CoPromptConfig

    @classmethod
    def resolve_config(cls, config, method_kwargs, extra_valid=()):
        return apply_dataset_table(super().resolve_config(config, method_kwargs, extra_valid))

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: CoPromptConfig) -> CoPromptModel:
        return CoPromptModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def train_dataset_adaptation(self, **kwargs) -> None:
        super().train_dataset_adaptation(**kwargs)
        groups = self.adapted_dataset._flat_data._transform_groups  # Avalanche's current transform group
        inner = groups.transform_groups.get(groups.current_group) if groups is not None else None
        self.adapted_dataset = self.adapted_dataset.replace_current_transform_group(TwoViews(inner))

    def _unpack_minibatch(self) -> None:
        super()._unpack_minibatch()
        x = self.mbatch[0]
        self.mb_x2 = None
        if self.is_training and x.dim() == 5:  # (B, 2, C, H, W): view 1 is the batch, view 2 the teacher's
            self.mbatch[0], self.mb_x2 = x[:, 0], x[:, 1]

    def criterion(self) -> torch.Tensor:
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training:
            return ce
        view2 = self.mb_x2 if self.mb_x2 is not None else self.mb_x
        return ce + self.cfg.w * coprompt_consistency(self.model, view2, self.cfg.distill)
