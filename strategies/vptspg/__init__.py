"""VPTSP-G: semantic proxies from visual prompts for deep metric learning (Ren et al., ICLR 2024).

``strategy.py`` (``VPTSPGConfig``, the ``vptspg`` strategy), ``model.py`` (the network), ``parts.py`` (Proxy-Anchor
loss, GRU cell, class-balanced sampler).
"""

from ctta.strategies.vptspg.model import VPTSPGModel
from ctta.strategies.vptspg.parts import ClassBalancedBatchSampler, ProxyGRUCell, proxy_anchor_loss
from ctta.strategies.vptspg.strategy import VPTSPG, VPTSPGConfig

__all__ = ["VPTSPG", "VPTSPGConfig", "VPTSPGModel", "ClassBalancedBatchSampler", "ProxyGRUCell", "proxy_anchor_loss"]
