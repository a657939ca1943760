"""MULTI-LANE: multi-label class-incremental learning with lanes over a frozen ViT.

``config.py`` (``MultiLaneConfig``), ``strategy.py`` (the lane model and the ``multilane`` strategy) and
``metrics.py`` (mAP, CF1, OF1, forgetting and BWT as Avalanche plugin metrics), used only by MULTI-LANE.
"""

from ctta.strategies.multilane.config import MultiLaneConfig
from ctta.strategies.multilane.strategy import (
    MultiLane,
    MultiLaneModel,
    cls_attention,
    masked_bce,
    masked_ce,
    tome_merge,
)

__all__ = ["MultiLane", "MultiLaneConfig", "MultiLaneModel", "cls_attention", "masked_bce", "masked_ce", "tome_merge"]
