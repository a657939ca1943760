"""GLAD: Generalizable LoRA tuning with regularized gradient (Peng et al., "GLAD: Generalizable Tuning for
Vision-Language Models", ICCV-W 2025, arXiv 2507.13089). **Unofficial, from the paper**: the official repository
(YuqiPeng77/GLAD@5abbe70, MIT) holds only a README ("The code will be released soon"); spec
``clip-prompt-learners.md`` section 16. Nothing is copied from any code.

Model: frozen CLIP with low-rank updates ``W + (alpha / r) * B A`` on the attention projections of every layer of
both towers; the text is the hand-written prompt ``"a photo of a <name>."`` encoded through the (LoRA-updated) text
tower at every forward (``PromptedText`` with hard words only, no soft tokens). Loss: cross-entropy on
``scale * cos(f, g_c)``.

Regularised gradient (the paper's "SAM gradient as a reference signal that steers the original gradient"): per step
``g = grad L(theta)``, ``e = rho * g / ||g||`` (SAM's ascent step over all LoRA parameters together),
``g_sam = grad L(theta + e)`` on the same batch, then the update uses ``g + beta * (g_sam - g)``
(``steer_gradient``): ``beta = 0`` is plain LoRA, ``beta = 1`` is SAM.

Choices the paper (as available: abstract and Fig. 1) leaves open, with the value taken and why:

- LoRA targets: the query, key and value projections (``targets: qkv``; ``qkvo`` adds the output projection) of
  every block of both encoders, rank 2, alpha 1: the CLIP-LoRA defaults (Zanella & Ben Ayed, CVPRW 2024), the LoRA
  set-up GLAD compares with. A = Kaiming-uniform (a = sqrt 5), B = 0, so training starts at zero-shot CLIP.
- LoRA dropout: none (the update is applied in weight space, ``W + delta`` swapped in for each forward, which keeps
  open_clip's modules and every ctta tower path unchanged; CLIP-LoRA's input dropout 0.25 has no weight-space form).
- Steering rule: the linear interpolation above with ``beta = 0.5`` and SAM's ``rho = 0.05`` (Foret et al.'s
  default); the paper's exact combination is not available.
- Optimiser and budget: the family's Dassl SGD with warm-up + cosine per epoch (``PromptLearnerTemplate``), lr
  0.002, batch 32, 20 epochs, last-epoch model: no published values were found.
- Text prompt: "a photo of a {name}." (CoOp's base-to-new template, also CLIP-LoRA's).

The CLIP is left untouched: the LoRA pairs live on the model (``lora``), and each forward runs the CLIP with the
merged weights swapped in (``torch.func.functional_call``).

Trainable parameters on ViT-B/16 (targets qkv, r = 2): 12 x 3 x 2 x (768 + 768) + 12 x 3 x 2 x (512 + 512) =
184,320 (``tests/test_glad.py``); ``qkvo``: 245,760. No published count was found.

Deviations: none from the paper as far as it is known; everything above is a choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import text_tower
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["GLAD", "GLADConfig", "GLADModel", "LoRADelta", "lora_targets", "sam_perturbation", "steer_gradient"]


@dataclass(frozen=True)
class GLADConfig(PromptLearnerConfig):
    """GLAD settings (choices, see the module docstring)."""

    epochs: int = ranged(20, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.002, gt=0)
    rank: int = ranged(2, ge=1)  # LoRA rank r
    alpha: float = 1.0  # LoRA scale alpha / r
    targets: str = "qkv"  # qkv | qkvo: attention projections that get a low-rank update
    towers: str = "both"  # both | vision | text
    prompt: str = "a photo of a"  # hand-written words before the class name
    rho: float = ranged(0.05, ge=0)  # SAM radius
    beta: float = 0.5  # steering: g + beta * (g_sam - g); 0 = plain LoRA (one pass), 1 = SAM


class LoRADelta(nn.Module):
    """Weight parametrisation ``W -> W + (alpha / r) * [B_1 A_1; ...; B_k A_k]``: ``k`` stacked ``(d_out/k, d_in)``
    blocks (``k = 3`` for a fused q, k, v projection), each with its own rank-``r`` pair."""

    def __init__(self, d_out: int, d_in: int, rank: int, alpha: float, blocks: int = 1, *, generator=None) -> None:
        super().__init__()
        a = torch.empty(blocks, rank, d_in)
        bound = 1 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on a (rank, d_in) matrix
        self.A = nn.Parameter(a.uniform_(-bound, bound, generator=generator))
        self.B = nn.Parameter(torch.zeros(blocks, d_out // blocks, rank))
        self.scale = alpha / rank

    def delta(self) -> torch.Tensor:
        """The update ``(d_out, d_in)``."""
        return self.scale * torch.bmm(self.B, self.A).flatten(0, 1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def lora_targets(clip_model: nn.Module, cfg: GLADConfig) -> list[tuple[str, int]]:
    """``(weight name, blocks)`` of every projection that gets a low-rank update: each block's fused
    ``attn.in_proj_weight`` (q, k, v: 3 blocks) and, with ``qkvo``, ``attn.out_proj.weight`` (1 block)."""
    if cfg.targets not in ("qkv", "qkvo"):
        raise ValueError(f"targets={cfg.targets!r}; valid: qkv, qkvo")
    if cfg.towers not in ("both", "vision", "text"):
        raise ValueError(f"towers={cfg.towers!r}; valid: both, vision, text")
    tower = text_tower(clip_model)
    prefixes = [("visual.transformer", clip_model.visual.transformer)] if cfg.towers != "text" else []
    if cfg.towers != "vision":
        prefixes.append(
            ("transformer" if hasattr(clip_model, "token_embedding") else "text.transformer", tower.transformer)
        )
    out = []
    for prefix, transformer in prefixes:
        for i, blk in enumerate(transformer.resblocks):
            if not isinstance(blk.attn, nn.MultiheadAttention) or not blk.attn._qkv_same_embed_dim:
                raise TypeError(f"LoRA needs nn.MultiheadAttention with a fused in_proj_weight ({prefix}.{i})")
            out.append((f"{prefix}.resblocks.{i}.attn.in_proj_weight", 3))
            if cfg.targets == "qkvo":
                out.append((f"{prefix}.resblocks.{i}.attn.out_proj.weight", 1))
    return out


class GLADModel(PromptedCLIP):
    """Frozen CLIP + LoRA updates ``self.lora`` of its attention projections and a hand-written text prompt.

    The forward runs the CLIP with the merged weights ``W + delta`` swapped in for the call
    (``torch.func.functional_call``): the CLIP's own tensors never change and it holds no LoRA module.
    """

    context_is_the_prompt = False  # no soft context: the LoRA weights are the adaptation

    def __init__(self, clip_model, tokenizer, classnames, cfg: GLADConfig, *, generator=None) -> None:
        targets = lora_targets(clip_model, cfg)
        super().__init__(clip_model, tokenizer, classnames, [cfg.prompt], truncate=cfg.truncate, round_prompts=False)
        self.lora_names = [f"clip.{name}" for name, _ in targets]
        deltas = []
        for name, blocks in targets:
            w = clip_model.get_parameter(name)
            deltas.append(LoRADelta(*w.shape, cfg.rank, cfg.alpha, blocks, generator=generator).to(w.device, w.dtype))
        self.lora = nn.ModuleList(deltas)

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """``{parameter name: W + delta}`` for every LoRA target."""
        return {n: d(self.get_parameter(n)) for n, d in zip(self.lora_names, self.lora)}

    def forward(self, images: torch.Tensor, *, merged: bool = False) -> torch.Tensor:
        if not merged:
            return functional_call(self, self.merged_weights(), (images,), {"merged": True})
        return self.logits(encode_image(self.clip, images), self.text(None))


def steer_gradient(g: torch.Tensor, g_sam: torch.Tensor, beta: float) -> torch.Tensor:
    """The regularised gradient ``g + beta * (g_sam - g)``."""
    return g + beta * (g_sam - g)


def sam_perturbation(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """SAM's ascent step ``rho * g / ||g||`` with ``||g||`` the norm over all tensors together (0 for ``g = 0``)."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return [rho * g / norm.clamp_min(1e-12).to(g.dtype) for g in grads]


@STRATEGIES.register("glad", config=GLADConfig)
class GLAD(PromptLearnerTemplate):
    """GLAD as an Avalanche strategy: ``model`` is a ``GLADModel``; each SGD step uses the SAM-steered gradient."""

    config_class = GLADConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: GLADConfig) -> GLADModel:
        return GLADModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def optimizer_step(self) -> None:
        if self.cfg.beta != 0 and self.cfg.rho > 0:
            self._steer()
        super().optimizer_step()

    def _steer(self) -> None:
        """Replace each ``.grad`` by ``steer_gradient(g, g_sam)``, ``g_sam`` taken at ``theta + e`` on this batch."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad.detach().clone() for p in params]
        eps = sam_perturbation(grads, self.cfg.rho)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        self.optimizer.zero_grad()
        F.cross_entropy(self.forward_local(), self.mb_y).backward()
        with torch.no_grad():
            for p, e, g in zip(params, eps, grads):
                p.sub_(e)
                p.grad = steer_gradient(g, p.grad if p.grad is not None else torch.zeros_like(g), self.cfg.beta)
