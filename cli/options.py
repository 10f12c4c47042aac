"""Click options generated from the library's dataclasses, so every default lives once: in the dataclass.

`dataclass_options(TrainConfig, {"lr": {}, "mode": {"type": click.Choice(MODES)}})` adds `--lr` and `--mode`
with the field's default and type; the dict gives the order and anything a field cannot say (help, choices).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import click

SCALARS = (bool, int, float, str)


def _scalar(hint: Any) -> type:
    """`int | None` -> int; the flag's value type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    return hint if hint in SCALARS else str


def field_option(cls: type, name: str, flag: str | None = None, dest: str | None = None, **kw: Any) -> Callable:
    """`--name-with-dashes` for field `name` of dataclass `cls`: default and type from the field.

    `flag` and `dest` rename the flag and its parameter (config-file keys follow the parameter name).
    """
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    kind = _scalar(typing.get_type_hints(cls)[name])
    default = field.default
    settings: dict[str, Any] = {}
    if default is dataclasses.MISSING:
        settings["required"] = True
    elif kind is bool:
        settings.update(is_flag=True, default=default)
    else:
        settings.update(type=kind, default=default, show_default=default is not None)
    settings.update(kw)
    return click.option(flag or "--" + name.replace("_", "-"), dest or name, **settings)


def dataclass_options(cls: type, spec: dict[str, dict[str, Any]]) -> Callable:
    """Decorate a command with one `field_option` per entry of `spec`, in its order (help shows that order)."""

    def decorate(f: Callable) -> Callable:
        for name, kw in reversed(spec.items()):
            f = field_option(cls, name, **kw)(f)
        return f

    return decorate


def pick(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of dataclass `cls` (the parsed flags it takes)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}
