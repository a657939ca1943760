"""ProAPO (Qu et al., CVPR 2025): ``strategy.py`` (the ``proapo`` strategy and its config), ``evolve.py`` (the
evolutionary loop of both stages), ``describe.py`` (stage 2: description search over confused-class groups),
``pools.py`` (the shipped template pools and per-dataset settings, ``data/``, MIT, see ``data/NOTICE``)."""

from ctta.strategies.proapo.strategy import ProAPO, ProAPOConfig, with_official

__all__ = ["ProAPO", "ProAPOConfig", "with_official"]
