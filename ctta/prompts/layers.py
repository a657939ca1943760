"""Which ViT blocks receive the G- and E-prompts (DualPrompt, MVP), fitted to the backbone's depth.

Paper: DualPrompt (Wang et al., ECCV 2022, arXiv 2204.04799), Sec. 4.2 and the position study of Sec. 5 (Fig. 4):
the G-prompt is attached to the first two blocks and the E-prompt to the three blocks right after them (blocks 1-2
and 3-5 of ViT-B/16 counted from 1; ``g_layers=(0, 1)``, ``e_layers=(2, 3, 4)`` counted from 0), the shallow
positions being the ones that worked best. MVP (Moon et al., ICCV 2023, arXiv 2308.09303; reference
moonjunyyy/Si-Blurry@c4024ce) uses the same layout.

The layout is stated relative to the input, not to the depth, so on a shallower ViT ctta keeps it from the bottom:
G on blocks 0-1, E on the blocks after G up to block 4, cut at the last block (depth 4: E on 2-3; depth 3: E on 2).
This derivation applies only to the paper's default layout; layers the user chose that do not fit are an error that
names the keyword to set. A ViT of depth 2 or less has no block left for the E-prompt: also an error.
"""

from __future__ import annotations

__all__ = ["PAPER_G_LAYERS", "PAPER_E_LAYERS", "fit_prompt_layers"]

PAPER_G_LAYERS = (0, 1)
PAPER_E_LAYERS = (2, 3, 4)


def _paper_layout(depth: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The paper's layout cut to ``depth`` blocks (None when no block is left for the E-prompt)."""
    e = tuple(i for i in PAPER_E_LAYERS if i < depth)
    return (PAPER_G_LAYERS, e) if e else None


def fit_prompt_layers(owner: str, g_layers, e_layers, depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(g_layers, e_layers)`` for a ViT of ``depth`` blocks.

    Args:
        owner: the method's name, for the message (``"MVP"``, ``"DualPrompt"``).
        g_layers, e_layers: the configured layers (the config fields / keyword arguments of the same names).
        depth: number of blocks of the backbone.

    Returns:
        The layers as given when they fit; the paper's layout cut to ``depth`` when the defaults were left and do not
        fit (module docstring).

    Raises:
        ValueError: a layer outside ``[0, depth)`` that the user chose (or a ViT too shallow for the paper's
            layout); the message names the keyword(s) to set and the range.
    """
    g, e = tuple(int(i) for i in g_layers), tuple(int(i) for i in e_layers)
    bad = {name: [i for i in layers if not 0 <= i < depth] for name, layers in (("g_layers", g), ("e_layers", e))}
    bad = {name: layers for name, layers in bad.items() if layers}
    if not bad:
        return g, e
    fitted = _paper_layout(depth)
    if (g, e) == (PAPER_G_LAYERS, PAPER_E_LAYERS) and fitted is not None:
        return fitted
    named = " and ".join(f"{name}={dict(g_layers=g, e_layers=e)[name]}" for name in bad)
    keys = " / ".join(f"{name}=" for name in bad)
    cfg = " / ".join(f"strategy.{name}" for name in bad)
    example = fitted or (((0,), (depth - 1,)) if depth >= 2 else None)
    hint = f"e.g. g_layers={example[0]}, e_layers={example[1]}" if example else "or use a deeper ViT"
    raise ValueError(
        f"{owner}: prompt layers {named} must lie in [0, depth={depth}) of this ViT; set {keys} "
        f"(keyword argument or config field; {cfg} in a run config) to blocks in [0, {depth}), {hint}"
    )
