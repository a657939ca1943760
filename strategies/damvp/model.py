"""DAM-VP model pieces: the feature phi(x) per backbone, the activity-aware read-out, per-dataset adapters.

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138).
Reference: shikiw/DAM-VP@dec5821 ``task_adapting/adapter.py`` (``get_active_neuron_index``, ``rep2logit``,
``get_prompted_image``), ``task_adapting/adapter_clip.py``, ``models/backbones/*`` (re-implemented, no code copied).

``DAMVPModel`` wraps a frozen backbone with: a ``Featurizer`` computing phi (final-LN CLS for vit-b-1k,
tanh(pre_logits(CLS)) for vit-b-22k, CLIP zero-shot logits for CLIP), a meta-prompt theta_meta, and one
``DatasetAdapter`` per downstream dataset (K cluster prompts, prototypes, read-out or head, global class ids),
so earlier datasets stay evaluable. Routing uses phi of the RAW image (no grad); the prompted image is
``x + p_{k*(x)}``; logits are phi(x~)[:, J] (head-freezing), ``head(phi(x~))`` (head-tuning) or phi(x~) (CLIP).

Deviations from the reference code: the per-sample prompt loop is vectorised (identical values); the CLIP logit
scale is the model's own ``logit_scale.exp()`` as in the reference (100 for OpenAI weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from ctta.strategies.damvp.clustering import route
from ctta.strategies.damvp.pixel import PadPromptBank, PadPrompter
from torch import nn

from ctta.data.normalization import Stats, clip_image_stats, renormalize

__all__ = [
    "BACKBONE_DEFAULTS",
    "BackboneDefaults",
    "DAMVPModel",
    "DatasetAdapter",
    "Featurizer",
    "load_representation",
    "noise_readout_order",
    "readout_indices",
]


@dataclass(frozen=True)
class BackboneDefaults:
    """Reference method settings tied to a backbone checkpoint."""

    adapt_method: str  # prompt_wo_head | prompt_w_head
    feature: str  # cls | pre_logits_tanh | clip_logits
    meta_variant: str  # hf | ht | clip
    meta_lr: float
    normalization: str  # imagenet | half | clip


BACKBONE_DEFAULTS = {
    "vit-b-1k": BackboneDefaults("prompt_wo_head", "cls", "hf", 0.5, "imagenet"),
    "vit-b-22k": BackboneDefaults("prompt_w_head", "pre_logits_tanh", "ht", 1.0, "half"),
    "clip-vit-b": BackboneDefaults("prompt_wo_head", "clip_logits", "clip", 1.0, "clip"),
    "clip-resnet50": BackboneDefaults("prompt_wo_head", "clip_logits", "clip", 1.0, "clip"),
}
FEATURES = ("cls", "pre_logits_tanh", "clip_logits")


def load_representation(path: str | Path, dim: int) -> nn.Linear:
    """The ViT-B-22k representation layer ``pre_logits.fc`` (D -> D) from an original Google checkpoint.

    timm 1.x drops ``pre_logits`` when it filters checkpoints, so it is read here from the same file: a torch
    state dict (``*pre_logits.fc.weight``/``bias``) or a Google ``.npz`` (``pre_logits/kernel``/``bias``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"representation checkpoint not found: {path} (strategy.representation_path)")
    if path.suffix == ".npz":
        import numpy as np

        z = np.load(path)
        if "pre_logits/kernel" not in z:
            raise KeyError(f"{path} has no pre_logits/kernel: not an original in21k ViT checkpoint")
        w, b = torch.from_numpy(z["pre_logits/kernel"]).T, torch.from_numpy(z["pre_logits/bias"])
    else:
        sd = _load_state_dict(path)
        keys = [k for k in sd if k.endswith("pre_logits.fc.weight") or k.endswith("pre_logits.weight")]
        if not keys:
            raise KeyError(f"{path} has no pre_logits(.fc).weight: not an original in21k ViT checkpoint")
        w, b = sd[keys[0]], sd[keys[0][: -len("weight")] + "bias"]
    layer = nn.Linear(dim, dim)
    layer.load_state_dict({"weight": w.float(), "bias": b.float()})
    return layer.requires_grad_(False)


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


