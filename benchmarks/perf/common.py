"""What several performance benchmarks share: rows of real tweets, MiniLM teachers cut to a depth, the bare forward
loop precompute is compared with, a timer, the disk's sequential write limit, and P4 (run by perf/run.py on the
CPU and by gpu/p4.py on an accelerator).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import skdcache_argv
from skdcache.data.rows import DataSpec, load_rows, pad_batch, tokenize
from skdcache.demo import DEMO_DATA, pretrained_encoder
from skdcache.device import autocast_dtype
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.training.student import keep_layers


def make_rows(directory: Path, n: int) -> Path:
    """n rows of real tweets (cycled, with the row number appended so every row is distinct)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(DEMO_DATA / "train.csv", newline="", encoding="utf-8") as f:
        source = list(csv.DictReader(f))
    with open(directory / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["text", "label"])
        for i in range(n):
            row = source[i % len(source)]
            w.writerow([row["text"] if i < len(source) else f"{row['text']} #{i}", row["label"]])
    return directory


def make_model(out: Path, layers: int, num_labels: int = 3) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    enc = pretrained_encoder()
    model = AutoModelForSequenceClassification.from_pretrained(enc, num_labels=num_labels)
    model = keep_layers(model, tuple(range(layers)))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(enc).save_pretrained(out)
    return out


def bare_forward(model_dir: Path, data: Path, opts: TargetOptions, hidden: bool, head: str = "sequence") -> float:
    """What a user would write instead: load the model, tokenize, length-sorted batches, forward, logits to the
    host. No fingerprints, no target reduction, no writes."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    device = torch.device(opts.device)
    rows = load_rows(DataSpec(str(data)))
    t0 = time.perf_counter()
    cls = {"mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}.get(head, AutoModelForSequenceClassification)
    model = cls.from_pretrained(model_dir).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = tokenize(tokenizer, rows, opts.max_length)
    order = np.argsort(-enc.lengths, kind="stable")
    amp = autocast_dtype(device)
    with torch.inference_mode():
        for i in range(0, len(order), opts.batch_size):
            idx = order[i : i + opts.batch_size]
            types = [enc.type_ids[r] for r in idx] if enc.type_ids is not None else None
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            batch = pad_batch([enc.ids[r] for r in idx], types, pad)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=hidden)
            (out.logits if head == "sequence" else out.logits[:, 0]).float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed(fn) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds (all threads), and the result of `fn()`."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def disk_write(directory: Path, nbytes: int, block: int = 8 * 2**20) -> float:
    """Seconds to write `nbytes` of incompressible bytes sequentially to one new file and fsync it."""
    path = directory / "disk-probe.bin"
    buf = np.random.default_rng(0).integers(0, 256, block, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(buf[: min(block, left)])
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def p4(work: Path, steps: int, batch: int, device: str, rows: int = 2000) -> dict:
    """P4: steps/s and peak memory of `none`, `skd` (cache) and `online`, each in its own process."""
    data = make_rows(work / ("data-p4" if rows == 2000 else f"data-p4-{rows}"), rows)
    cache = work / "cache-p4"
    teachers = [make_model(work / "models" / f"teacher-L{k}", k) for k in (6, 4)]
    precompute(
        DataSpec(str(data)),
        [TeacherSpec(f"L{k}", str(p)) for k, p in zip((6, 4), teachers, strict=True)],
        cache,
        TargetOptions(max_length=64, progress=False, eval_split=None, device=device),
    )
    out = {}
    for mode in ("none", "skd", "online"):
        run = work / f"run-{mode}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = skdcache_argv(
            "train",
            data=data,
            cache=cache,
            student=pretrained_encoder(),
            student_layers=1,
            mode=mode,
            output=run,
            max_steps=steps,
            batch_size=batch,
            eval_split="",
            max_length=64,
            device=device,
            num_workers=1,
        )
        subprocess.run(cmd, check=True, env={**os.environ, "SKDCACHE_NO_PROGRESS": "1"})
        record = json.loads((run / "run.json").read_text())
        out[mode] = {
            "steps_per_s": record["steps_per_second"],
            "peak_rss_mib": record["peak_rss_mib"],
            "peak_cuda_mib": record["peak_cuda_mib"],
        }
        print(
            f"P4 {mode}: {record['steps_per_second']:.2f} steps/s, peak RSS {record['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    out["skd_over_none_step_time"] = out["none"]["steps_per_s"] / out["skd"]["steps_per_s"]
    out["online_over_skd_step_time"] = out["skd"]["steps_per_s"] / out["online"]["steps_per_s"]
    out["online_over_skd_peak_rss"] = out["online"]["peak_rss_mib"] / out["skd"]["peak_rss_mib"]
    return out
