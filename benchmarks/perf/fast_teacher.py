"""Fast-teacher precompute: is `precompute` as fast as the teacher's forward or the disk, whichever is slower?

    python benchmarks/perf/fast_teacher.py                   # CPU, ~6 min; writes docs/performance-fast-teacher.json
    python benchmarks/perf/fast_teacher.py --rows 400 --mlm-rows 100 --check   # ~1 min: a dry run of every code path
    python benchmarks/perf/fast_teacher.py --device cuda --dtype bf16 --model <dir> ...   # benchmarks/gpu/run.sh

The teacher is a 2-layer BERT, hidden 128, built from a `BertConfig` (random weights, MiniLM's word-piece
tokenizer, 30,522 tokens), so its forward is cheap and any per-row cost of precompute shows. Four target sets:
(a) sequence logits, (b) CLS hidden states of every layer, (c) token-level top-32 at the MLM-masked positions
(masked-LM head), (d) hidden states of every layer at every token. For each, in one process and one run:

- bare: load, tokenize, length-sorted batches, forward (what a user would write instead; no reduction, no writes);
- precompute: `precompute_teacher` into a fresh cache (fsynced, checksummed, zstd);
- disk: write + fsync of one file as large as that cache, at the cache's location (the disk's sequential limit).

Goal: precompute <= 1.10 x max(bare, disk). The machine may be shared with other jobs, so bare and precompute
alternate (bare, pre, bare, pre, bare) and each figure is the fastest run (the least disturbed); the CPU time
of the process (all threads) is recorded too, as a second, load-independent view of the same cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from skdcache.cache.catalog import dir_bytes
from skdcache.data.rows import DataSpec, load_rows
from skdcache.precompute import precompute_teacher
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, WORK, command, machine, shown, write_json  # noqa: E402
from benchmarks.perf.common import bare_forward, disk_write, make_rows, timed  # noqa: E402

CASES = {  # name: (head, TargetOptions fields, bare forward needs hidden states)
    "a_logits": ("sequence", {}, False),
    "b_cls_hidden_all_layers": ("sequence", {"hidden_layers": "all", "hidden_tokens": "cls"}, True),
    "c_token_top32_mlm": ("mlm", {"top_k": 32}, False),
    "d_all_token_hidden": ("sequence", {"hidden_layers": "all", "hidden_tokens": "all"}, True),
    # only with --model causal=DIR (benchmarks/gpu/run.sh: SmolLM2-135M): every token a target, 49,152-way head
    "e_token_top32_causal": ("causal", {"top_k": 32}, False),
}
TOKEN_HEADS = ("mlm", "causal")  # cases that run on --mlm-rows


def make_fast_teacher(out: Path, head: str, layers: int = 2, hidden: int = 128) -> Path:
    """A randomly initialised small BERT (`head` = sequence | mlm) saved with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

    from skdcache.demo import pretrained_encoder

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(pretrained_encoder())
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        num_labels=3,
    )
    model = BertForMaskedLM(config) if head == "mlm" else BertForSequenceClassification(config)
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_case(work: Path, name: str, teacher: Path, data: Path, n: int, opts: TargetOptions, repeats: int) -> dict:
    """bare, precompute, bare, precompute, ..., bare: the fastest of each (least disturbed by other jobs)."""
    head, _, hidden = CASES[name]
    cache = work / f"cache-{name}"
    rows = load_rows(DataSpec(str(data), label_column="label" if head == "sequence" else None))

    def pre():
        shutil.rmtree(cache, ignore_errors=True)
        return precompute_teacher(TeacherSpec("t", str(teacher)), rows, cache, opts)

    bare = [timed(lambda: bare_forward(teacher, data, opts, hidden, head))[:2]]
    runs = []
    for _ in range(repeats):
        runs.append(timed(pre))
        bare.append(timed(lambda: bare_forward(teacher, data, opts, hidden, head))[:2])
    nbytes = dir_bytes(runs[-1][2].path)
    disk = min(disk_write(work, nbytes) for _ in range(2))
    shutil.rmtree(cache, ignore_errors=True)
    bare_wall, bare_cpu = min(b[0] for b in bare), min(b[1] for b in bare)
    pre_wall, pre_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    limit = max(bare_wall, disk)
    row = {
        "case": name,
        "rows": n,
        "bare_s": bare_wall,
        "bare_s_all": [b[0] for b in bare],
        "precompute_s": pre_wall,
        "precompute_s_all": [r[0] for r in runs],
        "bare_cpu_s": bare_cpu,
        "precompute_cpu_s": pre_cpu,
        "disk_s": disk,
        "cache_bytes": nbytes,
        "bytes_per_example": nbytes / n,
        "bare_examples_per_s": n / bare_wall,
        "precompute_examples_per_s": n / pre_wall,
        "precompute_mb_per_s": nbytes / pre_wall / 1e6,
        "disk_mb_per_s": nbytes / disk / 1e6,
        "ratio_to_limit": pre_wall / limit,
        "cpu_ratio": pre_cpu / bare_cpu,
        "bound": "disk" if disk > bare_wall else "forward",
        "met": pre_wall / limit <= 1.10,
    }
    print(
        f"{name}: bare {bare_wall:.2f}s  precompute {pre_wall:.2f}s  disk {disk:.2f}s ({nbytes / 1e6:.1f} MB)  "
        f"ratio {row['ratio_to_limit']:.3f} ({row['bound']}-bound), CPU-time ratio {row['cpu_ratio']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--mlm-rows", type=int, default=500, help="rows of (c): its 30,522-way head dominates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="precompute runs per case (bare runs one more)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", action="append", default=[], help="HEAD=DIR: use this teacher for HEAD")
    parser.add_argument("--cases", default=",".join(n for n, case in CASES.items() if case[0] != "causal"))
    parser.add_argument("--work", default=str(WORK / "fast-teacher"))
    parser.add_argument("--out", default=str(DOCS / "performance-fast-teacher.json"))
    parser.add_argument("--check", action="store_true", help="dry run: write the JSON next to the work dir")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = {h: make_fast_teacher(work / f"teacher-{h}", h) for h in ("sequence", "mlm")}
    models.update(dict(m.split("=", 1) for m in args.model))
    data = make_rows(work / f"data-{args.rows}", args.rows)
    mlm_data = make_rows(work / f"data-{args.mlm_rows}", args.mlm_rows)
    warm = TargetOptions(
        max_length=args.max_length, batch_size=args.batch_size, device=args.device, progress=False, eval_split=None
    )
    bare_forward(Path(models["sequence"]), data, warm, False)  # warm-up: thread pools, first touch
    results = {
        "command": command(),
        "machine": machine(),
        "device": args.device,
        "teacher": "BERT 2 layers, hidden 128, 2 heads, vocab 30522 (random init) unless --model",
        "models": {head: shown(path) for head, path in models.items()},
        "load": "see loadavg: about 1.0 is this benchmark alone on the machine",
        "loadavg_start": os.getloadavg(),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "cases": [],
    }
    for name in args.cases.split(","):
        head, fields, _ = CASES[name]
        opts = TargetOptions(**{**warm.__dict__, **fields})
        if head not in models:
            raise SystemExit(f"case {name} needs a teacher: pass --model {head}=DIR")
        token = head in TOKEN_HEADS
        n = args.mlm_rows if token else args.rows
        results["cases"].append(
            run_case(work, name, Path(models[head]), mlm_data if token else data, n, opts, args.repeats)
        )
    results["loadavg_end"] = os.getloadavg()
    out = work / "check.json" if args.check else Path(args.out)
    write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
