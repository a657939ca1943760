"""Frozen OpenAI/open_clip CLIP backbones (the prompted text tower built on them is ``ctta.clip_prompting``).

Papers: CLIP (Radford et al., ICML 2021); CoOp context vectors (Zhou et al., IJCV 2022, arXiv 2109.01134) as used
by TPT (Shu et al., NeurIPS 2022). Reference: azshue/TPT@63ecbace ``clip/custom_clip.py:{PromptLearner,
TextEncoder}`` (re-implemented from the spec ``tpt-difftpt.md`` sections 2 and 7.3, no code copied); open_clip
v3.3.0 ``CLIP.encode_text`` is the function the prompted encoder reproduces.

``create_clip`` goes through ``open_clip.create_model``; weight files are loaded by open_clip's own loader.
OpenAI weights use the QuickGELU variant: since open_clip v2.29 ``create_model('ViT-B-16', pretrained='openai')``
silently builds ``nn.GELU``, so ``create_clip`` maps such requests to ``<name>-quickgelu`` (or forces QuickGELU
when no such config exists) and refuses an explicit ``quick_gelu=False`` with an OpenAI tag unless
``allow_activation_mismatch=True``.

Deviations / implementation notes:
- the prompted text tower (exact EOT truncation, length buckets, shared prefix) is ``ctta.clip_prompting.PromptedText``;
  the TPT engine built on it is ``ctta.clip_prompting.episode_tuner.PromptTuner``.
- ``ctta-tiny-clip`` is a tiny randomly initialised CLIP built from a config dict (tests and smoke runs);
  ``ctta-tiny-clip-digits`` is ctta's shipped pretrained tiny CLIP (``ctta.pretrained``; ``pretrained: ctta`` for
  its packaged weights, ``""`` for random init), with a compact-vocabulary tokenizer.
- a failed open_clip load raises ctta's one message; the ERROR line open_clip logs on the way is held back
  (``_open_clip_errors_held``); ``clip_image_size`` reads a model's input side without building it.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ctta.backbones.hub import hub_download_guard
from ctta.registry import BACKBONES

__all__ = [
    "CLIPConfig",
    "CLIPBackbone",
    "TINY_CLIP_CONFIGS",
    "SHIPPED_CLIP",
    "create_clip",
    "build_clip",
    "clip_image_size",
]

# ctta's shipped tiny CLIP (ctta/pretrained/): pretrained "ctta" = its packaged, sha256-checked weights.
SHIPPED_CLIP = "ctta-tiny-clip-digits"

# Tiny CLIPs built from a config dict (no download): width 64, 2 text layers, context 77, full BPE vocabulary.
TINY_CLIP_CONFIGS = {
    "ctta-tiny-clip": dict(
        embed_dim=32,
        quick_gelu=True,
        vision_cfg=dict(image_size=32, layers=2, width=48, head_width=16, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2),
    ),
}


@dataclass(frozen=True)
class CLIPConfig:
    """Backbone section of a run config (``backbone: {name: clip, ...}``).

    Attributes:
        model: open_clip model name (``ViT-B-16``, ``RN50``, ``ViT-B/16`` also accepted), ``ctta-tiny-clip``
            (random tiny) or ``ctta-tiny-clip-digits`` (ctta's shipped tiny CLIP).
        pretrained: open_clip weight tag (``openai``; ``ctta`` for ``ctta-tiny-clip-digits``), a local weight file
            in open_clip format (or written by ``ctta.pretrained.recipe``), or "" (random).
        precision: open_clip weight precision (``fp32``: TPT keeps fp32 weights and uses autocast).
        quick_gelu: None = what the weights were trained with (QuickGELU for OpenAI tags); True/False forces it.
        allow_activation_mismatch: allow an activation that differs from the one the weights were trained with.
        cache_dir: open_clip download cache folder (None = its default).
    """

    model: str = "ViT-B-16"
    pretrained: str = "openai"
    precision: str = "fp32"
    quick_gelu: bool | None = None
    allow_activation_mismatch: bool = False
    cache_dir: str | None = None


class CLIPBackbone(nn.Module):
    """A frozen open_clip model with its tokenizer and eval transform (what ``BACKBONES["clip"]`` builds).

    Attributes:
        model: the open_clip ``CLIP`` (eval mode, ``requires_grad=False`` everywhere).
        tokenizer: open_clip tokenizer (``tokenizer(list[str]) -> LongTensor (n, 77)``).
        preprocess: open_clip's eval image transform for this model.
        image_size: input resolution of the image tower.
        name, pretrained: the resolved open_clip model name and weight source.
    """

    def __init__(self, model: nn.Module, tokenizer, preprocess, name: str, pretrained: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name, self.pretrained = name, pretrained
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen backbone, always in eval mode
        return self


def _is_file_path(pretrained: str) -> bool:
    return os.path.isfile(pretrained) or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz")


def _resolve_activation(name: str, pretrained: str, quick_gelu: bool | None, allow_mismatch: bool):
    """``(open_clip name, force_quick_gelu)`` so that OpenAI weights get the QuickGELU activation they need."""
    import open_clip

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(
            f"unknown open_clip model {name!r}; valid: {open_clip.list_models()[:40]}... "
            f"or one of {sorted(TINY_CLIP_CONFIGS)}"
        )
    has_qg = bool(model_cfg.get("quick_gelu", False))
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained and not _is_file_path(pretrained) else {}
    wants = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else None
    if quick_gelu is None:
        quick_gelu = wants if wants is not None else has_qg
    if wants is not None and quick_gelu != wants and not allow_mismatch:
        raise ValueError(
            f"weights {name}/{pretrained!r} were trained with quick_gelu={wants}, but quick_gelu={quick_gelu} was "
            f"requested; this silently costs accuracy. Use backbone.quick_gelu=null (follow the weights) or set "
            f"backbone.allow_activation_mismatch=true."
        )
    if quick_gelu and not has_qg:
        alt = f"{name}-quickgelu"
        return (alt, False) if open_clip.get_model_config(alt) is not None else (name, True)
    if not quick_gelu and has_qg:
        base = name.removesuffix("-quickgelu")
        if open_clip.get_model_config(base) is None:
            raise ValueError(f"{name} has no GELU variant; use quick_gelu=null")
        return base, False
    return name, False


def _offline_error(name: str, tag: str, err: BaseException) -> RuntimeError:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    where = cfg.get("hf_hub") or cfg.get("url") or "the open_clip hub"
    return RuntimeError(
        f"could not fetch the CLIP weights {name!r} with pretrained tag {tag!r} ({where}): "
        f"{type(err).__name__}: {str(err)[:200]}. Offline? Download the open_clip checkpoint "
        f"(e.g. open_clip_pytorch_model.bin / open_clip_model.safetensors of {where}) and pass it with "
        f"backbone.pretrained=/path/to/file (backbone.model must then name the matching config, e.g. "
        f"{name}), or use backbone.pretrained='' for random weights."
    )


def _tokenizer_for(name: str, context_length: int = 77):
    import open_clip

    if name in TINY_CLIP_CONFIGS:
        return open_clip.SimpleTokenizer(context_length=context_length)
    return open_clip.get_tokenizer(name)


def _create_tiny(name: str, pretrained: str, precision: str):
    import open_clip

    if pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"{name} has no weight tags; pretrained must be '' or a local file, got {pretrained!r}")
    cfg = TINY_CLIP_CONFIGS[name]
    model = open_clip.CLIP(**cfg, cast_dtype=open_clip.get_cast_dtype(precision))
    if pretrained:
        open_clip.load_checkpoint(model, pretrained)
    return model


def clip_image_size(name: str) -> int | None:
    """The input side of CLIP ``name``'s image tower, from its config alone (no weights load); None if unknown.

    Args:
        name: a ``CLIPConfig.model`` (open_clip name, ``/`` accepted for ``-``; or a ctta tiny CLIP name).
    """
    name = name.replace("/", "-")
    if name == SHIPPED_CLIP:
        from ctta.pretrained.archs import clip_config

        vision = clip_config(0)["vision_cfg"]
    elif name in TINY_CLIP_CONFIGS:
        vision = TINY_CLIP_CONFIGS[name]["vision_cfg"]
    else:
        import open_clip

        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    size = vision.get("image_size")
    return int(size[0] if isinstance(size, (list, tuple)) else size) if size else None


@contextmanager
def _open_clip_errors_held():
    """Hold back the ERROR records open_clip logs while it loads; re-log them only if the load succeeds.

    open_clip ``logging.error``s a failed download or a bad ``pretrained`` value and then raises; ``create_clip``
    turns that exception into its own message, so the log line would only repeat it (as ``ERROR:root:...``).
    Records below ERROR (open_clip's warnings) pass through unchanged.
    """
    import open_clip

    package = os.path.dirname(open_clip.__file__)
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.pathname.startswith(package):
            held.append(record)
            return False
        return True

    root = logging.getLogger()  # open_clip v3.3.0 logs through the root logger only (``logging.error(...)``)
    had_handlers = bool(root.handlers)
    root.addFilter(hold)
    try:
        yield
    finally:
        root.removeFilter(hold)
        if not had_handlers:  # ``logging.error`` configured the root logger on the way: undo that
            root.handlers[:] = []
    for record in held:  # the load succeeded after all: nothing supersedes these
        logging.getLogger(record.name).handle(record)


def _create_open_clip(name, pretrained, precision, quick_gelu, allow_mismatch, cache_dir):
    """``open_clip.create_model`` with checked tags/files, the QuickGELU rule and a clear offline error."""
    import open_clip

    if pretrained and _is_file_path(pretrained) and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"CLIP weight file not found: {pretrained}")
    if pretrained and not _is_file_path(pretrained) and not open_clip.get_pretrained_cfg(name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"unknown pretrained tag {pretrained!r} for {name}; valid tags: {tags} (or a file path)")
    name, force_qg = _resolve_activation(name, pretrained, quick_gelu, allow_mismatch)
    try:
        with warnings.catch_warnings(), hub_download_guard(), _open_clip_errors_held():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            model = open_clip.create_model(
                name, pretrained=pretrained or None, precision=precision, force_quick_gelu=force_qg, cache_dir=cache_dir
            )
    except RuntimeError as e:
        if pretrained and not _is_file_path(pretrained) and "download" in str(e).lower():
            raise _offline_error(name, pretrained, e) from e
        raise
    return name, model


def create_clip(
    name: str = "ViT-B-16",
    pretrained: str = "openai",
    *,
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    allow_activation_mismatch: bool = False,
    cache_dir: str | None = None,
):
    """Build a frozen open_clip model, its eval transform and tokenizer.

    Args:
        name: open_clip model name (``/`` accepted for ``-``), or a tiny config name (``ctta-tiny-clip``).
        pretrained: a weight tag (``openai``), a local weight file (loaded by open_clip's own loader), or "" for
            random weights.
        precision: open_clip precision of the weights (``fp32`` default).
        quick_gelu: None follows the weights; see module docstring.
        allow_activation_mismatch: permit an activation other than the weights' one.
        cache_dir: open_clip download cache.

    Returns:
        ``(model, preprocess, tokenizer)``; the model is in eval mode with every parameter frozen.

    Raises:
        RuntimeError: the tag's weights cannot be downloaded (offline); the message names the tag and how to pass a
            local file (``backbone.pretrained=/path``).
        FileNotFoundError / ValueError: a missing weight file, an unknown model or tag, an activation mismatch.
    """
    import open_clip

    name = name.replace("/", "-")
    tokenizer = None
    if name == SHIPPED_CLIP:
        from ctta.pretrained import create_tiny_clip

        model, tokenizer = create_tiny_clip(pretrained, precision)
    elif name in TINY_CLIP_CONFIGS:
        model = _create_tiny(name, pretrained, precision)
    else:
        name, model = _create_open_clip(name, pretrained, precision, quick_gelu, allow_activation_mismatch, cache_dir)
    model.eval().requires_grad_(False)
    size = model.visual.image_size
    preprocess = open_clip.image_transform(
        size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    return model, preprocess, tokenizer or _tokenizer_for(name, getattr(model, "context_length", 77) or 77)


@BACKBONES.register("clip", config=CLIPConfig)
def build_clip(cfg: CLIPConfig) -> CLIPBackbone:
    """``BACKBONES["clip"]``: a frozen ``CLIPBackbone`` from a ``CLIPConfig``."""
    model, preprocess, tokenizer = create_clip(
        cfg.model,
        cfg.pretrained,
        precision=cfg.precision,
        quick_gelu=cfg.quick_gelu,
        allow_activation_mismatch=cfg.allow_activation_mismatch,
        cache_dir=cfg.cache_dir,
    )
    return CLIPBackbone(model, tokenizer, preprocess, cfg.model.replace("/", "-"), cfg.pretrained)
