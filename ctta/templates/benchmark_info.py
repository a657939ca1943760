"""What a scenario tells strategies about an Avalanche benchmark, and what strategies infer when nobody told them.

ctta's scenarios return ordinary Avalanche benchmarks with ONE typed record attached, ``bench.info``, a frozen
``BenchmarkInfo`` (class count, class names, test set, and what a protocol adds: Si-Blurry's task indices and batch
augmentation, the test-time stream's views, the transfer stream's datasets, ...). Nothing else is set on a benchmark,
and strategies never require the record: each value a strategy needs comes, in order, from an explicit constructor
argument, the experience (``classes_in_this_experience`` / ``classes_seen_so_far`` / ``future_classes`` of
``with_classes_timeline``, ``classnames``), the record attached to the benchmark the experience came from
(``exp.origin_stream.benchmark``), the benchmark itself (the legacy generators' ``n_classes``, ``test_stream``), or the
targets of the experiences' datasets. ``benchmark_info(bench)`` returns the attached record, or one inferred this way
from a plain Avalanche benchmark.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ctta.data.normalization import Stats

__all__ = [
    "BenchmarkInfo",
    "attached_info",
    "benchmark_info",
    "concat_datasets",
    "experience_classes",
    "infer_classnames",
    "infer_num_classes",
    "infer_test_dataset",
    "origin_benchmark",
    "origin_info",
    "required_classnames",
    "stream_classnames",
    "stream_dataset",
    "with_info",
]


def _tuple2(rows) -> tuple[tuple, ...] | None:
    """A sequence of sequences as a tuple of tuples (None stays None)."""
    return None if rows is None else tuple(tuple(r) for r in rows)


@dataclass(frozen=True, eq=False)
class BenchmarkInfo:
    """What a scenario tells strategies about its benchmark (attached as ``bench.info`` by ``with_info``).

    Only ``n_classes`` is required; a field a scenario does not know stays at its default. Sequences are stored as
    tuples. Records compare by identity (they hold datasets).

    Attributes:
        n_classes: size of the label space C (labels are ``0..C-1``).
        classnames: name of every class, index = label (None: unnamed).
        test_dataset: the whole test set as one Avalanche dataset (anytime / task-end evaluation), None: the test
            stream's experiences concatenated.
        normalization: ``(mean, std)`` the images are normalised with (test-time views, transfer datasets); a CLIP
            strategy maps them to its weights' statistics. None: the backbone's own.
        stream_classnames: class names per stream name (few-shot: ``train`` / ``test`` -> base classes, ``test_new``
            -> new classes, ``test_<dataset>`` -> that dataset's classes); empty: ``classnames`` for every stream.
        task_classes: the label ids of each train experience, in stream order (class-incremental groups,
            multi-label tasks, one dataset each on the transfer stream).
        experience_classnames: the class names of each experience, in stream order (test-time stream: its test
            experiences; transfer stream: its datasets).
        dataset_names: the catalogue dataset of each experience (transfer stream).
        multilabel: targets are multi-hot vectors (multi-label class-incremental learning).
        cumulative_test: test experience ``i`` already holds the test images of experiences ``0..i`` (evaluate one
            test experience after task ``i``, not the first ``i + 1``).
        train_dataset: the full training set in native order, indexed by ``task_indices`` (Si-Blurry).
        task_indices: indices into ``train_dataset`` of each task, in stream order; a task may be empty (Si-Blurry).
        online_experience_size: samples per online sub-experience of a Si-Blurry stream built with ``online=True``
            (``SiBlurryConfig.online_experience_size``); a strategy's ``train_mb_size`` is its own.
        split_info: the intermediate values of the Si-Blurry split (``si_blurry_split(..., return_info=True)``).
        train_augment: batch augmentation a strategy applies to every training mini-batch at every update
            (Si-Blurry's ``ctta.data.siblurry_aug.SiBlurryTrainAugment``).
        dataset_stats: the dataset's Si-Blurry constants (``ctta.data.catalogue.DatasetStats``: mean, std,
            AutoAugment policy).
        sample_indices: per test experience, the indices of its samples in the source dataset, in stream order
            (test-time stream, e.g. the ``difftpt_1k`` subset).
        n_views: views per test sample, ``views[0]`` the original image (test-time stream).
    """

    n_classes: int
    classnames: tuple[str, ...] | None = None
    test_dataset: Any = None
    normalization: Stats | None = None
    stream_classnames: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    task_classes: tuple[tuple[int, ...], ...] | None = None
    experience_classnames: tuple[tuple[str, ...], ...] | None = None
    dataset_names: tuple[str, ...] | None = None
    multilabel: bool = False
    cumulative_test: bool = False
    train_dataset: Any = None
    task_indices: tuple[tuple[int, ...], ...] | None = None
    online_experience_size: int | None = None
    split_info: Mapping[str, Any] | None = None
    train_augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    dataset_stats: Any = None
    sample_indices: tuple[tuple[int, ...], ...] | None = None
    n_views: int | None = None

    def __post_init__(self) -> None:
        if int(self.n_classes) <= 0:
            raise ValueError(f"n_classes must be positive, got {self.n_classes}")
        if self.classnames is not None and len(self.classnames) != self.n_classes:
            raise ValueError(f"{len(self.classnames)} class names for {self.n_classes} classes")
        norm = None if self.normalization is None else tuple(tuple(float(v) for v in s) for s in self.normalization)
        values = {
            "n_classes": int(self.n_classes),
            "classnames": None if self.classnames is None else tuple(self.classnames),
            "normalization": norm,
            "stream_classnames": {k: tuple(v) for k, v in self.stream_classnames.items()},
            "task_classes": _tuple2(self.task_classes),
            "experience_classnames": _tuple2(self.experience_classnames),
            "dataset_names": None if self.dataset_names is None else tuple(self.dataset_names),
            "task_indices": _tuple2(self.task_indices),
            "sample_indices": _tuple2(self.sample_indices),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def task_sizes(self) -> tuple[int, ...] | None:
        """Samples per task, in stream order (``len`` of each ``task_indices`` entry; None without them)."""
        return None if self.task_indices is None else tuple(len(t) for t in self.task_indices)

    def names_of_stream(self, stream: str | None) -> tuple[str, ...] | None:
        """Class names of the stream called ``stream``: ``stream_classnames[stream]``, else ``classnames``."""
        names = self.stream_classnames.get(stream) if stream is not None else None
        return names or self.classnames


def with_info(bench, info: BenchmarkInfo):
    """Attach ``info`` to the Avalanche benchmark ``bench`` as ``bench.info`` (scenario builders); returns ``bench``.

    Streams of Avalanche's new-style ``CLScenario`` have a ``benchmark`` field that it leaves unset; it is set here (as
    the legacy generators do), so an experience finds its benchmark's record (``origin_info``).
    """
    if not isinstance(info, BenchmarkInfo):
        raise TypeError(f"expected a BenchmarkInfo, got {type(info).__name__}")
    bench.info = info
    for stream in (getattr(bench, "streams", None) or {}).values():
        if getattr(stream, "benchmark", None) is None:
            stream.benchmark = bench
    return bench


def attached_info(bench) -> BenchmarkInfo | None:
    """The ``BenchmarkInfo`` a ctta scenario attached to ``bench``, else None (a plain Avalanche benchmark)."""
    info = _attr(bench, "info")
    return info if isinstance(info, BenchmarkInfo) else None


def benchmark_info(bench) -> BenchmarkInfo:
    """The record attached to ``bench``, else one inferred from a plain Avalanche benchmark: the class count (a legacy
    scenario's ``n_classes``, the classes timeline of its first experience, else the largest label of its streams,
    plus one), the class names of its first experience, its test stream concatenated as test set.

    Raises:
        ValueError: a plain benchmark whose class count cannot be told.
    """
    info = attached_info(bench)
    if info is not None:
        return info
    first = next((e for name in ("train_stream", "test_stream") for e in _first(_attr(bench, name))), None)
    if first is None:
        raise ValueError("cannot infer benchmark information from a benchmark without experiences")
    n = _legacy_n_classes(bench) or _timeline_classes(first) or _largest_label(bench)
    names = infer_classnames(first)
    test = _attr(bench, "test_stream")
    return BenchmarkInfo(
        n_classes=n,
        classnames=names if names is not None and len(names) == n else None,
        test_dataset=stream_dataset(test) if test is not None else None,
    )


def required_classnames(bench, who: str) -> list[str]:
    """The class names of ``bench``'s record (``benchmark_info``) for a strategy that needs them.

    Raises:
        ValueError: the record has none (names ``who``).
    """
    names = benchmark_info(bench).classnames
    if not names:
        raise ValueError(f"{who} needs a benchmark with class names (benchmark.info.classnames)")
    return list(names)


def origin_info(exp) -> BenchmarkInfo | None:
    """The record attached to the benchmark ``exp`` came from, else None."""
    return attached_info(origin_benchmark(exp))


def _attr(obj, name: str):
    """``obj.name`` or None (Avalanche experiences raise for unset or masked attributes)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # AssertionError (unset origin_stream), MaskedAttributeError (masked classes)
        return None