class Featurizer(nn.Module):
    """phi(x), the clustering and routing feature, over a frozen backbone (``PromptedViT`` or an open_clip CLIP model).

    Args:
        backbone: the frozen backbone.
        feature: ``cls`` (final-norm CLS token), ``pre_logits_tanh`` (tanh of the representation layer on the CLS
            token; needs ``representation``) or ``clip_logits`` (``logit_scale * cos(image, text)``).
        representation: the ``pre_logits`` layer for ``pre_logits_tanh``.
        tokenizer: open_clip tokenizer (``clip_logits``).
        input_normalization: ``(mean, std)`` the images are normalised with (``clip_logits``; the scenario's
            ``normalization``); mapped to the CLIP weights' own statistics (``visual.image_mean``/``image_std``)
            before the image encoder when they differ. None: the images are taken as the weights expect them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature: str,
        representation: nn.Linear | None = None,
        tokenizer=None,
        input_normalization: Stats | None = None,
    ):
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature={feature!r}; valid: {list(FEATURES)}")
        if feature == "pre_logits_tanh" and representation is None:
            raise ValueError(
                "feature 'pre_logits_tanh' (vit-b-22k) needs the representation layer: set "
                "strategy.representation_path to the original in21k checkpoint with pre_logits.fc"
            )
        if feature == "clip_logits" and not hasattr(backbone, "encode_image"):
            raise TypeError(f"feature 'clip_logits' needs a CLIP model, got {type(backbone).__name__}")
        self.backbone, self.feature, self.tokenizer = backbone.requires_grad_(False), feature, tokenizer
        self.representation = representation
        self.input_normalization = input_normalization
        self.image_normalization = clip_image_stats(backbone) if feature == "clip_logits" else None

    @property
    def image_size(self) -> int:
        """Input side length of the backbone."""
        if self.feature == "clip_logits":
            size = self.backbone.visual.image_size
        else:
            size = self.backbone.vit.patch_embed.img_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def dim(self) -> int | None:
        """Feature width D (None for CLIP: it is the dataset's class count)."""
        return None if self.feature == "clip_logits" else int(self.backbone.embed_dim)

    def train(self, mode: bool = True) -> Featurizer:
        super().train(mode)
        self.backbone.eval()  # frozen backbone always in eval mode (drop_path inactive)
        return self

    @torch.no_grad()
    def text_features(self, classnames: list[str], template: str = "a photo of a {}") -> torch.Tensor:
        """Normalised CLIP text features ``(C, E)`` of ``template.format(c)`` for every class name."""
        if self.feature != "clip_logits":
            raise RuntimeError("text features only exist for CLIP backbones")
        dev = next(self.backbone.parameters()).device
        tokens = self.tokenizer([template.format(c) for c in classnames]).to(dev)
        return F.normalize(self.backbone.encode_text(tokens).float(), dim=-1)

    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """phi(x) ``(B, D)`` (``(B, C)`` CLIP logits, which need the dataset's ``text`` features)."""
        if self.feature == "clip_logits":
            if text is None:
                raise ValueError("CLIP phi needs the dataset's text features")
            if self.input_normalization is not None:  # the prompted images, in the weights' own normalisation
                x = renormalize(x, self.input_normalization, self.image_normalization)
            img = F.normalize(self.backbone.encode_image(x), dim=-1)  # (B, E)
            return self.backbone.logit_scale.exp() * img @ text.to(img.dtype).T  # (B, C)
        cls = self.backbone.forward_features(x)[:, 0]  # (B, D) final-norm CLS token
        if self.feature == "pre_logits_tanh":
            return torch.tanh(self.representation(cls))
        return cls


@torch.no_grad()
def noise_readout_order(
    phi, image_size: int, seed: int = 2023, n_noise: int = 512, batch: int = 64, device=None
) -> torch.Tensor:
    """Feature dimensions sorted by their population std over ``n_noise`` Gaussian images, descending.

    The noise is ``torch.randn(n_noise, 3, S, S)`` from a CPU generator seeded with ``seed`` (the same values as
    ``torch.manual_seed(seed); torch.randn(...)``), fed to ``phi`` in chunks of ``batch``.
    """
    noise = torch.randn(n_noise, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    feats = torch.cat([phi(noise[i : i + batch].to(device)).float().cpu() for i in range(0, n_noise, batch)])
    return feats.std(0, unbiased=False).sort(descending=True).indices  # (D,)


def readout_indices(order: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The ``n_classes`` most active dimensions in ascending order (class c <-> c-th kept dimension)."""
    if n_classes > len(order):
        raise ValueError(
            f"head-freezing read-out needs n_classes <= feature dim, got {n_classes} classes for a {len(order)}-d "
            "feature; use adapt_method=prompt_w_head (a linear head)"
        )
    return torch.unique(order[:n_classes])  # sorted ascending, as the reference's torch.unique


class DatasetAdapter(nn.Module):
    """Everything DAM-VP learns for one downstream dataset.

    Args:
        bank: the K cluster prompts.
        prototypes: ``(K, D)`` cluster prototypes in phi space (empty for ``diversity_adaptive=False``).
        classes: ``(C,)`` global class ids of the dataset (logit column c <-> ``classes[c]``).
        readout: ``(C,)`` read-out dimensions (head-freezing ViT) or None.
        head: linear head (head-tuning) or None.
        text: ``(C, E)`` CLIP text features or None.
    """

    def __init__(self, bank: PadPromptBank, prototypes, classes, readout=None, head=None, text=None) -> None:
        super().__init__()
        self.bank, self.head = bank, head
        self.register_buffer("prototypes", torch.as_tensor(prototypes).float())
        self.register_buffer("classes", torch.as_tensor(classes).long())
        self.register_buffer("readout", None if readout is None else torch.as_tensor(readout).long())
        self.register_buffer("text", text)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Local ``(B, C)`` logits from phi of the prompted images."""
        if self.head is not None:
            return self.head(feats)
        if self.readout is not None:
            return feats[:, self.readout]
        return feats  # CLIP: phi already is the zero-shot logits


class DAMVPModel(nn.Module):
    """Frozen backbone + phi + meta-prompt + one ``DatasetAdapter`` per dataset id.

    ``meta_prompt`` (theta_meta) is a parameter learned by Reptile (never by the task optimiser); it initialises
    every new dataset's cluster prompts.
    """

    def __init__(self, featurizer: Featurizer, meta_prompt: PadPrompter) -> None:
        super().__init__()
        self.featurizer, self.meta_prompt = featurizer, meta_prompt
        self.adapters = nn.ModuleDict()

    @property
    def backbone(self) -> nn.Module:
        return self.featurizer.backbone

    def adapter(self, d: int) -> DatasetAdapter:
        key = str(int(d))
        if key not in self.adapters:
            raise KeyError(f"dataset {d} has not been trained yet (trained: {sorted(self.adapters, key=int)})")
        return self.adapters[key]

    def phi(self, x: torch.Tensor, d: int) -> torch.Tensor:
        return self.featurizer(x, self.adapter(d).text)

    @torch.no_grad()
    def route(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """Cluster index ``(B,)`` of each raw image (nearest prototype of phi(x)); zeros without clustering."""
        ad = self.adapter(d)
        if len(ad.bank) == 1:
            return torch.zeros(len(x), dtype=torch.long, device=x.device)
        return route(self.phi(x, d), ad.prototypes)

    def dataset_logits(self, x: torch.Tensor, d: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Local ``(B, C_d)`` logits of dataset ``d``: route (unless ``idx`` given), prompt, phi, read-out."""
        ad = self.adapter(d)
        idx = self.route(x, d) if idx is None else idx
        return ad.logits(self.phi(ad.bank(x, idx), d))

    def forward(self, x: torch.Tensor, dataset_ids: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Global ``(B, n_classes)`` logits: each sample through its dataset's adapter, -inf outside its classes.

        Samples of a dataset without an adapter (not trained yet) get all-zero logits.
        """
        out = x.new_zeros(len(x), n_classes, dtype=torch.float32)
        for d in torch.unique(dataset_ids).tolist():
            if str(int(d)) not in self.adapters:
                continue
            rows = (dataset_ids == d).nonzero().flatten()
            ad = self.adapter(d)
            block = out.new_full((len(rows), n_classes), float("-inf"))
            block[:, ad.classes] = self.dataset_logits(x[rows], d).float()
            out[rows] = block
        return out
