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

Cross-sample mixing (``mix``, the official trainer's ablations; ``wccm`` stays the default, the released run):
``mixup`` mixes images ``lam x + (1 - lam) x[i]``, ``manimix`` normalised image features (``norm(lam f + (1 - lam)
f[i])``), ``geomix`` slerps them on the sphere with the official weighting (``(sin(lam theta) a + sin((1 - lam) theta)
b) / sin(theta)``); partners ``i`` are the reversed batch re-paired until no pair shares a label, so ID images mix with
negative-label images (cross-distribution) when both are in the batch. Loss = CE of the clean logits + soft CE of
the mixed logits against ``lam onehot(y) + (1 - lam) onehot(y[i])`` (the official target with ``beta = 0``).

Training images: the ID train experience, plus images of the negative labels retrieved from a user folder
(``negative_images``: ``<folder>/<label>/*.{jpg,png,...}``, one folder per label; labels without a folder get no
images). Deviations: the paper's label-driven ID images (text-to-image synthesis / retrieval by class name) are
replaced by the scenario's real few-shot ID images; negative-label images may also be generated
(``negative_generate`` per label, ``ctta.diffusion``'s cached text-to-image pipeline, prompt "a photo of a {}.": the
paper's synthesis settings are not released); for the cross-sample mixes the official trainer's ``multice`` loss
(read at 4d888ff) reads ``logits_all``, set only by its ``wccm`` branches, so we use its (commented-out) sum of soft
CEs over the clean and mixed logits with weights 1; ``beta`` (mixed samples pushed towards an OOD label) is fixed at
the released 0; the pairing gives up after 100 rounds (a single-label batch keeps same-label pairs, where the
official loop never ends) and ``geomix`` falls back to ``manimix`` for pairs at angle ~0 (the official code divides
by zero there); the other mixes (cutmix, cross_dis, manimixrev, the ``*_wccm`` and ``*_cccm`` combinations) and
losses (binaryce, entropy, textentropy, textmultice, abscos) are not provided; ``lam``, the templates and the
pairing come from the run's global RNG seeded by the runner, the grouped score from its own seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ctta.clip_prompting.context import ContextConfig
from ctta.clip_prompting.ood import NegPromptModel, OODPromptLearnerTemplate, mine_for
from ctta.clip_prompting.prompt_templates import TIP_TEMPLATES  # the ``wccm`` mixing's frozen template bank
from ctta.clip_prompting.teacher import FrozenCLIPTeacher
from ctta.clip_prompting.template import init_generator
from ctta.clip_prompting.text import PromptedText
from ctta.clip_prompting.vision import encode_image
from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ctta.diffusion import TextToImageConfig, generate_label_images
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["LAPT", "LAPTConfig", "LAPTModel", "TIP_TEMPLATES", "geomix", "manimix", "mixed_soft_labels", "mixup_pairs",
           "negative_image_items", "wccm_logits", "wccm_loss"]

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
    mix: Literal["wccm", "mixup", "manimix", "geomix"] = "wccm"  # wccm: the released run; others: the ablations
    negative_generate: int = ranged(0, ge=0)  # images generated per training negative (text-to-image, cached)
    generate_model: str = TextToImageConfig.model  # a StableDiffusionPipeline hub id, or "tiny-random"
    generate_steps: int = ranged(50, ge=1)
    generate_cache_dir: str = TextToImageConfig.cache_dir


def wccm_logits(f: torch.Tensor, t: torch.Tensor, g: torch.Tensor, lam: float, scale) -> torch.Tensor:
    """Within-class cross-modal mixing: image features ``f`` (B, E), same-label template features ``t`` (B, E),
    learned prompt features ``g`` (K, E) -> ``scale * cos(norm(lam norm(f) + (1 - lam) norm(t)), g)`` (B, K)."""
    m = F.normalize(lam * F.normalize(f, dim=-1) + (1 - lam) * F.normalize(t, dim=-1), dim=-1)
    return scale * m @ F.normalize(g, dim=-1).t()


def wccm_loss(f: torch.Tensor, t: torch.Tensor, g: torch.Tensor, y: torch.Tensor, lam: float, scale) -> torch.Tensor:
    """LAPT's training loss (``wccm`` + ``multice``): CE of ``wccm_logits`` against labels ``y`` (B,) in 0..K-1."""
    return F.cross_entropy(wccm_logits(f, t, g, lam, scale), y)


def mixup_pairs(y: torch.Tensor, max_rounds: int = 100) -> torch.Tensor:
    """Partner index of each sample for the cross-sample mixes: the reversed batch, then samples paired with their
    own label are re-paired with the partner of a random other position until no pair shares a label (at most
    ``max_rounds`` rounds: a batch of a single label keeps same-label pairs; the official loop never ends there)."""
    index = torch.arange(len(y) - 1, -1, -1, device=y.device)
    for _ in range(max_rounds):
        same = y == y[index]
        if not same.any():
            break
        index[same] = index[torch.randperm(len(y), device=y.device)[same]]
    return index


def manimix(f: torch.Tensor, index: torch.Tensor, lam: float) -> torch.Tensor:
    """Manifold mixup of normalised features: ``norm(lam f + (1 - lam) f[index])``."""
    return F.normalize(lam * f + (1 - lam) * f[index], dim=-1)


def geomix(f: torch.Tensor, index: torch.Tensor, lam: float) -> torch.Tensor:
    """Geodesic mixing on the sphere (slerp) of normalised features ``a = f``, ``b = f[index]`` at angle ``theta``:
    ``(sin(lam theta) a + sin((1 - lam) theta) b) / sin(theta)``, the official weighting (``lam = 1`` gives ``a``);
    pairs at angle ~0 (where the official code divides by zero) fall back to ``manimix``."""
    a, b = f, f[index]
    theta = torch.acos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    sin = torch.sin(theta)
    out = (torch.sin(lam * theta) * a + torch.sin((1 - lam) * theta) * b) / sin
    return torch.where(sin > 1e-6, out, manimix(f, index, lam))


def mixed_soft_labels(y: torch.Tensor, index: torch.Tensor, lam: float, n_classes: int) -> torch.Tensor:
    """The official mixed target with ``beta = 0`` (the released run): ``lam onehot(y) + (1 - lam)
    onehot(y[index])`` over ``n_classes`` (ID classes + training negatives)."""
    onehot = F.one_hot(y, n_classes).float()
    return lam * onehot + (1 - lam) * onehot[index]


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
        negatives, train_negatives = mine_for(clip_model, tokenizer, classnames, cfg,
                                              (cfg.n_negatives, cfg.n_negatives_train))  # fmt: skip
        return LAPTModel(clip_model, tokenizer, classnames, cfg, negatives, train_negatives,
                         generator=init_generator(cfg))  # fmt: skip

    def train_dataset_adaptation(self, **kwargs) -> None:
        super().train_dataset_adaptation(**kwargs)
        negatives, offset = self.model.train_negatives, len(self.model.classnames)
        items = negative_image_items(self.cfg.negative_images, negatives, offset) if self.cfg.negative_images else []
        if self.cfg.negative_generate:
            items += negative_image_items(self._generated_negatives(), negatives, offset)
        if items:
            size = int(self.model.clip.visual.image_size[0])
            self.adapted_dataset = self.adapted_dataset.concat(_negative_dataset(items, size))

    def _generated_negatives(self) -> Path:
        """The cache folder of ``negative_generate`` text-to-image images per training negative (generated once)."""
        cfg = TextToImageConfig(model=self.cfg.generate_model, images_per_label=self.cfg.negative_generate,
                                num_inference_steps=self.cfg.generate_steps, cache_dir=self.cfg.generate_cache_dir)
        return generate_label_images(self.model.train_negatives, cfg, self.device)

    def forward_train(self) -> torch.Tensor:
        """Training logits over the ID and training-negative prompts: ``wccm`` mixed logits (labels of the mini-batch
        pick the templates); for the cross-sample mixes the clean logits (their mixed logits and soft labels are kept
        for ``criterion``)."""
        self._mixed = None
        x = self.mb_x.half() if self.prec == "fp16" and self.device.type == "cuda" else self.mb_x
        if self.cfg.mix != "wccm":
            return self._forward_cross_sample(x)
        f = encode_image(self.model.clip, x).float()  # (B, E)
        pick = torch.randint(len(TIP_TEMPLATES), (len(self.mb_y),)).to(self.mb_y.device)
        t = self.model.bank[pick, self.mb_y].float()  # (B, E) a random template of each sample's own label
        lam = float(torch.distributions.Beta(self.cfg.alpha, self.cfg.alpha).sample())
        g = self.model.training_text_features().float()  # (C + M, E)
        return wccm_logits(f, t, g, lam, self.model.logit_scale.float())

    def _forward_cross_sample(self, x: torch.Tensor) -> torch.Tensor:
        """``mixup`` (images), ``manimix`` / ``geomix`` (normalised image features) between samples of different
        labels (ID x negative-label pairs included); returns the clean logits, keeps ``(mixed logits, soft labels)``."""
        y, n = self.mb_y, len(self.mb_y)
        lam = float(torch.distributions.Beta(self.cfg.alpha, self.cfg.alpha).sample())
        index = mixup_pairs(y)
        if self.cfg.mix == "mixup":
            both = encode_image(self.model.clip, torch.cat([x, lam * x + (1 - lam) * x[index]])).float()
            f, mixed = F.normalize(both, dim=-1).split(n)
        else:
            f = F.normalize(encode_image(self.model.clip, x).float(), dim=-1)
            mixed = (manimix if self.cfg.mix == "manimix" else geomix)(f, index, lam)
        g = F.normalize(self.model.training_text_features().float(), dim=-1)  # (C + M, E)
        scale = self.model.logit_scale.float()
        self._mixed = (scale * mixed @ g.t(), mixed_soft_labels(y, index, lam, len(g)))
        return scale * f @ g.t()

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return super().criterion()
        loss = F.cross_entropy(self.mb_output, self.mb_y)
        if getattr(self, "_mixed", None) is not None:  # cross-sample mixes: + soft CE of the mixed samples
            loss = loss + F.cross_entropy(*self._mixed)
        return loss

    def ood_score(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.model.negative_score(image_features, text_features, self.cfg.groups, self.cfg.group_seed)
