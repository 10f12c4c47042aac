"""The commands that look after cache roots: ls, info, verify and pull."""

from __future__ import annotations

import json
import sys

import click
import numpy as np

from .options import cache_option, quiet_option
from .shell import echo_table


@click.command(name="ls")
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (full paths and keys, sizes in bytes).")
@quiet_option
def ls_command(cache, as_json) -> None:
    """List cached datasets and teachers with their state and size on disk.

    \b
    Example:
      skdcache ls --cache .skdcache
    """
    from skdcache.cache.catalog import json_row, list_root, summary_row
    from skdcache.cache.roots import open_root

    root = open_root(cache)
    entries = list_root(root)
    if as_json:
        click.echo(json.dumps([json_row(e) for e in entries], indent=2))
    else:
        click.echo(f"cache root: {root}")
        echo_table([summary_row(e) for e in entries])


@click.command()
@click.argument("path")
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@quiet_option
def info(path, cache, as_json) -> None:
    """Show one teacher cache: manifest, arrays, bytes per example and per token.

    PATH is a teacher cache folder, or the key `skdcache ls` prints (with --cache).

    \b
    Example:
      skdcache info .skdcache/<dataset>/<key>
      skdcache info <key> --cache .skdcache
    """
    from skdcache.cache.catalog import cache_info
    from skdcache.sampling.scores import stored_scores, summarize

    described = cache_info(path, cache)
    if as_json:
        scores = {
            key: {k: float(np.nanmean(v)) for k, v in s.items()} for key, s in stored_scores(described.path).items()
        }
        click.echo(json.dumps({**described.to_dict(), "scores": scores}, indent=2))
        return
    for key, value in described.fields().items():
        click.echo(f"{key}: {value}")
    click.echo("")
    echo_table(described.table())
    click.echo(f"total: {described.total()}")
    for key, scores in stored_scores(described.path).items():  # per-row scores beside the cache (--mode route)
        click.echo(f"scores (labels {key[:8]}): {summarize(scores)}")


@click.command()
@cache_option
@click.option("--teacher", "teachers", multiple=True, help="Only these teacher names.")
@quiet_option
def verify(cache, teachers) -> None:
    """Re-read every block of every teacher cache and check counts and checksums.

    Exits with status 1 when anything is damaged, naming the block and array.

    \b
    Example:
      skdcache verify --cache .skdcache
    """
    from skdcache.cache.catalog import verify_any_root

    report = verify_any_root(cache, list(teachers) or None)
    for path, problems in report.items():
        click.echo(f"{'OK  ' if not problems else 'FAIL'} {path}")
        for p in problems:
            click.echo(f"     {p}")
    bad = sum(bool(problems) for problems in report.values())
    click.echo(f"{len(report) - bad} of {len(report)} teacher caches healthy")
    if bad:
        sys.exit(1)


@click.command()
@click.argument("url")
@click.option(
    "--cache",
    metavar="PATH",
    default=None,
    help="Local cache root to mirror into [default: $SKDCACHE_HOME or ~/.cache/skdcache].",
)
@click.option("--teacher", "teachers", multiple=True, help="Only these teacher names (repeatable).")
@quiet_option
def pull(url, cache, teachers) -> None:
    """Mirror a remote cache root (s3://, gs://, https://) into a local one, verified and resumable.

    Each teacher cache is downloaded whole, checked block by block against its checksums, and only then
    put in place; an interrupted pull continues where it stopped. The local root then serves `train`,
    SkdTrainer(cache=...), `ls` and `verify` like any other.

    \b
    Example:
      skdcache pull s3://team-bucket/skd --cache .skdcache
    """
    from skdcache.cache.catalog import pull_root, summary_row

    entries = pull_root(url, cache, list(teachers) or None)
    echo_table([{**summary_row(e), "path": str(e.path)} for e in entries])
