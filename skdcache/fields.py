"""Settings fields that carry their own `--help` line and valid range, and the one check of those ranges.

`flag(2.0, "KD temperature.", above=0)` is a dataclass field whose help text and range live next to its default;
cli/options.py shows both in `--help`, and `check_ranges` refuses a value outside the range in one line naming
the flag, before anything is loaded or written (the CLI, `train`, `precompute` and SkdTrainer all call it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from skdcache.errors import SkdError


def flag(
    default: Any,
    help_text: str,
    *,
    min: float | None = None,  # inclusive lower bound
    above: float | None = None,  # exclusive lower bound
    max: float | None = None,  # inclusive upper bound
    below: float | None = None,  # exclusive upper bound
) -> Any:
    """A field with its `--help` line and valid range (None is always allowed for optional fields)."""
    bounds = {k: v for k, v in {"min": min, "above": above, "max": max, "below": below}.items() if v is not None}
    return dataclasses.field(default=default, metadata={"help": help_text, **bounds})


def _num(x: float) -> str:
    return f"{x:g}"


def range_text(metadata: Any) -> str | None:
    """`> 0`, `>= 1`, `in [0, 1]`, `in [0, 1)`; None when the field has no range."""
    lo = ("[", metadata["min"]) if "min" in metadata else ("(", metadata["above"]) if "above" in metadata else None
    hi = ("]", metadata["max"]) if "max" in metadata else (")", metadata["below"]) if "below" in metadata else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return None


def in_range(value: Any, metadata: Any) -> bool:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return True
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (
        ("min" in metadata and value < metadata["min"])
        or ("above" in metadata and value <= metadata["above"])
        or ("max" in metadata and value > metadata["max"])
        or ("below" in metadata and value >= metadata["below"])
    )


def check_ranges(obj: Any, flags: dict[str, str] | None = None) -> None:
    """Raise `SkdError` for the first field of dataclass `obj` outside its range, naming its flag and range.

    `flags` renames fields whose flag is not `--field-name` (e.g. DataSpec.source is `--data`).
    """
    for field in dataclasses.fields(obj):
        text = range_text(field.metadata)
        if text is None:
            continue
        value = getattr(obj, field.name)
        if not in_range(value, field.metadata):
            name = (flags or {}).get(field.name, "--" + field.name.replace("_", "-"))
            raise SkdError(f"{name} {value}: must be {text}")


def check_values(cls: type, **values: Any) -> None:
    """`check_ranges` for keyword arguments named like fields of dataclass `cls` (e.g. SkdTrainer's)."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    for name, value in values.items():
        text = range_text(meta[name])
        if text is not None and not in_range(value, meta[name]):
            raise SkdError(f"{name}={value}: must be {text}")
