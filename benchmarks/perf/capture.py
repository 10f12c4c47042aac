"""The host side of precompute alone: how fast can targets be captured when the teacher costs nothing?

    python benchmarks/perf/capture.py                 # CPU, ~10 min; writes docs/performance-capture.json
    python benchmarks/perf/capture.py --rows 2000 --repeats 1 --check   # ~1 min: a dry run of every case
    python benchmarks/perf/capture.py --device cuda   # benchmarks/gpu/run.sh: the reduction on the GPU

A *replay teacher* stands in for the model: its outputs (sequence logits, full-vocabulary token logits with a
Zipf-like prior so top-k ids cluster like a real LM's, hidden states of every layer) are generated once in
memory and handed to `precompute_teacher` as views, so the forward costs next to nothing and every second
measured is the pipeline's own: reduction (log-softmax, top-k, tail, draws), device-to-host copy, assembly,
NaN check, encoding (Blosc-zstd + crc32c), checksums, writes and fsyncs. For each target kind, in one run:

- pipeline: `precompute_teacher` end to end with the replay teacher (reduction included);
- after reduction: the same blocks, already reduced, through `capture` and a fresh writer (the host work the
  goals for token targets speak of);
- disk: write + fsync of one file as large as the cache at the same place (the disk's sequential limit).

Configurations alternate (pipeline, after-reduction, pipeline, ...) and each figure is the fastest of its
repeats; CPU seconds of the process (all threads) and the per-stage split (`StageClock`) are recorded beside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from skdcache.cache import format as fmt
from skdcache.cache import idcoding, kinds
from skdcache.cache.catalog import dir_bytes
from skdcache.cache.manifest import Manifest, read_manifest
from skdcache.cache.writer import CacheWriter
from skdcache.data.rows import DataSpec, load_rows
from skdcache.precompute import precompute_teacher
from skdcache.stages import STAGES, StageClock
from skdcache.teacher.blocks import capture
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, WORK, command, machine, shown, write_json  # noqa: E402
from benchmarks.perf.common import disk_write, make_rows, timed  # noqa: E402
from benchmarks.perf.replay import make_teacher_dir, replayed  # noqa: E402

# name: (head, TargetOptions fields, model shape {vocab, hidden, layers}, goal kind)
CASES = {
    "seq_logits_cls": ("sequence", {"hidden_layers": "all", "hidden_tokens": "cls"}, (3, 384, 6), "rows"),
    "mlm_top32": ("mlm", {"top_k": 32}, (30522, 384, 6), "positions"),
    "causal_top32": ("causal", {"top_k": 32}, (49152, 576, 2), "positions"),
    "causal_sampled20": ("causal", {"targets": "sampled", "samples": 20}, (49152, 576, 2), "positions"),
    "causal_hybrid8_16": ("causal", {"targets": "hybrid", "top_k": 8, "samples": 16}, (49152, 576, 2), "positions"),
    "all_token_hidden": ("sequence", {"hidden_layers": "all", "hidden_tokens": "all"}, (3, 384, 6), "bytes"),
}
GOALS = {"rows": 5000.0, "positions": 50000.0, "bytes_mb": 150.0, "bytes_disk_share": 0.8}


def read_blocks(path: Path) -> tuple[Manifest, fmt.Layout, dict, list[dict[str, np.ndarray]]]:
    """A written cache's blocks as the pipeline hands them to the writer (stored dtypes, no index arrays)."""
    manifest = read_manifest(path)
    group = zarr.open_group(str(path), mode="r")
    layout = fmt.layout_from_dict(manifest.layout, manifest.dataset.n_rows)
    index = {n: group[n][:] for n in kinds.INDEX_ARRAYS if n in layout.arrays}
    blocks = []
    for b in range(layout.n_blocks):
        start, stop = layout.block_rows(b)
        data = {}
        for name in layout.arrays:
            if name in kinds.INDEX_ARRAYS:
                continue
            idx = fmt.index_array(name, layout.arrays)
            lo, hi = (start, stop) if idx is None else (int(index[idx][start, 0]), int(index[idx][stop - 1].sum()))
            data[name] = idcoding.decode(layout.arrays[name].coding, group[name][lo:hi])  # as handed over
        blocks.append(data)
    return manifest, layout, index, blocks


