"""The `skdcache` command line: parse flags, make one library call, render the result.

Installed as `skdcache.cli`. Flag defaults come from the library's dataclasses (cli/options.py); the library
validates; known errors print as one line (cli/shell.py: ERRORS, exit 2). Set SKDCACHE_DEBUG=1 to see the traceback.
The cache-root commands (ls, info, verify, pull) live in cli/cache_commands.py.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from skdcache.cache.spec import TARGET_KINDS
from skdcache.errors import SkdError
from skdcache.models import ARCH_SUFFIX_TO_HEAD
from skdcache.teacher.options import TargetOptions
from skdcache.training.config import MODES, TrainConfig

from .cache_commands import info, ls_command, pull, verify
from .launch import rerun_under_torchrun
from .options import (
    config_option,
    data_options,
    data_spec,
    dataclass_options,
    pick,
    quiet_option,
    sectioned,
)
from .shell import SkdGroup, echo_table

HEADS = ("auto", *ARCH_SUFFIX_TO_HEAD.values())


@click.group(cls=SkdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="skdcache")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Stochastic knowledge distillation from an offline cache of teacher outputs."""
    ctx.obj = {"progress": not quiet and os.environ.get("SKDCACHE_NO_PROGRESS") != "1"}
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    for name in ("botocore", "aiobotocore", "s3fs", "fsspec"):  # "Found credentials ..." on every s3:// command
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening; theirs flood the log
    hf_logging.set_verbosity_error()


DATA = "config data data_config split text_column text_pair_column label_column no_labels messages_column "
DATA += "chat_template end_of_turn limit max_length eval_split"
RUNNING = "device nproc quiet"


@cli.command(
    cls=sectioned(
        {
            "Data": DATA,
            "Teachers and cache": "teacher head trust_remote_code cache repair",
            "Targets stored": "top_k targets samples sample_temperature sample_seed hidden_layers hidden_tokens "
            "mlm_probability mask_seed rows_per_block",
            "Running": "batch_size " + RUNNING,
        }
    )
)
@config_option
@data_options(TargetOptions)
@click.option("--teacher", "teacher", multiple=True, help="NAME=PATH_OR_HUB_ID[@REVISION] (repeat for a team).")
@click.option(
    "--head", type=click.Choice(HEADS), default="auto", show_default=True, help="Teacher head; auto: from its config."
)
@dataclass_options(
    TargetOptions,
    {
        "top_k": {},
        "targets": {
            "type": click.Choice(TARGET_KINDS),
            "help": "Token-level targets: topk (+tail), sampled (unbiased draws), hybrid (top-k + tail draws).",
        },
        "samples": {},
        "sample_temperature": {},
        "sample_seed": {},
        "hidden_layers": {"help": "Also store hidden states: last, all, or a list like 2,4,6."},
        "hidden_tokens": {"type": click.Choice(["cls", "all"]), "help": "Hidden states of: cls token, all tokens."},
        "mlm_probability": {},
        "mask_seed": {},
        "eval_split": {"help": "Labelled split for the teacher metric."},
        "batch_size": {},
        "device": {"help": "auto, cpu, cuda or cuda:N."},
        "rows_per_block": {},
        "trust_remote_code": {"help": "Allow model code from the model repository."},
        "repair": {"help": "Verify complete caches and recompute only their damaged blocks."},
    },
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes (runs this command under torchrun).",
)
@quiet_option
@click.pass_obj
def precompute(obj, teacher, head, nproc, **kw) -> None:
    """Run every teacher once over the data and cache its targets.

    \b
    Example:
      skdcache precompute --data data/tweets --split train \\
          --teacher big=out/teacher-l6 --teacher small=out/teacher-l3 --cache .skdcache
    """
    from dataclasses import replace

    from skdcache.precompute import precompute as run
    from skdcache.teacher.load import TeacherSpec

    team = [replace(TeacherSpec.parse(text), head=head) for text in teacher]
    opts = TargetOptions(**pick(TargetOptions, kw), progress=obj["progress"])
    opts.check()  # bad values fail here, before torchrun starts or anything is loaded
    if nproc > 1:  # the same command, one copy per process, ranks splitting the blocks
        rerun_under_torchrun(nproc)
    results = run(data_spec(kw), team, kw["cache"], opts)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        echo_table([r.row() for r in results])