def _first(stream) -> Iterable:
    """The first experience of ``stream`` as a 0- or 1-element iterable (None or an empty stream: empty)."""
    if stream is None:
        return ()
    try:
        return [next(iter(stream))]
    except (StopIteration, TypeError):
        return ()


def _legacy_n_classes(bench) -> int | None:
    """``n_classes`` of Avalanche's legacy classification scenarios (``nc_benchmark``, ``ni_benchmark``), else None."""
    from avalanche.benchmarks.scenarios.deprecated.classification_scenario import ClassificationScenario

    return int(bench.n_classes) if isinstance(bench, ClassificationScenario) and bench.n_classes else None


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


def _largest_label(bench) -> int:
    """The largest label of the train and test streams' experiences, plus one."""
    classes: set[int] = set()
    for name in ("train_stream", "test_stream"):
        stream = _attr(bench, name)
        classes |= _stream_classes(stream) if stream is not None else set()
    if not classes:
        raise ValueError("cannot tell the number of classes: the benchmark's experiences carry no targets")
    return max(classes) + 1


def _timeline_classes(exp) -> int | None:
    """``max(classes_seen_so_far + future_classes) + 1`` of ``exp`` or its root experience, else None."""
    for e in (exp, _root_experience(exp)):
        seen, future = _attr(e, "classes_seen_so_far"), _attr(e, "future_classes")
        if seen is not None and future is not None and (seen or future):
            return max(int(c) for c in (*seen, *future)) + 1
    return None


