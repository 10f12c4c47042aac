"""Read scaling: random-batch reads of the training loader's reader from caches of 10k, 100k and 1M rows.

    python benchmarks/perf/read_scaling.py                       # CPU, ~5 min, needs ~6 GB free disk
    python benchmarks/perf/read_scaling.py --sizes 2000,40000 --seed-blocks 4 --check   # a minute: a dry run

Each cache holds sequence logits (3 classes) and CLS hidden states of 7 layers x 384 (fp16), the targets of a
MiniLM-L6 teacher. The first `--seed-blocks` blocks (1,024 rows each) are written by `CacheWriter` from random
values; every later block is a byte copy of seed block `b % seed_blocks` with its own completion marker (the
same bytes and checksums the writer would produce for those values), so a 1M-row cache takes seconds, not
the ~15 minutes of compressing 5.5 GB on this machine, and is a complete cache that `verify` accepts.
Reads go through `CachedTargets` (what the training loader's workers call), with one torch thread as in a
DataLoader worker, after one warm-up batch; rows are uniformly random over the whole cache. Sizes are measured
in turn, `--rounds` times, and the best round of each is kept (the machine may be shared with other jobs).
Caches live in a temporary directory deleted at the end.

Target: rows/s at 1M within 1.5x of 10k.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skdcache.cache import format as fmt
from skdcache.cache.catalog import dir_bytes
from skdcache.cache.manifest import FORMAT_VERSION, Manifest
from skdcache.cache.markers import encode_marker, marker_path
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter
from skdcache.targets.sources import CachedTargets, TeacherChoice

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, WORK, command, machine, write_json  # noqa: E402

N_LABELS, LAYERS, WIDTH = 3, 7, 384
# What one GPU student step consumes (an assumption, not measured here): a 6-layer BERT student (MiniLM-L6 /
# DistilBERT size), batch 32, sequence 128, bf16 eager on one H100: ~50 optimizer steps/s (launch-bound).
STUDENT_ROWS_PER_S = 50 * 32


def synthetic_cache(path: Path, n: int, seed_blocks: int) -> float:
    """A complete cache of `n` rows (see the module docstring); returns the seconds it took to write."""
    t0 = time.perf_counter()
    spec = TargetSpec("sequence", 64, hidden_layers=tuple(range(LAYERS)), hidden_tokens="cls")
    layout, index = fmt.plan_layout(spec, n, N_LABELS, None, WIDTH, None, None)
    manifest = Manifest(
        FORMAT_VERSION,
        {"name": f"synthetic-{n}", "num_labels": N_LABELS},
        "-",
        {"fingerprint": "synthetic", "n_rows": n},
        spec.to_dict(),
        layout.to_dict(),
    )
    writer = CacheWriter(path, manifest, layout, index)
    rng = np.random.default_rng(n)
    R = layout.rows_per_block
    seed_blocks = min(seed_blocks, layout.n_blocks)
    for b in range(seed_blocks):
        lo, hi = layout.block_rows(b)
        writer.write_block(
            b,
            {
                "logits": rng.normal(size=(hi - lo, N_LABELS)).astype(np.float16),
                "hidden": rng.normal(size=(hi - lo, LAYERS, WIDTH)).astype(np.float16),
            },
        )
    full_seeds = [b for b in range(seed_blocks) if layout.block_rows(b)[1] - layout.block_rows(b)[0] == R]
    for b in range(seed_blocks, layout.n_blocks):
        lo, hi = layout.block_rows(b)
        if hi - lo != R:  # a short last block: written for real
            writer.write_block(
                b,
                {
                    "logits": rng.normal(size=(hi - lo, N_LABELS)).astype(np.float16),
                    "hidden": rng.normal(size=(hi - lo, LAYERS, WIDTH)).astype(np.float16),
                },
            )
            continue
        src = full_seeds[b % len(full_seeds)]
        for name, array in layout.arrays.items():
            dst = fmt.shard_file(path / name, b, len(array.shape))
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fmt.shard_file(path / name, src, len(array.shape)), dst)
        sums = json.loads(marker_path(path, src).read_text())["checksums"]
        marker_path(path, b).write_bytes(encode_marker(b, (lo, hi), sums))  # one sync below, not one per file
    os.sync()
    writer.finish(None)
    return time.perf_counter() - t0


def read_rate(source: CachedTargets, n: int, batch: int, batches: int, seed: int) -> float:
    """Rows/s of `batches` random batches of `batch` rows."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(batches):
        source.targets(rng.integers(0, n, batch), TeacherChoice((0,)))
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--batches", default="32:100,256:15", help="BATCH:COUNT pairs")
    parser.add_argument("--seed-blocks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=str(WORK))
    parser.add_argument("--out", default=str(DOCS / "performance-read-scaling.json"))
    parser.add_argument("--check", action="store_true", help="dry run: write the JSON into the temp dir")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in the training loader's DataLoader workers, where these reads run
    Path(args.work).mkdir(parents=True, exist_ok=True)
    batches = [tuple(int(x) for x in pair.split(":")) for pair in args.batches.split(",")]
    results = {
        "command": command(),
        "machine": machine(),
        "arrays": f"logits [n, {N_LABELS}] fp16, hidden [n, {LAYERS}, {WIDTH}] fp16 (CLS, all layers)",
        "seed_blocks": args.seed_blocks,
        "load": "shared machine: other jobs ran alongside",
        "loadavg_start": os.getloadavg(),
        "student_assumption": {
            "rows_per_s": STUDENT_ROWS_PER_S,
            "what": "6-layer BERT student, batch 32, seq 128, bf16, one H100: ~50 steps/s (assumed, not measured)",
        },
        "rows": [],
    }
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.work, prefix="read-scaling-") as tmp:
        sources, rows = {}, {}
        for n in sizes:
            cache = Path(tmp) / str(n)
            write_s = synthetic_cache(cache, n, args.seed_blocks)
            sources[n] = CachedTargets([str(cache)])
            t0 = time.perf_counter()
            sources[n].targets(np.arange(2), TeacherChoice((0,)))
            rows[n] = {"n": n, "cache_bytes": dir_bytes(cache), "write_s": write_s, "open_s": time.perf_counter() - t0}
            print(f"n={n}: {rows[n]['cache_bytes'] / 2**20:.0f} MiB written in {write_s:.0f} s", flush=True)
        for batch, count in batches:  # sizes interleaved, best of `rounds`: other jobs slow any one of them
            for n in sizes:
                sources[n].targets(np.arange(batch), TeacherChoice((0,)))  # warm-up of this batch size
            for r in range(args.rounds):
                for n in sizes:
                    rate = read_rate(sources[n], n, batch, count, seed=1000 * r + batch)
                    rows[n].setdefault(f"rows_per_s_b{batch}_all", []).append(rate)
                    rows[n][f"rows_per_s_b{batch}"] = max(rows[n][f"rows_per_s_b{batch}_all"])
            print(f"b{batch}: " + ", ".join(f"{n}: {rows[n][f'rows_per_s_b{batch}']:,.0f} rows/s" for n in sizes))
        results["rows"] = [rows[n] for n in sizes]
        for batch, _ in batches:
            key = f"rows_per_s_b{batch}"
            results[f"slowdown_b{batch}"] = rows[sizes[0]][key] / rows[sizes[-1]][key]
            results[f"over_student_b{batch}"] = rows[sizes[-1]][key] / STUDENT_ROWS_PER_S
        results["loadavg_end"] = os.getloadavg()
        out = Path(tmp) / "check.json" if args.check else Path(args.out)
        write_json(out, results)
        print(json.dumps({k: v for k, v in results.items() if k.startswith(("slowdown", "over"))}))
    print(f"wrote {out}" if not args.check else "check done")


if __name__ == "__main__":
    main()
