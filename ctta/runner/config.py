"""YAML configs into nested frozen dataclasses, with typed ``key=value`` overrides.

A run config names three components (scenario, backbone, strategy); each section is ``{name: ..., **params}``
and its params are validated against the config dataclass the component registered with. Unknown keys raise
a ``ConfigError`` naming the valid keys; values are converted to the annotated types (``"5e-3"`` -> float,
lists -> tuples) and a value that cannot be converted raises naming the key.

A config file may extend others: ``_base_: path`` (relative to the file) or a list of paths; the bases merge in
order, then the file's own keys over them (nested mappings merge, any other value of the child replaces the base's).
``configs/tpt.yaml`` is ``_base_: _base/tpt.yaml`` plus the datasets it runs on (``_datasets_``, chosen with
``scenario.dataset=NAME``: ``ctta.runner.compose``). Runs write the resolved config (no ``_base_`` left).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ctta.fields import field_range, range_error, ranged


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class Section:
    """A component section: registered ``name`` and its typed ``params`` (an instance of its config class)."""

    name: str
    params: Any = None


def _key(default: Any, help: str, example: str, shown: str | None = None, **bounds: Any) -> Any:
    """A run-level field: its default, a one-line ``help`` and an ``example`` override (``ctta run --help``; ``shown``
    replaces the default there), and an optional numeric range (``ge=0``: ``ctta.fields.ranged``)."""
    meta = {"help": help, "example": example} | ({"shown": shown} if shown else {})
    if callable(default) and not isinstance(default, str):
        return field(default_factory=default, metadata=meta)
    return ranged(default, metadata=meta, **bounds)


@dataclass(frozen=True)
class LogConfig:
    out_dir: str = _key(
        "runs/default", "results.json, metrics.csv, config.yaml, log.txt, plots", "runs/lr02",
        shown="runs/<config name>/<dataset>/seed<seed>",
    )  # fmt: skip
    progress: bool = _key(True, "progress bar over the stream", "false")
    plot: bool = _key(True, "PNG of accuracy over the stream", "false")
    loggers: tuple[Literal["text", "csv", "tensorboard", "interactive"], ...] = _key(
        ("text",), "Avalanche loggers: text (log.txt), csv (csv/), tensorboard, interactive", "[text,csv]"
    )
    interactive: bool = _key(False, "also attach Avalanche's InteractiveLogger (console, verbose)", "true")
    checkpoint_every: int = _key(0, "online CL: a resumable checkpoint every N stream samples (0: off)", "500", ge=0)
    f_last_variant: Literal["official", "standard"] = _key("official", "F_last: MVP reference's | standard", "standard")


@dataclass(frozen=True)
class RunConfig:
    scenario: Section
    backbone: Section
    strategy: Section
    seed: int = _key(1, "seeds the stream order, initialisation and augmentation", "2")
    device: str = _key("auto", "auto | cpu | cuda | cuda:N | mps", "cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _key(
        "auto", "auto: bf16 autocast on CUDA (fp16 if bf16 is unsupported), fp32 on CPU", "fp32"
    )
    log: LogConfig = _key(LogConfig, "where and how outputs are written (log.* keys)", "")
    resume: bool = _key(False, "continue from the checkpoint whose fingerprint matches this run", "true")
    overwrite: bool = _key(False, "replace an earlier run's results in log.out_dir (checkpoints are kept)", "true")


def run_keys_help() -> str:
    """The run-level keys, one line each with an example override, its meaning and default (``ctta run --help``)."""
    lines = []
    for cls, prefix in ((RunConfig, ""), (LogConfig, "log.")):
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("example"):  # the sections and ``log`` itself
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = "[" + ",".join(default) + "]" if isinstance(default, tuple) else str(default).lower()
            shown = meta.get("shown", shown)
            lines.append(f"  {prefix + f.name + '=' + meta['example']:<28} {meta['help']} (default: {shown})")
    return "\n".join(lines)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_SECTION_REGISTRIES = {"scenario": "SCENARIOS", "backbone": "BACKBONES", "strategy": "STRATEGIES"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ``ConfigError`` naming ``key``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (tuple, Sequence, list) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        return tuple(_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: Mapping[str, Any] | None, where: str = "") -> Any:
    """Build the dataclass ``cls`` from ``data``; unknown keys raise naming the valid keys."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__} ({cls.__name__}); valid keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
            msg = range_error(key, kwargs[name], field_range(f))
            if msg:
                raise ConfigError(msg)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r} ({cls.__name__})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the config class's own checks (__post_init__)
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _section(kind: str, data: Any) -> Section:
    from ctta import registry

    if isinstance(data, Section):
        return data
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(f"{kind}: expected a mapping with a 'name' key, got {data!r}")
    reg = getattr(registry, _SECTION_REGISTRIES[kind])
    try:
        entry = reg.get(str(data["name"]))
    except KeyError as e:
        raise ConfigError(f"{kind}.name: {e.args[0]}") from None
    params = {k: v for k, v in data.items() if k != "name"}
    if entry.config is None:
        if params:
            raise ConfigError(f"{kind} {entry.name!r} takes no parameters, got {sorted(params)}")
        return Section(entry.name, None)
    return Section(entry.name, from_dict(entry.config, params, kind))


