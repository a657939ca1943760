"""DiffTPT: TPT with diffusion-generated views (Feng et al., ICCV 2023).

``config.py`` (``DiffTPTConfig``), ``strategy.py`` (the ``difftpt`` strategy and its view filtration), and what only
DiffTPT uses: ``diffusion.py`` (Stable Diffusion image-variation views) and ``view_cache.py`` (their disk cache).
"""

from ctta.strategies.difftpt.config import DiffTPTConfig
from ctta.strategies.difftpt.strategy import DiffTPT, denormalize, difftpt_select, make_select_fn, make_tuner

__all__ = ["DiffTPT", "DiffTPTConfig", "denormalize", "difftpt_select", "make_select_fn", "make_tuner"]
