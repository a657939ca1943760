"""What a strategy reads from an Avalanche benchmark: class count, class names, the test set.

Strategies never require attributes set on the benchmark. Each value comes, in order, from an explicit constructor
argument, the experience (``classes_in_this_experience`` / ``classes_seen_so_far`` / ``future_classes`` of
``with_classes_timeline``, ``classnames``), the benchmark the experience came from (``exp.origin_stream.benchmark``
for the legacy generators: ``n_classes``, ``test_stream``; ctta's scenarios add ``n_classes``, ``classnames``,
``test_dataset``), or the targets of the experiences' datasets.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "concat_datasets",
    "experience_classes",
    "infer_classnames",
    "infer_num_classes",
    "infer_test_dataset",
    "origin_benchmark",
    "stream_classnames",
    "stream_dataset",
]


def _attr(obj, name: str):
    """``obj.name`` or None (Avalanche experiences raise for unset or masked attributes)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # AssertionError (unset origin_stream), MaskedAttributeError (masked classes)
        return None


def _root_experience(exp):
    while _attr(exp, "origin_experience") is not None:  # online sub-experience -> its experience
        exp = exp.origin_experience
    return exp


def origin_benchmark(exp) -> Any | None:
    """The benchmark object ``exp`` came from (legacy generators and ctta's scenarios), else None."""
    for e in (exp, _root_experience(exp)):
        stream = _attr(e, "origin_stream")
        bench = _attr(stream, "benchmark")
        if bench is not None:
            return bench
    return None


def _targets(dataset) -> set[int]:
    t = _attr(dataset, "targets")
    if t is None:
        return set()
    uniques = _attr(t, "uniques")
    return {int(c) for c in (uniques if uniques is not None else t)}


def _stream_classes(stream: Iterable) -> set[int]:
    out: set[int] = set()
    for e in stream:
        out |= _targets(_attr(e, "dataset"))
    return out


def infer_num_classes(exp) -> int:
    """Size of the label space: ``n_classes`` of the origin benchmark, the classes timeline, or the largest label
    of the origin stream's experiences, plus one.

    Raises:
        ValueError: none of these is available (pass ``num_classes=`` explicitly).
    """
    bench = origin_benchmark(exp)
    n = _attr(bench, "n_classes")
    if n:
        return int(n)
    root = _root_experience(exp)
    for e in (exp, root):
        seen, future = _attr(e, "classes_seen_so_far"), _attr(e, "future_classes")
        if seen is not None and future is not None and (seen or future):
            return max(int(c) for c in (*seen, *future)) + 1
    classes: set[int] = set()
    for e in (exp, root):
        classes |= _targets(_attr(e, "dataset"))
    stream = _attr(root, "origin_stream")
    if stream is not None:
        try:
            classes |= _stream_classes(stream)
        except TypeError:  # a lazy stream without len/iteration
            pass
    if not classes:
        raise ValueError(
            "cannot tell the number of classes: the experience carries no targets and its benchmark no class "
            "information; pass num_classes= to the strategy"
        )
    return max(classes) + 1


def experience_classes(exp) -> list[int]:
    """The classes of an experience: ``classes_in_this_experience``, else the labels present in its dataset
    (single-label ``targets``, or the columns with a positive of multi-hot ones)."""
    classes = _attr(exp, "classes_in_this_experience")
    if classes:
        return sorted(int(c) for c in classes)
    targets = _attr(_attr(exp, "dataset"), "targets")
    if targets is None:
        return []
    t = torch.as_tensor([list(v) if hasattr(v, "__len__") else v for v in targets])
    if t.ndim == 2:  # multi-hot
        return torch.nonzero(t.sum(0) > 0).flatten().tolist()
    return sorted({int(c) for c in t.tolist()})


def infer_classnames(exp, default=None) -> list[str] | None:
    """Class names from the experience, its dataset or its origin benchmark (``classnames``), else ``default``."""
    for obj in (exp, _attr(exp, "dataset"), origin_benchmark(exp)):
        names = _attr(obj, "classnames")
        if names:
            return list(names)
    return list(default) if default is not None else None


def stream_classnames(exp) -> list[str] | None:
    """Class names of ``exp``'s stream: its origin benchmark's ``stream_classnames[<stream name>]`` (e.g. ``test`` ->
    base classes, ``test_new`` -> new classes), else the benchmark's ``classnames``, else None."""
    bench = origin_benchmark(exp)
    per_stream = _attr(bench, "stream_classnames") or {}
    name = _attr(_attr(exp, "origin_stream"), "name")
    names = per_stream.get(name) if name is not None else None
    if names:
        return list(names)
    names = _attr(bench, "classnames")
    return list(names) if names else None


def concat_datasets(datasets: list) -> Any | None:
    """Avalanche datasets concatenated (None for none)."""
    if not datasets:
        return None
    out = datasets[0]
    for d in datasets[1:]:
        out = out.concat(d)
    return out


def stream_dataset(stream) -> Any | None:
    """The datasets of a stream's experiences concatenated (None for an empty stream)."""
    return concat_datasets([e.dataset for e in stream])


def infer_test_dataset(exp) -> Any | None:
    """The test set of ``exp``'s origin benchmark: its ``test_dataset``, else its ``test_stream`` concatenated."""
    bench = origin_benchmark(exp)
    if bench is None:
        return None
    test = _attr(bench, "test_dataset")
    if test is not None:
        return test
    stream = _attr(bench, "test_stream")
    return stream_dataset(stream) if stream is not None else None


def warn_once(owner: Any, key: str, message: str) -> None:
    """``warnings.warn(message)`` the first time ``owner`` reports ``key``."""
    done = owner.__dict__.setdefault("_warned", set())
    if key not in done:
        done.add(key)
        warnings.warn(message, stacklevel=3)