def build_run_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (as read from YAML) into a ``RunConfig``.

    ``precheck`` runs first (no torch, no Avalanche); the sections are then validated against their components'
    config dataclasses (which imports the components' modules).
    """
    rest = precheck(data)
    sections = {k: _section(k, data[k]) for k in _SECTION_REGISTRIES}
    return RunConfig(**sections, **{f.name: getattr(rest, f.name) for f in dataclasses.fields(rest)})


def precheck(data: Mapping[str, Any]) -> Any:
    """Everything checkable before the stack loads (raises ``ConfigError``); returns the validated run-level keys.

    Top-level and run-level keys (``seed``, ``device``, ``precision``, ``log.*``, ...), each section's component
    name, keys and declared numeric ranges (read from the source by ``ctta.registry_index``), and ``device=cuda`` on
    a machine that certainly has no CUDA (a CPU build of torch or no NVIDIA driver).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid keys: {sorted(valid)}")
    for kind in _SECTION_REGISTRIES:
        if kind not in data:
            raise ConfigError(f"missing required section {kind!r}")
    rest = from_dict(_RunLevel, {k: v for k, v in data.items() if k not in _SECTION_REGISTRIES})
    if not DEVICE_PATTERN.fullmatch(rest.device):
        raise ConfigError(f"device: {rest.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    for kind in _SECTION_REGISTRIES:
        _precheck_section(kind, data[kind])
    if rest.device.startswith("cuda") and cuda_certainly_absent():
        raise ConfigError(f"device={rest.device} but CUDA is not available on this machine; use device=cpu or "
                          "device=auto")  # fmt: skip
    return rest


def _precheck_section(kind: str, data: Any) -> None:
    """The component name and keys of one section, from the source index (a component registered at run time, e.g.
    by a script, is left to ``_section``)."""
    from ctta import registry, registry_index

    if isinstance(data, Section):
        return
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(f"{kind}: expected a mapping with a 'name' key, got {data!r}")
    name, reg = str(data["name"]), getattr(registry, _SECTION_REGISTRIES[kind])
    index = registry_index.entries(kind)
    if name not in index:
        if name not in reg.names():
            valid = sorted(set(index) | set(reg.names()))
            raise ConfigError(f"{kind}.name: unknown {reg.kind} {name!r}; valid {reg.kind} names: {valid}")
        return
    entry, params = index[name], sorted(k for k in data if k != "name")
    if entry.config is None and params:
        raise ConfigError(f"{kind} {name!r} takes no parameters, got {params}")
    unknown = sorted(set(params) - set(params if entry.fields is None else entry.fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {kind} ({entry.config}); valid keys: {sorted(entry.fields)}")
    for key, rng in entry.ranges.items():  # numbers as written (strings are converted, then checked, by from_dict)
        msg = range_error(f"{kind}.{key}", data[key], rng) if key in data else None
        if msg:
            raise ConfigError(msg)


def cuda_certainly_absent() -> bool:
    """True when this machine has no usable CUDA, known without importing torch: torch is a CPU build (``+cpu``
    version), the machine is a Mac, or (Linux) no GPU device node or driver is there (NVIDIA ``/dev/nvidia*`` or
    ``/proc/driver/nvidia``, WSL's ``/dev/dxg``, ROCm's ``/dev/kfd``); on Windows, no ``nvcuda`` library. False
    means "maybe": the run checks again with torch."""
    import ctypes.util
    import importlib.metadata
    import sys

    try:
        if "+cpu" in importlib.metadata.version("torch"):
            return True
    except importlib.metadata.PackageNotFoundError:
        pass
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        nodes = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")
        return not any(Path(n).exists() for n in nodes)
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is None
    return False


def _run_level_dataclass() -> type:
    """``RunConfig`` without its sections: the run-level keys, validated before any component is looked up."""
    hints = typing.get_type_hints(RunConfig)
    fields = [
        (f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f in dataclasses.fields(RunConfig)
        if f.name not in _SECTION_REGISTRIES
    ]
    return dataclasses.make_dataclass("RunLevel", fields, frozen=True)


_RunLevel = _run_level_dataclass()


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML scalars/lists)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value (e.g. strategy.lr=0.01)")
        key, raw = ov.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {ov!r}: empty key component")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


BASE_KEY = "_base_"


def merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Nested merge: mappings merge key by key, any other value (lists included) of ``child`` replaces ``base``'s."""
    out = _deepcopy(dict(base))
    for k, v in child.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = _deepcopy(v)
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and resolve its ``_base_`` chain into one mapping.

    ``_base_: other.yaml`` (a path relative to the file) or a list of them: the bases are merged in order, then the
    file's own keys over them (nested mappings merge, the child's keys win). A missing base, a cycle or a YAML
    syntax error raises ``ConfigError`` naming the file.
    """
    p = Path(path)
    chain = (*_chain, p.resolve())
    via = f" (base of {_chain[-1]})" if _chain else ""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}{via} (see configs/ for the shipped ones)")
    if p.resolve() in _chain:
        cycle = " -> ".join(str(c) for c in (*_chain[_chain.index(p.resolve()) :], p.resolve()))
        raise ConfigError(f"{p}: _base_ cycle: {cycle}")
    try:
        with open(p) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{via}: not valid YAML{where}: {what}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a run config must be a YAML mapping")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{p}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = merge(merged, read_yaml(p.parent / b, chain))
    return merge(merged, data)


def load_config(path: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or a mapping), resolve its ``_base_`` files, apply overrides and validate it.

    A file listing ``_datasets_`` takes ``scenario.dataset`` from the overrides (``ctta.runner.compose``). Without
    ``log.out_dir`` the run's folder is ``runs/<file stem or strategy>/<dataset>/seed<seed>`` (``default_out_dir``).
    """
    from ctta.runner.compose import choose_dataset, default_out_dir

    if isinstance(path, Mapping):
        data, name = _deepcopy(path), None
        if BASE_KEY in data:
            raise ConfigError(f"{BASE_KEY} is only understood in config files (paths are relative to the file)")
    else:
        data, name = read_yaml(path), Path(path).stem
    data = apply_overrides(choose_dataset(data, overrides, str(path) if name else "config"), overrides)
    cfg = build_run_config(data)
    if isinstance(data.get("log"), Mapping) and "out_dir" in data["log"]:
        return cfg
    return dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, out_dir=default_out_dir(cfg, name)))


def _deepcopy(m: Any) -> Any:
    if isinstance(m, Mapping):
        return {k: _deepcopy(v) for k, v in m.items()}
    if isinstance(m, list):
        return [_deepcopy(v) for v in m]
    return m


def to_dict(obj: Any) -> Any:
    """A plain (YAML/JSON-serialisable) dict of a config; sections flatten to ``{name, **params}``."""
    if isinstance(obj, Section):
        params = to_dict(obj.params) if obj.params is not None else {}
        return {"name": obj.name, **params}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with ``load_config``)."""
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
