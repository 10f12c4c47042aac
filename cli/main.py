"""The `skdcache` command line: parse flags, make one library call, print a table.

Installed as `skdcache.cli`. Library errors (SkdError) are printed as one line without a traceback;
set SKDCACHE_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
import tomllib

from skdcache.errors import SkdError


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


def data_options(f):
    """The flags that say which rows to use; identical for precompute and train."""
    options = [
        click.option("--data", "data", required=True, help="Hub dataset name, a directory of split files, or a file."),
        click.option("--data-config", default=None, help="Hub dataset configuration name."),
        click.option("--split", default="train", show_default=True),
        click.option("--text-column", default="text", show_default=True),
        click.option("--text-pair-column", default=None, help="Second text column for sentence-pair tasks."),
        click.option(
            "--label-column", default="label", show_default=True, help="Class names, ints, or floats (regression)."
        ),
        click.option("--no-labels", is_flag=True, help="The data has no labels (token-level targets only)."),
        click.option("--limit", type=int, default=None, help="Use only the first N rows of the split."),
        click.option("--max-length", type=int, default=128, show_default=True),
        click.option(
            "--cache",
            "cache",
            type=click.Path(file_okay=False),
            default=None,
            help="Cache root [default: $SKDCACHE_HOME or ~/.cache/skdcache].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def data_spec(kw: dict, split: str | None = None):
    from skdcache.data import DataSpec

    return DataSpec(
        source=kw["data"],
        split=split or kw["split"],
        text_column=kw["text_column"],
        text_pair_column=kw["text_pair_column"],
        label_column=None if kw["no_labels"] else kw["label_column"],
        config_name=kw["data_config"],
        limit=kw["limit"],
    )


def cache_root(value: str | None) -> Path | str:
    """A local cache root, or a URL (s3://, gs://, http(s)://, memory://) kept as text for fsspec."""
    from skdcache.cache.remote import is_url
    from skdcache.cache.store import default_cache_root

    if is_url(value):
        return value
    if value and value.startswith("file://"):
        value = value[len("file://") :]
    return Path(value).expanduser() if value else default_cache_root()


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        click.echo("(nothing)")
        return
    columns = columns or list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="skdcache")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Stochastic knowledge distillation from an offline cache of teacher outputs."""
    ctx.obj = {"progress": not quiet and os.environ.get("SKDCACHE_NO_PROGRESS") != "1"}
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening; theirs flood the log
    hf_logging.set_verbosity_error()


@cli.command()
@config_option
@data_options
@click.option("--teacher", "teacher", multiple=True, help="NAME=PATH_OR_HUB_ID[@REVISION] (repeat for a team).")
@click.option("--head", type=click.Choice(["auto", "sequence", "mlm", "causal"]), default="auto", show_default=True)
@click.option("--top-k", type=int, default=32, show_default=True, help="Token-level heads: top-k log-probs kept.")
@click.option("--hidden-layers", default=None, help="Also store hidden states: last, all, or a list like 2,4,6.")
@click.option("--hidden-tokens", type=click.Choice(["cls", "all"]), default="cls", show_default=True)
@click.option("--mlm-probability", type=float, default=0.15, show_default=True)
@click.option("--mask-seed", type=int, default=0, show_default=True)
@click.option("--eval-split", default="validation", show_default=True, help="Labelled split for the teacher metric.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--rows-per-block", type=int, default=1024, show_default=True, help="Rows per shard (power of two).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model repository.")
@click.option("--repair", is_flag=True, help="Verify complete caches and recompute only their damaged blocks.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Processes (runs this command under torchrun).")
@click.pass_obj
def precompute(obj, teacher, head, nproc, **kw) -> None:
    """Run every teacher once over the data and cache its targets.

    \b
    Example:
      skdcache precompute --data data/tweets --split train \\
          --teacher big=out/teacher-l6 --teacher small=out/teacher-l3 --cache .skdcache
    """
    from skdcache.precompute import TargetOptions
    from skdcache.precompute import precompute as run
    from skdcache.teachers import TeacherSpec

    if nproc > 1:  # the same command, one copy per process, ranks splitting the blocks
        _rerun_under_torchrun(nproc)

    team = []
    for text in teacher:
        spec = TeacherSpec.parse(text)
        team.append(TeacherSpec(spec.name, spec.source, spec.revision, head))
    rpb = kw["rows_per_block"]
    if rpb <= 0 or rpb & (rpb - 1):
        raise SkdError(f"--rows-per-block {rpb} must be a power of two")
    opts = TargetOptions(
        max_length=kw["max_length"],
        top_k=kw["top_k"],
        hidden_layers=kw["hidden_layers"],
        hidden_tokens=kw["hidden_tokens"],
        mlm_probability=kw["mlm_probability"],
        mask_seed=kw["mask_seed"],
        batch_size=kw["batch_size"],
        device=kw["device"],
        rows_per_block=rpb,
        eval_split=kw["eval_split"] or None,
        trust_remote_code=kw["trust_remote_code"],
        progress=obj["progress"],
        repair=kw["repair"],
    )
    results = run(data_spec(kw), team, cache_root(kw["cache"]), opts)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    rows = []
    for r in results:
        metric = r.manifest.metric
        rows.append(
            {
                "teacher": r.name,
                "status": r.status,
                "seconds": f"{r.seconds:.1f}",
                "metric": f"{metric.name}={metric.value:.4f}" if metric else "-",
                "path": str(r.path),
            }
        )
    print_table(rows)


@cli.command(name="ls")
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Cache root.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls_command(cache, as_json) -> None:
    """List cached datasets and teachers with their state and size on disk.

    \b
    Example:
      skdcache ls --cache .skdcache
    """
    from skdcache.cache.catalog import CacheEntry, list_caches, summary_row
    from skdcache.cache.remote import RemoteRoot

    root = cache_root(cache)
    if isinstance(root, str):  # a URL: published groups only, sizes as stored remotely
        remote = RemoteRoot(root)
        entries = [
            CacheEntry(remote.mirror / fp / m.cache_key, d, m, stored_bytes=remote.stored_bytes(fp, m.cache_key))
            for fp, d, m in remote.manifests()
        ]
    else:
        entries = list_caches(root)
    rows = [summary_row(e) for e in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(f"cache root: {root}")
        print_table(rows)


@cli.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(path, as_json) -> None:
    """Show one teacher cache: manifest, arrays, bytes per example and per token.

    \b
    Example:
      skdcache info .skdcache/<dataset>/<key>
    """
    from skdcache.cache.catalog import array_sizes, human_bytes
    from skdcache.cache.manifest import read_manifest

    manifest = read_manifest(Path(path))
    sizes = array_sizes(Path(path), manifest)
    if as_json:
        click.echo(json.dumps({"manifest": manifest.to_dict(), "arrays": sizes}, indent=2))
        return
    m = manifest.to_dict()
    for key in ("state", "cache_key", "teacher", "tokenizer_hash", "dataset", "targets", "metric", "versions"):
        value = m[key]
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    click.echo("")
    table = []
    for a in sizes:
        table.append(
            {
                "array": a["array"],
                "shape": "x".join(map(str, a["shape"])),
                "dtype": a["dtype"],
                "chunk/shard": f"{a['chunks'][0]}/{a['shards'][0]}",
                "stored": human_bytes(a["stored"]),
                "B/example": f"{a['per_example']:.1f}",
                "B/token": f"{a['per_token']:.1f}" if a["per_token"] else "-",
            }
        )
    print_table(table)
    total = sum(a["stored"] for a in sizes)
    click.echo(f"total: {human_bytes(total)}, {total / manifest.dataset.n_rows:.1f} B/example")


@cli.command()
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Cache root.")
@click.option("--teacher", "teachers", multiple=True, help="Only these teacher names.")
def verify(cache, teachers) -> None:
    """Re-read every block of every teacher cache and check counts and checksums.

    Exits with status 1 when anything is damaged, naming the block and array.

    \b
    Example:
      skdcache verify --cache .skdcache
    """
    from skdcache.cache.catalog import verify_root

    root = cache_root(cache)
    if isinstance(root, str):  # a URL: mirror the published groups, then check the local copies
        from skdcache.cache.remote import RemoteRoot

        remote = RemoteRoot(root)
        for fp, _, m in remote.manifests():
            if not teachers or m.teacher.name in teachers:
                remote.fetch(fp, m.cache_key)
        root = remote.mirror
    report = verify_root(root, list(teachers) or None)
    bad = 0
    for path, problems in report.items():
        click.echo(f"{'OK  ' if not problems else 'FAIL'} {path}")
        for p in problems:
            click.echo(f"     {p}")
        bad += bool(problems)
    click.echo(f"{len(report) - bad} of {len(report)} teacher caches healthy")
    if bad:
        sys.exit(1)


@cli.command()
@config_option
@data_options
@click.option("--eval-split", default="validation", show_default=True, help="Labelled split for evaluation.")
@click.option("--test-split", default=None, help="Split evaluated once at the end (reported, never selects).")
@click.option("--teachers", default="all", show_default=True, help="Comma list of cached teacher names, or all.")
@click.option("--student", required=True, help="Pretrained path/hub id, or a config .json (fresh weights).")
@click.option("--student-layers", default=None, help="Keep only these layers: N (first N) or a list like 0,2.")
@click.option("--student-head", type=click.Choice(["auto", "sequence", "mlm", "causal"]), default="auto")
@click.option("--freeze-embeddings", is_flag=True, help="Keep the word embeddings fixed (much faster on CPU).")
@click.option(
    "--mode", type=click.Choice(["skd", "single", "average", "none", "online"]), default="skd", show_default=True
)
@click.option(
    "--sampling",
    default="uniform",
    show_default=True,
    help="uniform | teacher-rank | student-rank | learned | weights=0.2,0.3,0.5",
)
@click.option(
    "--sampling-temperature",
    type=float,
    default=0.05,
    show_default=True,
    help="Rank samplers: p = softmax(metric / temperature).",
)
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.1, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--temperature", type=float, default=2.0, show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of the KD term vs labels.")
@click.option("--beta", type=float, default=0.0, show_default=True, help="Weight of the hidden-state loss.")
@click.option("--layer-map", default=None, help="Hidden-state map student:teacher, e.g. 2:6,4:12.")
@click.option("--eval-every", type=int, default=0, show_default=True, help="Steps between evaluations (0: epoch).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-workers", type=int, default=1, show_default=True, help="Loader processes reading targets.")
@click.option("--device", default="auto", show_default=True)
@click.option("--pilot-steps", type=int, default=None, help="student-rank: steps per pilot (default: half the run).")
@click.option(
    "--learned-lr", type=float, default=0.1, show_default=True, help="learned: logit step per typical advantage."
)
@click.option(
    "--full-logits", is_flag=True, help="online + MLM/causal: distil from the full live vocabulary, not top-k."
)
@click.option("--resume", is_flag=True, help="Continue OUTPUT/checkpoint exactly where it stopped.")
@click.option("--trust-remote-code", is_flag=True)
@click.option("--nproc", type=int, default=1, show_default=True, help="DDP processes (reruns under torchrun).")
@click.pass_obj
def train(obj, nproc, **kw) -> None:
    """Train a student from cached teachers (one sampled teacher per step).

    \b
    Example:
      skdcache train --data data/tweets --cache .skdcache --teachers all \\
          --student out/teacher-l3 --student-layers 1 --mode skd --sampling teacher-rank --output runs/skd
    """
    from skdcache.train import TrainConfig
    from skdcache.train import train as run

    if nproc > 1:  # the same command, one replica per process, each reading its slice of every batch
        if kw["batch_size"] % nproc:
            raise SkdError(f"--batch-size {kw['batch_size']} is the global batch: use a multiple of --nproc {nproc}")
        _rerun_under_torchrun(nproc)
    names = None if kw["teachers"] in ("all", "", None) else [n.strip() for n in kw["teachers"].split(",")]
    fields = {k: v for k, v in kw.items() if k in TrainConfig.__dataclass_fields__ and k not in ("data", "teachers")}
    cfg = TrainConfig(data=data_spec(kw), teachers=names, progress=obj["progress"], **fields)
    record = run(cfg)
    if record.get("rank", 0) != 0:
        return  # under torchrun, rank 0 reports
    final = record["final"]
    click.echo(f"student ({record['student_parameters'] / 1e6:.1f}M params) -> {kw['output']}/student")
    if final:
        click.echo("final: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if isinstance(v, float)))
    if record["teacher_histogram"]:
        click.echo("teachers sampled: " + json.dumps(record["teacher_histogram"]))


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Write PNG plots here.")
@click.option("--markdown", is_flag=True, help="Print a markdown table.")
def report(runs, plots, markdown) -> None:
    """Compare training runs side by side and plot their curves.

    \b
    Example:
      skdcache report runs/* --plots runs/plots
    """
    from skdcache.report import load_runs, plot_runs, summary_rows

    records = load_runs([Path(r) for r in runs])
    rows = summary_rows(records)
    if markdown:
        cols = list(rows[0])
        click.echo("| " + " | ".join(cols) + " |")
        click.echo("|" + "---|" * len(cols))
        for r in rows:
            click.echo("| " + " | ".join(str(r[c]) for c in cols) + " |")
    else:
        print_table(rows)
    if plots:
        for path in plot_runs(records, Path(plots)):
            click.echo(f"wrote {path}")


@cli.command()
@click.option("--output", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--fresh", is_flag=True, help="Retrain teachers and students even if their runs exist.")
@click.pass_obj
def demo(obj, output, fresh) -> None:
    """Run the whole workflow on the bundled tweets with real pretrained encoders (about 5-10 min on CPU).

    \b
    Example:
      skdcache demo --output demo-out
    """
    from skdcache.demo import run_demo

    run_demo(output, fresh=fresh, progress=obj["progress"])


def _rerun_under_torchrun(nproc: int) -> None:
    import subprocess

    args = []
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if not a.startswith("--nproc="):
            args.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "skdcache",
        *args,
    ]
    sys.exit(subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}))


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SkdError as exc:
        if os.environ.get("SKDCACHE_DEBUG") == "1":
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
