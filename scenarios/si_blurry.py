"""Si-Blurry online continual-learning streams (Moon et al., "Online Continual Learning on Hierarchical Label
Expansion"/MVP, ICCV 2023, arXiv 2308.09303).

Reference: moonjunyyy/Si-Blurry@c4024ce, ``utils/online_sampler.py::OnlineSampler`` (re-implemented; no code
copied). The stream generator reproduces the reference exactly: one CPU ``torch.Generator`` seeded with ``seed`` and
the same call order (``randperm(C)``; disjoint cuts; blurry cuts; blurred-sample cuts and pool ``randperm``; one
``randperm`` per task), over the dataset in its native order.

Deviations from the reference code:
- The branch is chosen by ``stream_mode`` ("stochastic" | "fixed") instead of the positional
  ``selection_size`` quirk (``--selection_size`` 0 selects the fixed branch); there is no ``rnd_NM`` flag.
- Classes beyond D+Bc are unused as in the reference, but a warning with their count is emitted.
- In the fixed branch the ``|P| mod T`` pool samples that the reference drops are also dropped, with a warning.
- Invalid arguments raise ``ValueError`` instead of failing later.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ctta.fields import ranged
from ctta.registry import SCENARIOS

STREAM_MODES = ("stochastic", "fixed")


def _datasets() -> list[str]:
    """The catalogue's ``cl`` datasets with Si-Blurry statistics (cifar100, tinyimagenet, imagenet_r, digits)."""
    from ctta.data import catalogue

    return [e.name for e in catalogue.entries("cl") if e.stats is not None]


# ----------------------------------------------------------------------------------------------------------
# Stream generator
# ----------------------------------------------------------------------------------------------------------
def _check_split_args(targets: Sequence[int], n_tasks: int, disjoint_pct, blurry_pct, n_classes) -> int:
    """Validate the arguments of ``si_blurry_split``; returns the number of classes C."""
    if len(targets) == 0:
        raise ValueError("si_blurry_split: targets is empty (the training set has no samples)")
    for name, pct in (("disjoint_pct", disjoint_pct), ("blurry_pct", blurry_pct)):
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            raise ValueError(f"si_blurry_split: {name} must be an integer percentage in 0..100, got {pct!r}")
    lo, hi = min(targets), max(targets)
    if lo < 0:
        raise ValueError(f"si_blurry_split: targets must be class ids >= 0, found {lo}")
    c = hi + 1 if n_classes is None else int(n_classes)
    if hi >= c:
        raise ValueError(f"si_blurry_split: target {hi} out of range for n_classes={c}")
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"si_blurry_split: n_tasks must be a positive integer, got {n_tasks!r}")
    if n_tasks > c:
        raise ValueError(f"si_blurry_split: n_tasks={n_tasks} is more than the number of classes ({c})")
    return c


def _cuts(total: int, n_tasks: int, g: torch.Generator) -> list[int]:
    """``[0] + sorted(randint(0, total, (T-1,))) + [total]`` (one generator call)."""
    inner = torch.randint(0, total, (n_tasks - 1,), generator=g).sort().values.tolist()
    return [0, *inner, total]


