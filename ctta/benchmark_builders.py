"""Eager Avalanche benchmarks and streams built from Avalanche datasets (what scenario builders share).

A scenario builds its benchmark with ``make_benchmark`` (or Avalanche's own classes) and attaches what it tells
strategies with ``ctta.templates.benchmark_info.with_info``; ``single_experience_stream`` wraps one dataset for
evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline

__all__ = ["make_benchmark", "single_experience_stream"]


def make_benchmark(train_parts: Sequence, test_parts: Sequence, *, timeline: bool = True) -> CLScenario:
    """An eager ``CLScenario`` with one ``DatasetExperience`` per Avalanche dataset in each stream."""

    def stream(name, parts):
        return EagerCLStream(name, [DatasetExperience(dataset=d, current_experience=i) for i, d in enumerate(parts)])

    bench = CLScenario([stream("train", train_parts), stream("test", test_parts)])
    return with_classes_timeline(bench) if timeline else bench


def single_experience_stream(dataset, name: str = "eval") -> EagerCLStream:
    """A one-experience stream over an Avalanche dataset (experiences need an origin stream to be evaluated)."""
    return EagerCLStream(name, [DatasetExperience(dataset=dataset, current_experience=0)])