def run_case(work: Path, name: str, data: Path, opts: TargetOptions, repeats: int) -> dict:
    head, _, shape, goal = CASES[name]
    teacher = make_teacher_dir(work / f"teacher-{name}", head, shape)
    rows = load_rows(DataSpec(str(data), label_column="label" if head == "sequence" else None))
    cache, after = work / f"cache-{name}", work / f"after-{name}"

    def pipeline():
        shutil.rmtree(cache, ignore_errors=True)
        return precompute_teacher(TeacherSpec("t", str(teacher)), rows, cache, opts)

    pipeline()  # builds the replay outputs, warms every code path
    first = timed(pipeline)
    manifest, layout, index, blocks = read_blocks(first[2].path)

    def after_reduction():
        shutil.rmtree(after, ignore_errors=True)
        writer = CacheWriter(after / "g", manifest, layout, index, StageClock())
        capture(list(range(layout.n_blocks)), lambda b: dict(blocks[b]), writer, name)
        return writer.clock.summary()

    runs, afters = [first], []
    for r in range(repeats):
        afters.append(timed(after_reduction))
        if r + 1 < repeats:
            runs.append(timed(pipeline))
    path = runs[-1][2].path
    nbytes = dir_bytes(path)
    positions = int(index["token_index"][:, 1].sum()) if "token_index" in index else 0
    disk = min(disk_write(work, nbytes) for _ in range(2))
    best, best_after = min(runs, key=lambda r: r[0]), min(afters, key=lambda r: r[0])
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(after, ignore_errors=True)
    n = len(rows)
    row = {
        "case": name,
        "rows": n,
        "target_positions": positions,
        "cache_bytes": nbytes,
        "bytes_per_row": nbytes / n,
        "pipeline_s": best[0],
        "pipeline_s_all": [r[0] for r in runs],
        "pipeline_cpu_s": best[1],
        "pipeline_stages": best[2].stages,
        "after_reduction_s": best_after[0],
        "after_reduction_s_all": [r[0] for r in afters],
        "after_reduction_cpu_s": best_after[1],
        "after_reduction_stages": best_after[2],
        "disk_s": disk,
        "disk_mb_per_s": nbytes / disk / 1e6,
        "rows_per_s": n / best[0],
        "positions_per_s": positions / best[0],
        "after_reduction_positions_per_s": positions / best_after[0],
        "mb_per_s": nbytes / best[0] / 1e6,
        "after_reduction_mb_per_s": nbytes / best_after[0] / 1e6,
        "cpu_ms_per_row": best[1] / n * 1e3,
        "reduce_cpu_ms_per_row": best[2].stages.get("reduce", {}).get("cpu_s", 0.0) / n * 1e3,
    }
    if goal == "rows":
        row["goal"], row["met"] = f">= {GOALS['rows']:.0f} rows/s", row["rows_per_s"] >= GOALS["rows"]
    elif goal == "positions":
        target = GOALS["positions"]
        row["goal"] = f">= {target:.0f} target positions/s after the reduction"
        row["met"] = row["after_reduction_positions_per_s"] >= target
    else:
        target = min(GOALS["bytes_disk_share"] * row["disk_mb_per_s"], GOALS["bytes_mb"])
        row["goal"], row["met"] = f">= {target:.0f} MB/s (min(0.8 x disk, 150))", row["mb_per_s"] >= target
    print(
        f"{name}: {row['rows_per_s']:,.0f} rows/s, {row['mb_per_s']:.0f} MB/s, {row['positions_per_s']:,.0f} pos/s; "
        f"after reduction {row['after_reduction_mb_per_s']:.0f} MB/s, "
        f"{row['after_reduction_positions_per_s']:,.0f} pos/s; disk {row['disk_mb_per_s']:.0f} MB/s; met {row['met']}",
        flush=True,
    )
    return row


def markdown(results: dict) -> str:
    """The two tables of docs/performance.md's Capture section, from this benchmark's JSON."""
    head = (
        "| case | rows | target positions | cache | end to end: rows/s | positions/s | MB/s | CPU ms/row "
        "| of which reduction | after reduction: positions/s | MB/s | disk MB/s | goal | met |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n"
    )
    lines = []
    for c in results["cases"]:
        pos = c["target_positions"]
        lines.append(
            f"| {c['case']} | {c['rows']:,} | {pos:,} | {c['cache_bytes'] / 1e6:,.1f} MB | {c['rows_per_s']:,.0f} "
            f"| {c['positions_per_s']:,.0f} | {c['mb_per_s']:,.1f} | {c['cpu_ms_per_row']:.2f} "
            f"| {c['reduce_cpu_ms_per_row']:.2f} | {c['after_reduction_positions_per_s']:,.0f} "
            f"| {c['after_reduction_mb_per_s']:,.1f} | {c['disk_mb_per_s']:,.0f} | {c['goal']} "
            f"| {'yes' if c['met'] else 'no'} |"
        )
    stages = [s for s in results["stages"] if any(s in c["pipeline_stages"] for c in results["cases"])]
    split = "| case | " + " | ".join(stages) + " |\n|---|" + "---:|" * len(stages) + "\n"
    for c in results["cases"]:
        cells = [c["pipeline_stages"].get(s, {}) for s in stages]
        shown = [f"{x.get('wall_s', 0):.2f} / {x.get('cpu_s', 0):.2f}" if x else "-" for x in cells]
        split += f"| {c['case']} | " + " | ".join(shown) + " |\n"
    return head + "\n".join(lines) + "\n\nSeconds per stage, end to end (wall / CPU, summed over threads):\n\n" + split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--token-rows", type=int, default=4096, help="rows of the token-target cases")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--work", default=str(WORK / "capture"))
    parser.add_argument("--out", default=str(DOCS / "performance-capture.json"))
    parser.add_argument("--check", action="store_true", help="dry run: write the JSON next to the work dir")
    parser.add_argument("--table", metavar="JSON", help="print the markdown tables of a written JSON and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = TargetOptions(
        max_length=args.max_length, batch_size=args.batch_size, device=args.device, progress=False, eval_split=None
    )
    results = {
        "command": command(),
        "machine": machine(),
        "device": args.device,
        "write_threads": os.environ.get("SKDCACHE_WRITE_THREADS") or f"{min(16, os.cpu_count() or 1)} (cores)",
        "teacher": "replay: pre-generated outputs of the shapes in `cases`, handed over as views",
        "work": shown(work),
        "loadavg_start": os.getloadavg(),
        "stages": list(STAGES),
        "goals": GOALS,
        "cases": [],
    }
    for name in args.cases.split(","):
        head, fields, _, _ = CASES[name]
        opts = TargetOptions(**{**base.__dict__, **fields})
        n = args.rows if head == "sequence" else args.token_rows
        data = make_rows(work / f"data-{n}", n)
        with replayed(args.batch_size, args.max_length):
            results["cases"].append(run_case(work, name, data, opts, args.repeats))
    results["loadavg_end"] = os.getloadavg()
    out = work / "check.json" if args.check else Path(args.out)
    write_json(out, results)
    print(markdown(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
