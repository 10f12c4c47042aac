"""`skdcache report` building blocks on synthetic run directories (no training, no caches)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from skdcache.errors import SkdError
from skdcache.report.plots import plot_runs
from skdcache.report.runs import load_runs
from skdcache.report.summary import aggregate_rows, markdown_table, summary_rows, text_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEACHERS = ["bert-base", "roberta-base"]


def write_run(
    root: Path,
    name: str,
    *,
    mode: str,
    sampling: str = "uniform",
    seed: int = 0,
    final: float | None = 0.7,
    learned: bool = False,
    steps: int = 50,
) -> Path:
    """A finished run directory shaped like `run_record.record_run` and the training loop write it."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    teachers = [] if mode == "none" else TEACHERS
    histogram = {} if mode in ("none", "average") else {"bert-base": steps // 2 + 5, "roberta-base": steps // 2 - 5}
    history = [[round(0.5 + 0.004 * s, 4), round(0.5 - 0.004 * s, 4)] for s in range(1, steps + 1)]
    lines = []
    for step in range(1, steps + 1):
        line = {"step": step, "loss": 2.0 / step + 0.01 * (step % 3), "ce": 0.5, "lr": 1e-4}
        if mode != "none":
            line["kd"] = 0.3
            line["teacher"] = "bert-base" if step % 2 else "roberta-base"
        if learned:
            line["probs"] = history[step - 1]
        lines.append(line)
        if step % 25 == 0 and final is not None:
            lines.append({"step": step, "eval": {"primary": "accuracy", "accuracy": final - 0.05 + 0.002 * step}})
    final_dict = {"primary": "accuracy", "accuracy": final, "f1_macro": 0.6, "matthews": 0.4} if final else {}
    run = {
        "config": {
            "mode": mode,
            "sampling": sampling,
            "seed": seed,
            "student": "tiny",
            "teachers": None,
            "data": {"source": "glue/sst2", "split": "train"},
        },
        "dataset_fingerprint": "abc",
        "teachers": [
            {"name": t, "cache_key": "k", "path": "/c", "num_parameters": 110_000_000, "metric": None} for t in teachers
        ],
        "student_parameters": 13_040_000,
        "steps": steps,
        "final": final_dict,
        "best": {**final_dict, "accuracy": final + 0.01, "step": 25} if final else None,
        "teacher_histogram": histogram,
        "sampler": {"kind": sampling, "probs": [0.5, 0.5]} if mode == "skd" else None,
        "learned_history": history if learned else None,
        "seconds": 12.345,
        "steps_per_second": steps / 12.345,
        "peak_rss_mib": 1234.4,
        "peak_cuda_mib": None,
        "device": "cpu",
    }
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    # deliberately out of display order: skd/learned, none, skd/uniform
    return [
        write_run(tmp_path, "skd-learned", mode="skd", sampling="learned", seed=1, final=0.73, learned=True),
        write_run(tmp_path, "baseline", mode="none", sampling="uniform", seed=0, final=0.65),
        write_run(tmp_path, "skd-uniform", mode="skd", sampling="uniform", seed=0, final=0.7125),
    ]


def test_load_runs_splits_training_and_eval_lines(runs: list[Path]) -> None:
    records = load_runs(runs)
    assert [r.name for r in records] == ["skd-learned", "baseline", "skd-uniform"]
    learned = records[0]
    assert learned.path == runs[0]
    assert len(learned.metrics) == 50 and all("eval" not in m for m in learned.metrics)
    assert [e["step"] for e in learned.evals] == [25, 50]
    assert learned.evals[0]["primary"] == "accuracy"


def test_summary_rows_values_and_order(runs: list[Path]) -> None:
    rows = summary_rows(load_runs(runs))
    assert [r["run"] for r in rows] == ["baseline", "skd-learned", "skd-uniform"]  # none first, then skd by sampling
    assert len({tuple(r) for r in rows}) == 1  # identical keys, same order
    assert list(rows[0]) == [
        "run",
        "mode",
        "sampling",
        "teachers",
        "seed",
        "student params",
        "metric",
        "final",
        "best",
        "steps",
        "time (s)",
        "steps/s",
        "peak RSS MiB",
    ]
    baseline, learned, uniform = rows
    assert baseline["sampling"] == "-" and baseline["teachers"] == "-"
    assert learned["sampling"] == "learned" and learned["seed"] == 1
    assert uniform == {
        "run": "skd-uniform",
        "mode": "skd",
        "sampling": "uniform",
        "teachers": "bert-base,roberta-base",
        "seed": 0,
        "student params": "13.0M",
        "metric": "accuracy",
        "final": "0.7125",
        "best": "0.7225@25",
        "steps": 50,
        "time (s)": "12.3",
        "steps/s": "4.05",
        "peak RSS MiB": "1234",
    }


def test_summary_rows_without_eval_split(tmp_path: Path) -> None:
    rows = summary_rows(load_runs([write_run(tmp_path, "noeval", mode="single", final=None)]))
    assert rows[0]["metric"] == "-" and rows[0]["final"] == "-" and rows[0]["best"] == "-"
    assert rows[0]["sampling"] == "-"


def test_aggregate_mean_std_over_seeds(tmp_path: Path) -> None:
    paths = [
        write_run(tmp_path, "u0", mode="skd", sampling="uniform", seed=0, final=0.70),
        write_run(tmp_path, "u1", mode="skd", sampling="uniform", seed=1, final=0.72),
        write_run(tmp_path, "n0", mode="none", seed=0, final=0.65),
    ]
    rows = aggregate_rows(load_runs(paths))
    assert [(r["mode"], r["sampling"], r["n"]) for r in rows] == [("none", "-", 1), ("skd", "uniform", 2)]
    skd = rows[1]
    assert skd["teachers"] == "bert-base,roberta-base" and skd["metric"] == "accuracy"
    assert skd["mean"] == pytest.approx(0.71)
    assert skd["std"] == pytest.approx(statistics.stdev([0.70, 0.72]))  # sample std, ~0.01414
    assert skd["mean ± std"] == "0.7100 ± 0.0141"
    assert rows[0]["std"] == 0.0
    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| mode | sampling | teachers | metric | n | mean | std | mean ± std |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[3].startswith("| skd | uniform | bert-base,roberta-base | accuracy | 2 | 0.7100 | 0.0141 |")


def test_text_table_aligns_columns() -> None:
    rows = [{"run": "skd", "final": "0.7100"}, {"run": "none-long-name", "final": "-"}]
    assert text_table(rows).splitlines() == [
        "run             final ",
        "--------------  ------",
        "skd             0.7100",
        "none-long-name  -     ",
    ]
    assert text_table(rows, ["final"]).splitlines()[0] == "final "
    assert text_table([]) == "(nothing)\n"


def test_plot_runs_writes_pngs(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "plots"
    paths = plot_runs(load_runs(runs), out)
    assert sorted(p.name for p in paths) == ["learned.png", "loss.png", "metric.png", "teachers.png"]
    for p in paths:
        assert p.parent == out
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 1000


def test_plot_runs_skips_missing_data(runs: list[Path], tmp_path: Path) -> None:
    paths = plot_runs(load_runs([runs[1], runs[2]]), tmp_path / "p")  # no learned run
    assert sorted(p.name for p in paths) == ["loss.png", "metric.png", "teachers.png"]
    assert not (tmp_path / "p" / "learned.png").exists()
    only_baseline = plot_runs(load_runs([runs[1]]), tmp_path / "q")  # mode none: no sampled teachers either
    assert sorted(p.name for p in only_baseline) == ["loss.png", "metric.png"]


def test_load_runs_without_run_json(tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(SkdError, match="run.json") as info:
        load_runs([unfinished])
    assert str(unfinished) in str(info.value) and "\n" not in str(info.value)


def test_loss_plot_shows_a_quantity_every_run_shares(runs: list[Path], tmp_path: Path) -> None:
    """Labels-only and KD runs optimise different totals: loss.png plots their common label CE."""
    from skdcache.report.plots import loss_key

    assert loss_key(load_runs(runs)) == "ce"
    no_ce = write_run(tmp_path, "lm", mode="skd")
    metrics = no_ce / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "ce"}) + "\n" for x in lines))
    assert loss_key(load_runs([*runs, no_ce])) == "loss"


def test_report_glob_including_its_plots_folder_runs_twice(runs: list[Path], tmp_path: Path) -> None:
    """`skdcache report runs/* --plots runs/plots`: the second time the glob also matches runs/plots."""
    from click.testing import CliRunner
    from skdcache.cli.main import cli

    plots = runs[0].parent / "plots"
    for _ in range(2):
        folders = sorted(str(p) for p in runs[0].parent.iterdir() if p.is_dir())
        result = CliRunner().invoke(cli, ["report", *folders, "--plots", str(plots)])
        assert result.exit_code == 0, result.output
    assert "skipped (no run.json)" in result.stderr and (plots / "loss.png").exists()
