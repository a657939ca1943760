"""Avalanche templates for online continual learning, epoch-based training and test-time adaptation.

One module per concern, composed as mixins in the manner of Avalanche's own ``update_type`` / ``observation_type``
templates:

* ``base``: the common constructor (Avalanche's arguments with Avalanche's meaning, the method's config fields as
  keyword arguments, refusals with clear errors), the default evaluator and ``from_config``;
* ``benchmark_info``: ``BenchmarkInfo``, the typed record a scenario attaches to its benchmark (class count, class
  names, test set, protocol extras), read with ``benchmark_info`` and inferred from plain Avalanche benchmarks;
* ``sharding``: torchrun sharding, the one sharded forward / criterion / SGD update of every template;
* ``exposure``, ``replay``, ``state``, ``anytime``: label exposure, replay composition, resumable state and the
  anytime evaluation of online class-incremental learning;
* ``online``: ``OnlineCLTemplate``, ``online_iters`` updates per incoming batch in stream order;
* ``epoch``: ``EpochTemplate``, ``train_epochs`` passes per experience (MULTI-LANE, DAM-VP, the CLIP prompt learners);
* ``test_time``: ``TestTimeTemplate``, adaptation inside ``eval()``;
* ``prompt_er`` (L2P, DualPrompt) and ``prompt_tuning`` (TPT, DiffTPT): protocols shared by two methods.
"""

from ctta.templates.anytime import AnytimeEvalPlugin, is_task_end
from ctta.templates.base import DEFAULT_EVALUATOR, StrategyBase, default_evaluator, restrict_to_trainable
from ctta.templates.epoch import EpochTemplate
from ctta.templates.online import OnlineCLTemplate, OnlineConfig, as_prompted_vit
from ctta.templates.sharding import ShardedTraining
from ctta.templates.test_time import TestTimeTemplate

__all__ = [
    "DEFAULT_EVALUATOR",
    "AnytimeEvalPlugin",
    "EpochTemplate",
    "OnlineCLTemplate",
    "OnlineConfig",
    "ShardedTraining",
    "StrategyBase",
    "TestTimeTemplate",
    "as_prompted_vit",
    "default_evaluator",
    "is_task_end",
    "restrict_to_trainable",
]
