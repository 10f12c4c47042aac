"""The quality study harness (benchmarks/quality): its statistics against plain references, and one tiny run
end to end on a dataset with its own column names, as a user would point it at their data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality.stats import bootstrap_mean_ci, paired, seeds_needed

ROOT = Path(__file__).resolve().parents[1]


def test_bootstrap_interval_matches_a_plain_resampling_loop():
    d = np.array([0.4, -0.2, 1.1, 0.3, 0.8])
    lo, hi = bootstrap_mean_ci(d, n_boot=4000, seed=1)
    rng = np.random.default_rng(123)  # an independent loop, another stream: agreement within MC error
    means = [rng.choice(d, size=d.size, replace=True).mean() for _ in range(4000)]
    assert lo == pytest.approx(np.quantile(means, 0.025), abs=0.08)
    assert hi == pytest.approx(np.quantile(means, 0.975), abs=0.08)
    assert lo < d.mean() < hi


def test_paired_verdicts_and_seeds_needed():
    a = {s: 70.0 + s for s in range(1, 6)}
    assert paired(a, {s: v - 1.0 for s, v in a.items()})["verdict"] == "win"  # +1 on every seed
    assert paired(a, {s: v + 0.5 for s, v in a.items()})["verdict"] == "loss"
    tie = paired(a, {1: 71.5, 2: 71.0, 3: 74.0, 4: 73.0, 5: 76.5})  # differences -0.5, +1, -1, +1, -1.5
    assert tie["verdict"] == "tie" and tie["n"] == 5
    d = np.array([-0.5, 1.0, -1.0, 1.0, -1.5])
    assert tie["seeds_needed"] == np.ceil(((1.959964 + 0.841621) * d.std(ddof=1) / abs(d.mean())) ** 2)
    assert seeds_needed(np.array([0.0, 0.0])) == float("inf")
    assert paired({1: 1.0}, {1: 2.0}) is None  # one seed says nothing
    assert paired({1: 2.0, 2: 3.0}, {1: 1.0, 2: 2.0})["verdict"] == "win? (2 seeds)"  # no claim below 5 seeds


def test_study_runs_on_a_new_dataset_with_only_column_flags(tmp_path: Path):
    rng = np.random.default_rng(0)
    words = {"sport": "goal match team win", "tech": "code chip data cloud", "food": "bread soup cake rice"}
    for split, n in (("train", 48), ("validation", 24), ("test", 24)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["body", "topic"])
            for _ in range(n):
                topic = str(rng.choice(list(words)))
                w.writerow([" ".join(rng.choice(words[topic].split(), size=6)), topic])
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality" / "run.py"),
        "--data",
        str(tmp_path),
        "--name",
        "topics",
        "--text-column",
        "body",
        "--label-column",
        "topic",
        "--team",
        "two=minilm-l6:2,one=minilm-l6:1",
        "--seeds",
        "1,2",
        "--budgets",
        "short",
        "--configs",
        "none,single,skd-uniform,skd-student-fit",
        "--set",
        "train_rows=48",
        "--set",
        "short_steps=2",
        "--set",
        "teacher_epochs=0.5",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "docs"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    s = json.loads((tmp_path / "docs" / "results" / "topics-team-two+one.json").read_text())  # --team: own report
    rows = s["budgets"]["short"]["rows"]
    assert set(rows) == {"none", "single-two", "single-one", "skd-uniform", "skd-student-fit"}
    assert all(len(r["seeds"]) == 2 for r in rows.values())
    assert s["largest"] == "two" and s["metric"] == "accuracy"
    assert rows["skd-uniform"]["vs"]["none"]["n"] == 2
    index = (tmp_path / "docs" / "results.md").read_text()
    assert "[topics-team-two+one](results/topics-team-two+one.md)" in index and "<!-- reading -->" in index
    page = (tmp_path / "docs" / "results" / "topics-team-two+one.md").read_text()
    assert "--text-column body --label-column topic" in page
    curve = s["budgets"]["short"]["curve"]  # the budget axis read off every evaluation of the runs
    assert curve["steps"] == [1, 2]
    assert curve["rows"]["none"]["vs_none"] == [None, None]
    uni = curve["rows"]["skd-uniform"]
    assert uni["vs_none"][0]["n"] == 2 and all(m is not None for m in uni["mean"])
    assert "**Along training**" in page and "| step 1 | step 2 |" in page
    assert "--set short_steps=2" in page  # budget overrides are part of the command that regenerates the page


def test_a_campaign_reuses_a_run_only_with_the_same_settings(tmp_path: Path):
    from benchmarks.reuse import finished_run
    from skdcache.data.rows import DataSpec
    from skdcache.training.config import TrainConfig

    out = tmp_path / "runs" / "single-s1"
    cfg = TrainConfig(data=DataSpec(str(tmp_path / "data")), student="encoder", output=str(out), lr=3e-4)
    assert finished_run(cfg) is None
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"config": cfg.to_dict(), "final": {"accuracy": 0.7}}))
    assert finished_run(cfg)["final"] == {"accuracy": 0.7}
    moved = replace(cfg, student="/elsewhere/encoder", data=replace(cfg.data, source="/elsewhere/data"))
    assert finished_run(moved) is not None  # where things lie is not how the run was trained
    with pytest.raises(SystemExit, match=r"other settings \(lr, max_steps\)"):
        finished_run(replace(cfg, lr=1e-3, max_steps=400))
