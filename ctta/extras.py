"""Optional dependencies ("extras"): import them with an error that names the ``pip install`` command.

Core dependencies (always installed): torch, torchvision, timm, avalanche-lib, open_clip_torch, scikit-learn.
Extras: ``diffusion`` (diffusers + transformers; DiffTPT's Stable Diffusion views, ``ctta.diffusion``'s
text-to-image images for LAPT, ``ctta.llm``'s local language models ``hf:...`` and causal-LM priors) and ``dev``
(tests, lint).
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"diffusion": ("diffusers", "transformers")}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (a package of the extra ``extra``) or raise ``MissingExtraError`` naming the install command.

    Args:
        module: the module to import, e.g. ``"diffusers"``.
        extra: the ctta extra that installs it, e.g. ``"diffusion"``.
        feature: what needs it, for the message (e.g. ``"DiffTPT's diffusion views"``).
    """
    if extra not in EXTRAS or module.split(".")[0] not in EXTRAS[extra]:
        raise ValueError(f"{module!r} is not part of a known ctta extra ({EXTRAS})")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{feature} needs {module!r}, which is not installed: pip install 'ctta[{extra}]' "
            f"(or pip install {' '.join(EXTRAS[extra])})"
        ) from err