@cli.command(
    cls=sectioned(
        {
            "Data": DATA + " eval_rows test_split",
            "Cache and teachers": "cache teachers teacher_path",
            "Student": "student student_layers student_head freeze_embeddings trust_remote_code",
            "Targets and loss": "mode temperature alpha beta layer_map full_logits",
            "Sampling": "sampling sampling_temperature pilot_steps learned_lr",
            "Optimisation": "epochs max_steps batch_size grad_accum lr weight_decay warmup_ratio grad_clip seed",
            "Output": "output overwrite resume eval_every",
            "Running": "num_workers " + RUNNING,
        }
    )
)
@config_option
@data_options(TrainConfig)
@dataclass_options(
    TrainConfig, "eval_split eval_rows test_split"
)  # help texts: the fields of skdcache.training.config.TrainConfig
@click.option("--teachers", default="all", show_default=True, help="Comma list of cached teacher names, or all.")
@dataclass_options(
    TrainConfig,
    "student student_layers student_head freeze_embeddings mode sampling sampling_temperature output overwrite "
    "epochs max_steps batch_size lr weight_decay warmup_ratio grad_clip grad_accum temperature alpha beta "
    "layer_map eval_every seed num_workers device pilot_steps learned_lr full_logits resume trust_remote_code",
    student_head={"type": click.Choice(HEADS)},
    mode={"type": click.Choice(MODES)},
    output={"type": click.Path(file_okay=False)},
)
@click.option(
    "--teacher-path",
    multiple=True,
    metavar="NAME=PATH",
    help="online: where a teacher's model is now, if it moved since precompute (repeatable).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="DDP processes (reruns under torchrun).",
)
@quiet_option
@click.pass_obj
def train(obj, nproc, teachers, teacher_path, **kw) -> None:
    """Train a student from cached teachers (one sampled teacher per step).

    \b
    Example:
      skdcache train --data data/tweets --cache .skdcache --teachers all \\
          --student out/teacher-l3 --student-layers 1 --mode skd --sampling teacher-rank --output runs/skd
    """
    from skdcache.train import train as run

    names = None if teachers in ("all", "", None) else [n.strip() for n in teachers.split(",")]
    fields = pick(TrainConfig, {k: v for k, v in kw.items() if k != "data"})
    moved = list(teacher_path) or None
    cfg = TrainConfig(data=data_spec(kw), teachers=names, teacher_path=moved, progress=obj["progress"], **fields)
    cfg.check()  # bad values fail here, before torchrun starts or anything is loaded
    if nproc > 1:  # the same command, one replica per process, each reading its slice of every batch
        if kw["batch_size"] % nproc:  # before torchrun starts: the library checks it again in every rank
            raise SkdError(f"--batch-size {kw['batch_size']} is the global batch: use a multiple of --nproc {nproc}")
        rerun_under_torchrun(nproc)
    record = run(cfg)
    if record.get("rank", 0) != 0:
        return  # under torchrun, rank 0 reports
    click.echo(f"student ({record['student_parameters'] / 1e6:.1f}M params) -> {kw['output']}/student")
    if record["final"]:
        click.echo("final: " + ", ".join(f"{k}={v:.4f}" for k, v in record["final"].items() if isinstance(v, float)))
    if record["teacher_histogram"]:
        click.echo("teachers sampled: " + json.dumps(record["teacher_histogram"]))


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Write PNG plots here.")
@click.option("--markdown", is_flag=True, help="Print a markdown table.")
@quiet_option
def report(runs, plots, markdown) -> None:
    """Compare training runs side by side and plot their curves.

    \b
    Example:
      skdcache report runs/* --plots runs/plots
    """
    from skdcache.report.plots import plot_runs
    from skdcache.report.runs import load_runs
    from skdcache.report.summary import markdown_table, summary_rows

    folders = [Path(r) for r in runs if (Path(r) / "run.json").exists()]  # `runs/*` may match runs/plots
    skipped = [r for r in runs if not (Path(r) / "run.json").exists()]
    if not folders:
        raise SkdError(f"no run folder (with run.json) among {', '.join(runs)}; pass `skdcache train --output` folders")
    if skipped:
        click.echo(f"skipped (no run.json): {', '.join(skipped)}", err=True)
    records = load_runs(folders)
    rows = summary_rows(records)
    if markdown:
        click.echo(markdown_table(rows), nl=False)
    else:
        echo_table(rows)
    for path in plot_runs(records, Path(plots)) if plots else []:
        click.echo(f"wrote {path}")


@cli.command()
@click.option(
    "--output", type=click.Path(file_okay=False), default="demo-out", show_default=True, help="Folder of the demo runs."
)
@click.option("--fresh", is_flag=True, help="Retrain teachers and students even if their runs exist.")
@quiet_option
@click.pass_obj
def demo(obj, output, fresh) -> None:
    """Run the whole workflow on the bundled tweets with real pretrained encoders (about 5-10 min on CPU).

    \b
    Example:
      skdcache demo --output demo-out
    """
    from skdcache.demo import run_demo

    run_demo(output, fresh=fresh, progress=obj["progress"])


for command in (ls_command, info, verify, pull):
    cli.add_command(command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
