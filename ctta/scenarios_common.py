"""Helpers shared by scenario builders: annotate Avalanche benchmarks with what ctta's runner needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline


def annotate(bench: Any, *, n_classes: int, classnames: Sequence[str] | None = None, test_dataset=None, **extra):
    """Attach ``n_classes``, ``classnames``, ``test_dataset`` (and any ``extra``) to a benchmark; returns it."""
    if n_classes <= 0:
        raise ValueError(f"n_classes must be positive, got {n_classes}")
    if classnames is not None and len(classnames) != n_classes:
        raise ValueError(f"{len(classnames)} class names for {n_classes} classes")
    bench.n_classes = int(n_classes)
    bench.classnames = list(classnames) if classnames is not None else None
    bench.test_dataset = test_dataset
    for k, v in extra.items():
        setattr(bench, k, v)
    return bench


def make_benchmark(train_parts: Sequence, test_parts: Sequence, *, timeline: bool = True) -> CLScenario:
    """An eager ``CLScenario`` with one ``DatasetExperience`` per Avalanche dataset in each stream."""

    def stream(name, parts):
        return EagerCLStream(name, [DatasetExperience(dataset=d, current_experience=i) for i, d in enumerate(parts)])

    bench = CLScenario([stream("train", train_parts), stream("test", test_parts)])
    return with_classes_timeline(bench) if timeline else bench


def single_experience_stream(dataset, name: str = "eval") -> EagerCLStream:
    """A one-experience stream over an Avalanche dataset (experiences need an origin stream to be evaluated)."""
    return EagerCLStream(name, [DatasetExperience(dataset=dataset, current_experience=0)])
