"""GRAM (Li et al., ICCV 2023, arXiv 2303.06571; unofficial, from the paper): ``strategy.py`` (the ``gram`` strategy,
its config and model, stage 1's loop), and what only GRAM uses: ``meta.py`` (the gradient-regulating function and
the first-order bi-level meta-update) and ``tasks.py`` (image-text pairs, their features and the meta-tasks of the
cross-modal hierarchical clustering).
"""

from ctta.strategies.gram.meta import caption_set_loss, inner_adapt, meta_loss, regulate, split_task
from ctta.strategies.gram.strategy import GRAM, GRAMConfig, GRAMModel, meta_train
from ctta.strategies.gram.tasks import ImageTextPairs, cluster_tasks, generated_pairs, pair_features, read_pairs

__all__ = [
    "GRAM",
    "GRAMConfig",
    "GRAMModel",
    "ImageTextPairs",
    "caption_set_loss",
    "cluster_tasks",
    "generated_pairs",
    "inner_adapt",
    "meta_loss",
    "meta_train",
    "pair_features",
    "read_pairs",
    "regulate",
    "split_task",
]
