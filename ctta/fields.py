"""Numeric ranges declared next to config fields, checked in one place.

A config dataclass declares a field's valid range where the field is defined::

    lr: float = ranged(5e-3, gt=0)            # learning rate: positive
    n_experiences: int = ranged(5, ge=1)      # at least one experience

The range lives in the field's metadata (``dataclasses.field(metadata={"range": Range(...)})``), so the dataclass
stays an ordinary frozen dataclass; ``range_error`` checks one value and ``check_ranges`` every field of an instance.
The runner's config loader calls it for every section, so a bad value is one sentence at load time, e.g.
``strategy.lr=-0.01 is out of range: set strategy.lr to a value > 0``. Torch-free (configs load before torch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Range", "ranged", "field_range", "range_error", "check_ranges"]

RANGE_KEY = "range"


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field (``None``: unbounded); ``gt``/``lt`` exclusive, ``ge``/``le`` inclusive."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: Any) -> bool:
        """True when ``value`` (a number; ``None`` and non-numbers always pass) lies in the range."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        """The range in words: ``> 0``, ``>= 1``, ``>= 0 and <= 1``."""
        parts = [f"{op} {_num(b)}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if b is not None]  # fmt: skip
        return " and ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def ranged(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, **field_kwargs) -> Any:
    """A dataclass field with a declared numeric range (``dataclasses.field`` plus ``metadata["range"]``)."""
    meta = dict(field_kwargs.pop("metadata", None) or {}) | {RANGE_KEY: Range(ge, gt, le, lt)}
    return dataclasses.field(default=default, metadata=meta, **field_kwargs)


def field_range(f: dataclasses.Field) -> Range | None:
    """The range declared on field ``f`` (None if it declares none)."""
    return f.metadata.get(RANGE_KEY)


def range_error(key: str, value: Any, rng: Range | None) -> str | None:
    """The one-sentence error for ``key=value`` outside ``rng`` (None when it fits)."""
    if rng is None or rng.contains(value):
        return None
    return f"{key}={value!r} is out of range: set {key} to a value {rng.describe()}"


def check_ranges(obj: Any, where: str = "") -> None:
    """Raise ``ValueError`` (the first out-of-range field of dataclass instance ``obj``) naming ``where.field``."""
    for f in dataclasses.fields(obj):
        msg = range_error(f"{where}.{f.name}" if where else f.name, getattr(obj, f.name), field_range(f))
        if msg:
            raise ValueError(msg)
