"""LAPT: label-driven automated prompt tuning for OOD detection (Zhang et al., ECCV 2024, arXiv 2407.08966).
Official code: YBZh/OpenOOD-VLM@804f331 (MIT; YBZh/LAPT@df5bc81 points there) ``openood/networks/
clip_coop_negprompt.py`` (``dis_aware`` prompts), ``openood/trainers/oodmixup_trainer.py`` (``wccm`` mixing,
``multice`` loss), ``openood/postprocessors/oneoodprompt_postprocessor.py`` (grouped score); behaviour read,
re-implemented, no code copied.

Model: CoOp context ``ctx`` for the C ID classes and a second context ``ood_ctx`` for the negative labels (mined as
NegLabel does, ``ctta.ood_scores``), prompts ``[SOS] ctx <name> . [EOT]``. Training (``wccm``, within-class
cross-modal mixing): for a batch with labels y in 0..C+M-1 (ID classes, then the ``n_negatives_train`` negative
labels), image features f, and for each sample the frozen text feature t of its own label under a random template
of the 7-template bank, ``m = norm(lam * norm(f) + (1 - lam) * norm(t))`` with ``lam ~ Beta(alpha, alpha)`` once per
batch; loss = CE of ``logit_scale * cos(m, g)`` over the C + M learned prompts (``multice``). Evaluation: ID logits
(accuracy) and NegLabel's grouped score over ``n_negatives`` labels with the learned ``ood_ctx``.

Training images: the ID train experience, plus images of the negative labels retrieved from a user folder
(``negative_images``: ``<folder>/<label>/*.{jpg,png,...}``, one folder per label; labels without a folder get no
images). Deviations: the paper's label-driven ID images (text-to-image synthesis / retrieval by class name) are
replaced by the scenario's real few-shot ID images; diffusion generation of negative-label images is not provided
(it needs DiffTPT's pipeline in the core); the cross-distribution mixing ablations (mixup, manimix, geomix) and the
other losses of the official trainer are not provided; ``lam`` and the templates come from the run's global RNG
seeded by the runner, the grouped score from its own seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ctta.clip_prompting.context import ContextConfig
from ctta.clip_prompting.ood import NegPromptModel, OODPromptLearnerTemplate, mine_for
from ctta.clip_prompting.teacher import FrozenCLIPTeacher
from ctta.clip_prompting.template import init_generator
from ctta.clip_prompting.text import PromptedText
from ctta.clip_prompting.vision import encode_image
from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["LAPT", "LAPTConfig", "LAPTModel", "TIP_TEMPLATES", "negative_image_items", "wccm_logits", "wccm_loss"]

#: the frozen template bank of the ``wccm`` mixing (the official "tip" templates)
TIP_TEMPLATES = ("a bad photo of the {}.", "a {} in a video game.", "a origami {}.", "a photo of the small {}.",
                 "art of the {}.", "a photo of the large {}.", "itap of a {}.")  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class LAPTConfig(ContextConfig):
    """LAPT settings (the released run: SGD lr 0.01, 10 epochs, no weight decay, 4 context tokens)."""

    epochs: int = ranged(10, ge=1)
    lr: float = ranged(0.01, gt=0)
    weight_decay: float = 0.0
    n_ctx: int = 4
    ctx_init: str = ""  # N(0, 0.02) contexts, as the released checkpoint
    alpha: float = ranged(1.0, gt=0)  # Beta(alpha, alpha) mixing weight
    n_negatives_train: int = ranged(1000, ge=1)
    n_negatives: int = ranged(10000, ge=1)  # test-time negatives (grouped score)
    groups: int = ranged(100, ge=1)
    group_seed: int = 0
    percentile: float = ranged(0.95, ge=0, le=1)
    wordnet: str = ""
    nouns: tuple[str, ...] = ()
    adjectives: tuple[str, ...] = ()
    negative_images: str = ""  # <folder>/<negative label>/*.jpg: retrieved images of the training negatives


def wccm_logits(f: torch.Tensor, t: torch.Tensor, g: torch.Tensor, lam: float, scale) -> torch.Tensor:
    """Within-class cross-modal mixing: image features ``f`` (B, E), same-label template features ``t`` (B, E),
    learned prompt features ``g`` (K, E) -> ``scale * cos(norm(lam norm(f) + (1 - lam) norm(t)), g)`` (B, K)."""
    m = F.normalize(lam * F.normalize(f, dim=-1) + (1 - lam) * F.normalize(t, dim=-1), dim=-1)
    return scale * m @ F.normalize(g, dim=-1).t()


def wccm_loss(f: torch.Tensor, t: torch.Tensor, g: torch.Tensor, y: torch.Tensor, lam: float, scale) -> torch.Tensor:
    """LAPT's training loss (``wccm`` + ``multice``): CE of ``wccm_logits`` against labels ``y`` (B,) in 0..K-1."""
    return F.cross_entropy(wccm_logits(f, t, g, lam, scale), y)