def infer_num_classes(exp) -> int:
    """Size of the label space: ``n_classes`` of the origin benchmark's record (or of a legacy ``nc_benchmark``),
    the classes timeline, or the largest label of the origin stream's experiences, plus one.

    Raises:
        ValueError: none of these is available (pass ``num_classes=`` explicitly).
    """
    bench = origin_benchmark(exp)
    info = attached_info(bench)
    n = info.n_classes if info is not None else _legacy_n_classes(bench)
    n = n or _timeline_classes(exp)
    if n:
        return n
    root = _root_experience(exp)
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
    """Class names from the experience or its dataset (``classnames``), the origin benchmark's record, else
    ``default``."""
    for obj in (exp, _attr(exp, "dataset")):
        names = _attr(obj, "classnames")
        if names:
            return list(names)
    info = origin_info(exp)
    if info is not None and info.classnames:
        return list(info.classnames)
    return list(default) if default is not None else None


def stream_classnames(exp) -> list[str] | None:
    """Class names of ``exp``'s stream from its origin benchmark's record (``BenchmarkInfo.names_of_stream``: e.g.
    ``test`` -> base classes, ``test_new`` -> new classes), else None."""
    info = origin_info(exp)
    names = info.names_of_stream(_attr(_attr(exp, "origin_stream"), "name")) if info is not None else None
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
    """The test set of ``exp``'s origin benchmark: its record's ``test_dataset``, else its ``test_stream``
    concatenated."""
    bench = origin_benchmark(exp)
    if bench is None:
        return None
    info = attached_info(bench)
    if info is not None and info.test_dataset is not None:
        return info.test_dataset
    stream = _attr(bench, "test_stream")
    return stream_dataset(stream) if stream is not None else None


def warn_once(owner: Any, key: str, message: str) -> None:
    """``warnings.warn(message)`` the first time ``owner`` reports ``key``."""
    done = owner.__dict__.setdefault("_warned", set())
    if key not in done:
        done.add(key)
        warnings.warn(message, stacklevel=3)
