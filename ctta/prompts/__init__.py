"""Prompt modules shared by several strategies: the key-query ``PromptPool`` (MVP, L2P, DualPrompt) and the G-/E-prompt
layers fitted to a ViT's depth (MVP, DualPrompt)."""

from ctta.prompts.layers import PAPER_E_LAYERS, PAPER_G_LAYERS, fit_prompt_layers
from ctta.prompts.pool import INITS, PENALTIES, PoolSelection, PromptPool

__all__ = ["INITS", "PENALTIES", "PAPER_E_LAYERS", "PAPER_G_LAYERS", "PoolSelection", "PromptPool", "fit_prompt_layers"]
