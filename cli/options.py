"""Click options generated from the library's dataclasses, so every default lives once: in the dataclass.

`dataclass_options(TrainConfig, {"lr": {}, "mode": {"type": click.Choice(MODES)}})` adds `--lr` and `--mode`
with the field's default and type; the dict gives the order and anything a field cannot say (help, choices).
A field's help can live on the field itself, as `metadata["help"]` (`skdcache.fields.flag`). The flags that
several commands share (`--config`, `--cache`, the data flags) are defined here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Any

import click
import tomllib

from skdcache.data.rows import DataSpec
from skdcache.fields import range_text

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
    if "help" in field.metadata:  # the dataclass documents its own fields (e.g. skdcache.fields.flag)
        settings["help"] = field.metadata["help"]
    settings.update(kw)
    limits = range_text(field.metadata)  # the range the library checks (skdcache.fields), said once
    if limits and "help" in settings:
        settings["help"] = f"{settings['help']} Range: {limits}."
    return click.option(flag or "--" + name.replace("_", "-"), dest or name, **settings)


def dataclass_options(cls: type, spec: dict[str, dict[str, Any]] | str, **extra: dict[str, Any]) -> Callable:
    """Decorate a command with one `field_option` per field named in `spec`, in its order (help shows that order).

    `spec` maps field names to `click.option` settings, or is a space-separated list of field names whose
    settings (choices, path types) come as keyword arguments: for fields that carry their own help.
    """
    if isinstance(spec, str):
        spec = {name: extra.get(name, {}) for name in spec.split()}

    def decorate(f: Callable) -> Callable:
        for name, kw in reversed(spec.items()):
            f = field_option(cls, name, **kw)(f)
        return f

    return decorate


def pick(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of dataclass `cls` (the parsed flags it takes)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


# ---- flags shared by several commands ---------------------------------------------------------------------
def _load_config(ctx: click.Context, _param, value: str | None):
    """`--config file.toml`: keys mirror the flags (dashes or underscores), flags given on the line win."""
    if not value:
        return value
    try:
        with open(value, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}") from exc
    defaults = {k.replace("-", "_"): v for k, v in raw.items()}
    known = {p.name for p in ctx.command.params if p.name not in ("config", "help", "quiet")} | {"teachers"}
    for key in defaults:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise click.BadParameter(
                f"unknown key {key!r} in {value}{hint}; keys mirror the flags of `skdcache {ctx.command.name}`"
            )
    teachers = defaults.pop("teachers", None)
    if isinstance(teachers, dict):  # [teachers] table: name = "path"
        defaults["teacher"] = [f"{k}={v}" for k, v in teachers.items()]
    elif teachers is not None:
        defaults["teachers"] = ",".join(teachers) if isinstance(teachers, list) else teachers
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="TOML file whose keys mirror these flags.",
)
cache_option = click.option(
    "--cache",
    "cache",
    metavar="PATH|URL",
    default=None,
    help="Cache root: a path, file:// or fsspec URL (s3://, https://) [default: $SKDCACHE_HOME or ~/.cache/skdcache].",
)


def data_options(options_cls: type) -> Callable:
    """The flags that say which rows to use (DataSpec), identical for precompute and train, plus --cache."""

    def decorate(f: Callable) -> Callable:
        options = [
            field_option(
                DataSpec, "source", "--data", "data", help="Hub dataset name, a directory of splits, or a file."
            ),
            field_option(DataSpec, "config_name", "--data-config", "data_config", help="Hub dataset configuration."),
            field_option(DataSpec, "split", help="Split to use (a file name train/validation/test in a folder)."),
            field_option(DataSpec, "text_column", help="Column holding the text."),
            field_option(DataSpec, "text_pair_column", help="Second text column for sentence-pair tasks."),
            field_option(DataSpec, "label_column", help="Class names, ints, or floats (regression)."),
            click.option("--no-labels", is_flag=True, help="The data has no labels (token-level targets only)."),
            field_option(
                DataSpec,
                "messages_column",
                help="Chat data for causal LMs: a column of [{role, content}] lists, rendered with the chat "
                "template; losses only on assistant tokens (implies --no-labels).",
            ),
            field_option(
                DataSpec,
                "chat_template",
                type=click.Path(dir_okay=False),
                help="A Jinja chat template file, instead of the tokenizer's.",
            ),
            click.option(
                "--end-of-turn/--no-end-of-turn",
                "end_of_turn",
                default=True,
                show_default=True,
                help="Chat data: the end-of-turn marker after each assistant message carries loss too.",
            ),
            field_option(DataSpec, "limit"),
            field_option(options_cls, "max_length"),
            cache_option,
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def data_spec(kw: dict) -> DataSpec:
    return DataSpec(
        source=kw["data"],
        split=kw["split"],
        text_column=kw["text_column"],
        text_pair_column=kw["text_pair_column"],
        label_column=None if kw["no_labels"] or kw["messages_column"] else kw["label_column"],
        config_name=kw["data_config"],
        limit=kw["limit"],
        messages_column=kw["messages_column"],
        chat_template=kw["chat_template"],
        end_of_turn=kw["end_of_turn"],
    )


def quiet_option(f: Callable) -> Callable:
    """`-q` after the subcommand too (`skdcache train -q ...`), as before it."""

    def callback(ctx: click.Context, _param, value: bool) -> None:
        if value and ctx.obj is not None:
            ctx.obj["progress"] = False

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=callback, help="No progress bars.")(
        f
    )


class SectionedCommand(click.Command):
    """A command whose `--help` lists its flags in titled sections (`sections`: title -> parameter names);
    flags not named in any section are listed last, under "Other options"."""

    sections: dict[str, list[str]] = {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed: set[str] = set()
        helps = [p.name for p in self.get_params(ctx) if p is self.get_help_option(ctx)]
        rest = [n for n in records if n not in helps]
        for title, names in [*self.sections.items(), ("Other options", rest), ("Help", helps)]:
            rows = [records[n] for n in names if records.get(n) and n not in placed]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def sectioned(sections: dict[str, str]) -> type[SectionedCommand]:
    """A `SectionedCommand` class for `@cli.command(cls=...)`; each section is a space-separated name list."""
    return type("Sectioned", (SectionedCommand,), {"sections": {k: v.split() for k, v in sections.items()}})
