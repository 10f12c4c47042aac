"""How the command line fails and prints: known errors as one line on stderr with exit status 2 (ERRORS), bad
flags as one line naming the flag, whether it runs as the console script or under click's CliRunner."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from skdcache.errors import SkdError

# known exceptions -> (exit status, one-line message); the first matching type wins
ERRORS: list[tuple[type[BaseException], int, Callable[[BaseException], str]]] = [
    (SkdError, 2, lambda exc: f"error: {exc}"),  # CacheError included: the message names the fix
    (click.exceptions.Abort, 130, lambda exc: "aborted"),
    (KeyboardInterrupt, 130, lambda exc: "interrupted; rerun the same command to resume"),
]


def one_line_errors(invoke: Callable[[], object]) -> object:
    """Run the command line: a bad flag or a known error is one line on stderr and exit 2 (ERRORS)."""
    try:
        return invoke()
    except click.UsageError as exc:  # bad flags: one line naming the flag, and where to read about it
        command = exc.ctx.command_path if exc.ctx is not None else "skdcache"
        click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BaseException as exc:
        status = next(((code, message) for kind, code, message in ERRORS if isinstance(exc, kind)), None)
        if status is None or (isinstance(exc, SkdError) and os.environ.get("SKDCACHE_DEBUG") == "1"):
            raise
        click.echo(status[1](exc), err=True)
        sys.exit(status[0])


class SkdGroup(click.Group):
    """The `skdcache` group: errors print as one line however it is invoked (console script, CliRunner)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        def invoke():
            return super(SkdGroup, self).main(args, prog_name, complete_var, standalone_mode=False, **extra)

        result = one_line_errors(invoke)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result


def echo_table(rows: list[dict]) -> None:
    from skdcache.report.summary import text_table

    click.echo(text_table(rows), nl=False)
