"""Method+protocol files composed with a dataset chosen on the command line.

A config file may list the datasets its protocol runs on under ``_datasets_`` (in the file or its ``_base_``
files), each with the settings that are that dataset's own (``{}`` when it has none)::

    _base_: _base/tpt.yaml
    _datasets_:
      dtd: {}
      imagenet_r: {scenario: {subset: difftpt_1k}}

``ctta run configs/tpt.yaml scenario.dataset=dtd`` then resolves as: the file (with its bases), the chosen dataset's
settings over it, the command-line overrides over both. Such a file needs ``scenario.dataset``; leaving it out, or
naming a dataset the file does not list, raises a ``ConfigError`` naming ``scenario.dataset`` and the valid values.

A config that does not set ``log.out_dir`` writes to ``runs/<config name>/<dataset>/seed<seed>`` (``default_out_dir``):
one folder per method+protocol file, dataset and seed, so that the runs of one file do not collide.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DATASETS_KEY = "_datasets_"


def choose_dataset(data: dict[str, Any], overrides: Sequence[str], where: str = "config") -> dict[str, Any]:
    """Merge the chosen dataset's own settings (``_datasets_[scenario.dataset]``) into ``data``; remove the key.

    Args:
        data: the file's mapping, bases resolved, overrides not yet applied.
        overrides: the command line's ``key=value`` overrides (read here only for ``scenario.dataset``).
        where: the file, for error messages.

    Returns:
        ``data`` without ``_datasets_``, with the chosen dataset's settings merged over it.

    Raises:
        ConfigError: ``_datasets_`` is not a mapping, or ``scenario.dataset`` is missing or not listed.
    """
    from ctta.runner.config import ConfigError, apply_overrides, merge

    per_dataset = data.pop(DATASETS_KEY, None)
    if per_dataset is None:
        return data
    if not isinstance(per_dataset, Mapping) or not all(
        v is None or isinstance(v, Mapping) for v in per_dataset.values()
    ):
        raise ConfigError(f"{where}: {DATASETS_KEY} must map each dataset name to its own settings ({{}} for none)")
    valid = ", ".join(sorted(per_dataset))
    scenario = apply_overrides(copy.deepcopy(data), overrides).get("scenario")
    dataset = scenario.get("dataset") if isinstance(scenario, Mapping) else None
    if dataset is None:
        raise ConfigError(f"{where} needs a dataset: add scenario.dataset=NAME to the command line; valid values: "
                          f"{valid}")  # fmt: skip
    if dataset not in per_dataset:
        raise ConfigError(f"scenario.dataset: {dataset!r} is not a dataset of {where}; valid values: {valid}")
    return merge(data, per_dataset[dataset] or {})


def default_out_dir(cfg, name: str | None = None) -> str:
    """The output folder of a run whose config leaves ``log.out_dir`` out: ``runs/<name>/<dataset>/seed<seed>``.

    Args:
        cfg: the validated ``RunConfig``.
        name: the method+protocol name (the config file's stem); the strategy's name when None.

    Returns:
        The folder; the dataset part is the scenario's ``dataset``, its ``datasets`` joined by ``+``, or the
        scenario's name when it has neither.
    """
    params = cfg.scenario.params
    datasets = tuple(getattr(params, "datasets", ()) or ())
    dataset = "+".join(datasets) if datasets else getattr(params, "dataset", None) or cfg.scenario.name
    return str(Path("runs") / (name or cfg.strategy.name) / str(dataset) / f"seed{cfg.seed}")