class LAPTModel(NegPromptModel):
    """ID context + ``ood_ctx``; ``train_text``: the training negatives' prompts; ``bank``: ``(T, C + M, E)`` frozen
    template features of the ID classes and training negatives."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: LAPTConfig, negatives, train_negatives, *,
                 generator=None) -> None:  # fmt: skip
        super().__init__(clip_model, tokenizer, classnames, cfg, negatives, separate_context=True, generator=generator)
        self.train_negatives = list(train_negatives)
        self.train_text = PromptedText(clip_model, tokenizer, self.train_negatives, self.text.layout,
                                       position=self.text.position, truncate=cfg.truncate)  # fmt: skip
        labels = [*self.classnames, *self.train_negatives]
        bank = [FrozenCLIPTeacher(clip_model, tokenizer, labels, (t,), round_embeddings=False).text_features
                for t in TIP_TEMPLATES]  # fmt: skip
        self.register_buffer("bank", torch.stack(bank), persistent=False)

    def training_text_features(self) -> torch.Tensor:
        """``(C + M_train, E)``: ID prompts with ``ctx``, training negatives with ``ood_ctx``."""
        return torch.cat([self.text_features(), self.train_text(self.ood_ctx)])


def negative_image_items(folder: str | Path, labels: list[str], offset: int) -> list[tuple[str, int]]:
    """``(path, offset + j)`` for the images in ``<folder>/<labels[j]>/`` (sorted; missing folders give none)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"negative_images: no folder {root} (expected <folder>/<negative label>/*.jpg)")
    items = []
    for j, label in enumerate(labels):
        d = root / label
        if d.is_dir():
            items += [(str(p), offset + j) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return items


def _negative_dataset(items: list[tuple[str, int]], img_size: int):
    """An Avalanche dataset of retrieved negative-label images (CLIP's train transform: random resized crop, flip)."""
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(img_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])

    class Images(torch.utils.data.Dataset):
        targets = [y for _, y in items]

        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            with open(items[i][0], "rb") as fh:
                return tf(Image.open(fh).convert("RGB")), items[i][1]

    ds = Images()
    return ClassificationDataset([ds], data_attributes=[DataAttribute(ds.targets, "targets")])


@STRATEGIES.register("lapt", config=LAPTConfig)
class LAPT(OODPromptLearnerTemplate):
    """LAPT as an Avalanche strategy: ``wccm`` training over ID + negative-label prompts, grouped negative score."""

    config_class = LAPTConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: LAPTConfig) -> LAPTModel:
        negatives = mine_for(clip_model, tokenizer, classnames, cfg, cfg.n_negatives)
        train_negatives = mine_for(clip_model, tokenizer, classnames, cfg, cfg.n_negatives_train)
        return LAPTModel(clip_model, tokenizer, classnames, cfg, negatives, train_negatives,
                         generator=init_generator(cfg))  # fmt: skip

    def train_dataset_adaptation(self, **kwargs) -> None:
        super().train_dataset_adaptation(**kwargs)
        if self.cfg.negative_images:
            items = negative_image_items(self.cfg.negative_images, self.model.train_negatives,
                                         len(self.model.classnames))  # fmt: skip
            if items:
                size = int(self.model.clip.visual.image_size[0])
                self.adapted_dataset = self.adapted_dataset.concat(_negative_dataset(items, size))

    def forward_train(self) -> torch.Tensor:
        """``wccm`` logits over the ID and training-negative prompts (labels of the mini-batch pick the templates)."""
        x = self.mb_x.half() if self.prec == "fp16" and self.device.type == "cuda" else self.mb_x
        f = encode_image(self.model.clip, x).float()  # (B, E)
        pick = torch.randint(len(TIP_TEMPLATES), (len(self.mb_y),)).to(self.mb_y.device)
        t = self.model.bank[pick, self.mb_y].float()  # (B, E) a random template of each sample's own label
        lam = float(torch.distributions.Beta(self.cfg.alpha, self.cfg.alpha).sample())
        g = self.model.training_text_features().float()  # (C + M, E)
        return wccm_logits(f, t, g, lam, self.model.logit_scale.float())

    def criterion(self) -> torch.Tensor:
        if self.is_training:
            return F.cross_entropy(self.mb_output, self.mb_y)
        return super().criterion()

    def ood_score(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.model.negative_score(image_features, text_features, self.cfg.groups, self.cfg.group_seed)
