"""Prompt modules shared by strategies: the key-query ``PromptPool`` and pixel-space pad prompts (DAM-VP)."""

from ctta.prompts.pool import INITS, PENALTIES, PoolSelection, PromptPool

__all__ = ["INITS", "PENALTIES", "PoolSelection", "PromptPool"]

try:
    from ctta.prompts.pixel import *  # noqa: F403
    from ctta.prompts.pixel import __all__ as _pixel_all
except ModuleNotFoundError as _err:
    if _err.name != "ctta.prompts.pixel":
        raise
else:
    __all__ += list(_pixel_all)
