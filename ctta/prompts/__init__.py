"""Prompt modules shared by several strategies: the key-query ``PromptPool`` (MVP, L2P, DualPrompt)."""

from ctta.prompts.pool import INITS, PENALTIES, PoolSelection, PromptPool

__all__ = ["INITS", "PENALTIES", "PoolSelection", "PromptPool"]