def _class_owners(perm: list[int], n_d: int, n_b: int, n_tasks: int, stochastic: bool, g: torch.Generator):
    """Map class -> (task, is_blurry) for the used classes (steps 4-5 / fixed reshape)."""
    if stochastic:
        s = _cuts(n_d, n_tasks, g) if n_d > 0 else [0] * (n_tasks + 1)
        b = _cuts(n_b, n_tasks, g) if n_b > 0 else [0] * (n_tasks + 1)
    else:  # fixed branch: D/T and Bc/T classes per task
        s = [t * (n_d // n_tasks) for t in range(n_tasks + 1)]
        b = [t * (n_b // n_tasks) for t in range(n_tasks + 1)]
    owner: dict[int, tuple[int, bool]] = {}
    for t in range(n_tasks):
        owner.update({c: (t, False) for c in perm[s[t] : s[t + 1]]})
        owner.update({c: (t, True) for c in perm[n_d + b[t] : n_d + b[t + 1]]})
    return owner, s, b


def _blur_quotas(blurry_idx: list[list[int]], blurry_pct: int, stochastic: bool, g: torch.Generator):
    """Per-task donation counts q_t (stochastic: random cuts of K; fixed: M% of each task's blurry samples)."""
    n_tasks = len(blurry_idx)
    if not stochastic:
        return [len(b) * blurry_pct // 100 for b in blurry_idx], None
    k_total = sum(len(b) for b in blurry_idx) * blurry_pct // 100  # K = floor(S_b * M / 100)
    if k_total == 0:
        return [0] * n_tasks, [0] * (n_tasks + 1)
    k = _cuts(k_total, n_tasks, g)
    return [k[t + 1] - k[t] for t in range(n_tasks)], k


def _blur(blurry_idx: list[list[int]], quotas: list[int], stochastic: bool, g: torch.Generator) -> None:
    """Steps 8-9: move the first q_t blurry samples of each task to a pool, shuffle it, deal it back (in place)."""
    n_tasks = len(blurry_idx)
    pool: list[int] = []
    for t in range(n_tasks):
        pool += blurry_idx[t][: quotas[t]]
        blurry_idx[t] = blurry_idx[t][quotas[t] :]
    pool = torch.tensor(pool, dtype=torch.long)[torch.randperm(len(pool), generator=g)].tolist()
    if not stochastic:
        per_task = len(pool) // n_tasks
        if len(pool) % n_tasks:
            warnings.warn(
                f"si_blurry_split (fixed): {len(pool) % n_tasks} blurred samples are dropped "
                f"(pool of {len(pool)} dealt evenly over {n_tasks} tasks, as in the reference)",
                stacklevel=3,
            )
        quotas = [per_task] * n_tasks
    for t in range(n_tasks):
        blurry_idx[t] += pool[: quotas[t]]
        pool = pool[quotas[t] :]


def si_blurry_split(
    targets: Sequence[int],
    n_tasks: int = 5,
    disjoint_pct: int = 50,
    blurry_pct: int = 10,
    seed: int = 1,
    stochastic: bool = True,
    *,
    n_classes: int | None = None,
    return_info: bool = False,
):
    """Dataset indices of each Si-Blurry task, in stream order (``OnlineSampler`` of the reference).

    Args:
        targets: class id of every training sample, in the dataset's native order.
        n_tasks: T, number of tasks.
        disjoint_pct: N, percentage of disjoint classes (0..100).
        blurry_pct: M, percentage of blurry-class samples that are blurred into other tasks (0..100).
        seed: seed of the CPU ``torch.Generator`` driving the whole split.
        stochastic: True = the published random-size branch; False = the fixed i-Blurry-like branch.
        n_classes: C (default ``max(targets) + 1``).
        return_info: also return a dict with the intermediate values (perm, s, b, k, q, class lists).

    Returns:
        ``list[list[int]]`` of T index lists (a task may be empty), or ``(indices, info)`` with ``return_info``.

    Raises:
        ValueError: empty targets, percentages outside 0..100, non-positive ``n_tasks`` or more tasks than classes.
    """
    c = _check_split_args(targets, n_tasks, disjoint_pct, blurry_pct, n_classes)
    n_d = (c * disjoint_pct // 100) // n_tasks * n_tasks  # D
    n_b = (c - n_d) // n_tasks * n_tasks  # Bc
    if c - n_d - n_b > 0:
        warnings.warn(
            f"si_blurry_split: {c - n_d - n_b} of {c} classes are unused (only D+Bc = {n_d}+{n_b} classes fit "
            f"{n_tasks} tasks with disjoint_pct={disjoint_pct}); their samples are not in the stream",
            stacklevel=2,
        )
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(c, generator=g).tolist()  # π
    owner, s, b = _class_owners(perm, n_d, n_b, n_tasks, stochastic, g)
    disjoint_idx, blurry_idx = _scan(targets, owner, n_tasks)
    quotas, k = _blur_quotas(blurry_idx, blurry_pct, stochastic, g)
    if not stochastic or sum(quotas) > 0:
        _blur(blurry_idx, quotas, stochastic, g)
    tasks = []
    for t in range(n_tasks):
        lst = disjoint_idx[t] + blurry_idx[t]
        tasks.append(torch.tensor(lst, dtype=torch.long)[torch.randperm(len(lst), generator=g)].tolist())
    if not return_info:
        return tasks
    info = {"perm": perm, "s": s, "b": b, "k": k, "q": quotas, "D": n_d, "Bc": n_b, "n_classes": c}
    info["disjoint_classes"] = [perm[s[t] : s[t + 1]] for t in range(n_tasks)]
    info["blurry_classes"] = [perm[n_d + b[t] : n_d + b[t + 1]] for t in range(n_tasks)]
    return tasks, info


def _scan(targets: Sequence[int], owner: dict, n_tasks: int) -> tuple[list[list[int]], list[list[int]]]:
    """Step 6: per-task disjoint and blurry index lists in native order (unused classes skipped)."""
    disjoint_idx: list[list[int]] = [[] for _ in range(n_tasks)]
    blurry_idx: list[list[int]] = [[] for _ in range(n_tasks)]
    for i, y in enumerate(targets):
        own = owner.get(int(y))
        if own is not None:
            (blurry_idx if own[1] else disjoint_idx)[own[0]].append(i)
    return disjoint_idx, blurry_idx


# ----------------------------------------------------------------------------------------------------------
# Avalanche benchmark
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiBlurryConfig:
    """Si-Blurry scenario config (defaults = the published setting).

    Attributes:
        dataset: a ``cl`` dataset of ``ctta.data.catalogue`` with Si-Blurry statistics: "cifar100" |
            "tinyimagenet" | "imagenet_r" | "digits" (bundled, offline smoke runs).
        root: parent folder of the dataset folders (catalogue: ``cifar-100-python``, ``tiny-imagenet-200``,
            ``imagenet-r``).
        n_tasks: T.
        disjoint_pct: N, percentage of disjoint classes.
        blurry_pct: M, percentage of blurred samples among the blurry-class samples.
        stream_mode: "stochastic" (published) | "fixed" (i-Blurry-like).
        online_experience_size: samples per online sub-experience with ``online=True`` (64; the stream's arrival
            granularity; a strategy's incoming batch is its own ``batch_size``).
        online: split the train stream into online sub-experiences of ``online_experience_size`` samples, in order
            (task boundaries kept in ``origin_experience``/``is_last_subexp``; an empty task yields no
            sub-experience); False = one experience per task (the online template slices it in order).
        img_size: model input size S (224; small for tiny models).
        augment: AutoAugment + random crop + flip in training (False: only Resize + Normalize).
        per_sample_augmentation: draw augmentation parameters per image instead of per batch (the reference
            draws them per batch).
        imagenet_r_test_center_crop: ``Resize(256)`` -> ``CenterCrop(224)`` for ImageNet-R test images.
    """

    dataset: str = "cifar100"
    root: str = "data"
    n_tasks: int = ranged(5, ge=1)
    disjoint_pct: int = 50
    blurry_pct: int = 10
    stream_mode: str = "stochastic"
    online_experience_size: int = 64
    online: bool = False
    img_size: int = 224
    augment: bool = True
    per_sample_augmentation: bool = False
    imagenet_r_test_center_crop: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in _datasets():
            raise ValueError(f"SiBlurryConfig.dataset={self.dataset!r}; valid: {_datasets()}")
        if self.stream_mode not in STREAM_MODES:
            raise ValueError(f"SiBlurryConfig.stream_mode={self.stream_mode!r}; valid: {list(STREAM_MODES)}")
        if self.online_experience_size < 1 or self.img_size < 1 or self.n_tasks < 1:
            raise ValueError("SiBlurryConfig: online_experience_size, img_size and n_tasks must be positive")


def _ordered_split(exp, size: int):
    """Consecutive sub-experiences of ``size`` samples of ``exp``, in order, with correct task-boundary flags.

    Avalanche 0.6's default splitter never flags the last sub-experience when ``size`` divides the experience
    length, which would skip that task's task-end evaluation; this splitter always does.
    """
    from avalanche.benchmarks.scenarios.online import OnlineCLExperience

    n = len(exp.dataset)
    starts = list(range(0, n, size))
    for k, a in enumerate(starts):
        yield OnlineCLExperience(
            dataset=exp.dataset.subset(range(a, min(a + size, n))),
            origin_experience=exp,
            is_first_subexp=k == 0,
            is_last_subexp=k == len(starts) - 1,
            sub_stream_length=len(starts),
            access_task_boundaries=True,
        )


def _online_stream(task_stream, batch_size: int):
    """Ordered online sub-experiences of ``batch_size`` samples (no shuffle, last batch of a task kept)."""
    from avalanche.benchmarks.scenarios import split_online_stream
    from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline

    online = split_online_stream(task_stream, batch_size, experience_split_strategy=_ordered_split)
    return with_classes_timeline(EagerCLStream("train", list(online)))


def si_blurry_benchmark(
    train_ds,
    test_ds,
    *,
    n_tasks: int = 5,
    disjoint_pct: int = 50,
    blurry_pct: int = 10,
    seed: int = 1,
    stochastic: bool = True,
    online_experience_size: int = 64,
    online: bool = False,
    n_classes: int | None = None,
    classnames: Sequence[str] | None = None,
    train_augment=None,
    dataset_stats=None,
):
    """Turn a train/test dataset pair (with ``.targets``) into a Si-Blurry Avalanche benchmark.

    The train stream holds one ``DatasetExperience`` per task (indices from ``si_blurry_split``, in stream
    order; a task may be empty), or with ``online=True`` ordered sub-experiences of ``online_experience_size``
    samples. The test stream is one experience with the full test set. Both are decorated with
    ``with_classes_timeline``.

    Args:
        train_ds: training set in native order, samples ``(x, y)``, with ``.targets``.
        test_ds: test set with ``.targets``.
        n_tasks, disjoint_pct, blurry_pct, seed, stochastic: see ``si_blurry_split``.
        online_experience_size: online sub-experience size (recorded as ``bench.info.online_experience_size``).
        online: split the train stream into online sub-experiences.
        n_classes: C (default: ``len(train_ds.classes)`` if present, else ``max(targets) + 1``).
        classnames: class names (default ``train_ds.classes`` when they are strings).
        train_augment: batch augmentation strategies apply at every update (recorded in the benchmark's record).
        dataset_stats: the dataset's ``DatasetStats`` (recorded in the benchmark's record).

    Returns:
        A ``CLScenario`` whose record ``bench.info`` (a ``BenchmarkInfo``) holds ``n_classes``, ``classnames``,
        ``test_dataset``, ``train_dataset`` (the full training set in native order, which ``task_indices`` index),
        ``task_indices`` (and so ``task_sizes``), ``online_experience_size``, ``split_info``, ``train_augment`` and
        ``dataset_stats``.
    """
    from ctta.benchmark_builders import make_benchmark
    from ctta.data.avl import as_avl_dataset
    from ctta.templates.benchmark_info import BenchmarkInfo, with_info

    targets = [int(t) for t in train_ds.targets]
    n_classes, classnames = _class_info(train_ds, targets, n_classes, classnames)
    tasks, info = si_blurry_split(
        targets, n_tasks, disjoint_pct, blurry_pct, seed, stochastic, n_classes=n_classes, return_info=True
    )
    full = as_avl_dataset(train_ds, targets)
    test = as_avl_dataset(test_ds)
    bench = make_benchmark([full.subset(ix) for ix in tasks], [test])
    if online:
        from avalanche.benchmarks.scenarios import CLScenario

        bench = CLScenario([_online_stream(bench.train_stream, online_experience_size), bench.test_stream])
    record = BenchmarkInfo(
        n_classes=n_classes,
        classnames=classnames,
        test_dataset=test,
        train_dataset=full,
        task_indices=tasks,
        online_experience_size=online_experience_size,
        split_info=info,
        train_augment=train_augment,
        dataset_stats=dataset_stats,
    )
    return with_info(bench, record)


def _class_info(train_ds, targets: list[int], n_classes: int | None, classnames):
    """C (``len(train_ds.classes)`` or ``max(targets) + 1``) and string class names when available."""
    classes = getattr(train_ds, "classes", None)
    if n_classes is None:
        n_classes = len(classes) if classes else max(targets) + 1
    if classnames is None and classes:
        names = list(classes)
        classnames = names if all(isinstance(n, str) for n in names) and len(names) == n_classes else None
    return n_classes, classnames


@SCENARIOS.register("si_blurry", config=SiBlurryConfig)
def build_si_blurry(cfg: SiBlurryConfig, *, seed: int):
    """Build the Si-Blurry benchmark of ``cfg`` with stream seed ``seed``.

    Besides what ``si_blurry_benchmark`` records, the benchmark's record carries ``train_augment``, the batch
    augmentation module (``ctta.data.siblurry_aug``) that strategies apply to every training mini-batch at every
    update, and ``dataset_stats`` (normalisation and AutoAugment policy).
    """
    from ctta.data import catalogue
    from ctta.data.siblurry_aug import SiBlurryTrainAugment, siblurry_test_transform

    entry = catalogue.entry(cfg.dataset, "cl")
    stats = entry.stats
    test_tf = siblurry_test_transform(stats.mean, stats.std, cfg.img_size)
    kwargs = {"img_size": cfg.img_size, "channels": 3} if entry.bundled else {}
    if cfg.dataset == "imagenet_r":
        kwargs["test_center_crop"] = cfg.imagenet_r_test_center_crop
    train_ds, test_ds = entry.load("cl", cfg.root, train_transform=None, test_transform=test_tf, **kwargs)
    augment = SiBlurryTrainAugment(
        stats.mean,
        stats.std,
        autoaugment=stats.autoaugment if cfg.augment else None,
        img_size=cfg.img_size,
        per_sample_augmentation=cfg.per_sample_augmentation,
        random_crop_flip=cfg.augment,
    )
    return si_blurry_benchmark(
        train_ds,
        test_ds,
        n_tasks=cfg.n_tasks,
        disjoint_pct=cfg.disjoint_pct,
        blurry_pct=cfg.blurry_pct,
        seed=seed,
        stochastic=cfg.stream_mode == "stochastic",
        online_experience_size=cfg.online_experience_size,
        online=cfg.online,
        train_augment=augment,
        dataset_stats=stats,
    )
