"""Lossless layouts of token-target caches, re-compressed offline: what each id / log-prob coding would store.

    python benchmarks/perf/idcoding_variants.py .bench-work/bytes-v2/cache     # every token cache under a root

The caches are those `fidelity.py --bytes-only` (or `topk.py`) writes. Their token arrays are read back and
decoded (valid tokens only), then each variant is compressed as the cache stores arrays: inner chunks of the
cache's chunk length (last one zero-padded), Blosc-zstd, a crc32c per chunk and a shard index (zarr.json
files left out, so totals are ~0.5-1 B/token below the on-disk figure). Variants, per kind:

* top-k (`topk_ids`, `topk_logprobs`): v1 (probability order, no coding); v2 (log-prob float16 bit patterns as
  row-wise differences, as stored); ids sorted per token with the log-probs permuted alongside, plain or with
  the ids as gaps; sorted-id gaps plus a uint8 rank array plus log-prob bit differences;
* sampled (`sample_ids`, `sample_counts`, `sample_logprobs`): v1; ids as modular differences (the first
  padding entry wraps); v2 (ids as gaps, padding stored as 0); entries reordered by log-prob with the log-prob
  bit differences (ids and counts permuted alongside);

each with Blosc clevel 5 (zstd 9, as stored) and clevel 9 (zstd 22), at the cache's chunk length and at 1,024
tokens, and with pcodec (`pip install pcodec`; not readable by plain zarr without it) when it is installed.
Writes docs/performance-idcoding.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from skdcache.cache import idcoding, kinds
from skdcache.cache.chunking import CHUNKS_PER_TOKEN_SHARD
from skdcache.cache.reader import TeacherCache

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, shown, write_json  # noqa: E402

SHARD_INDEX_ENTRY, CHUNK_CRC, INDEX_CRC = 16, 4, 4


def _chunks(values: np.ndarray, chunk_rows: int):
    for c in range(-(-values.shape[0] // chunk_rows)):
        chunk = values[c * chunk_rows : (c + 1) * chunk_rows]
        if chunk.shape[0] < chunk_rows:
            pad = np.zeros((chunk_rows - chunk.shape[0], *values.shape[1:]), values.dtype)
            chunk = np.concatenate([chunk, pad])
        yield np.ascontiguousarray(chunk)


def stored_bytes(values: np.ndarray, chunk_rows: int, codec) -> int:
    n_chunks = -(-values.shape[0] // chunk_rows)
    total = sum(len(codec.encode(chunk)) + CHUNK_CRC for chunk in _chunks(values, chunk_rows))
    n_shards = -(-n_chunks // CHUNKS_PER_TOKEN_SHARD)
    return total + n_shards * (CHUNKS_PER_TOKEN_SHARD * SHARD_INDEX_ENTRY + INDEX_CRC)


def _diff(u: np.ndarray) -> np.ndarray:
    out = u.copy()
    out[:, 1:] = u[:, 1:] - u[:, :-1]
    return out


def topk_variants(ids: np.ndarray, lp: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    order = np.argsort(ids, axis=1, kind="stable")
    ids_s, lp_s = np.take_along_axis(ids, order, 1), np.take_along_axis(lp, order, 1)
    lp_bits = idcoding.encode(idcoding.DELTA, lp)
    return {
        "v1: probability order, no coding": {"topk_ids": ids, "topk_logprobs": lp},
        "v2 (stored): log-prob bit differences": {"topk_ids": ids, "topk_logprobs": lp_bits},
        "ids sorted, log-probs permuted": {"topk_ids": ids_s, "topk_logprobs": lp_s},
        "ids sorted as gaps, log-probs permuted": {"topk_ids": _diff(ids_s), "topk_logprobs": lp_s},
        "id gaps + rank array + log-prob bit differences": {
            "topk_ids": _diff(ids_s),
            "rank": np.argsort(order, axis=1).astype(np.uint8),
            "topk_logprobs": lp_bits,
        },
    }


def sampled_variants(ids: np.ndarray, counts: np.ndarray, lp: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    pad = counts == 0
    order = np.argsort(np.where(pad, np.inf, -lp.astype(np.float64)), axis=1, kind="stable")
    by_lp = [np.take_along_axis(x, order, 1) for x in (ids, counts, lp)]
    return {
        "v1: ascending ids, no coding": {"sample_ids": ids, "sample_counts": counts, "sample_logprobs": lp},
        "ids as modular differences": {
            "sample_ids": idcoding.encode(idcoding.DELTA, ids),
            "sample_counts": counts,
            "sample_logprobs": lp,
        },
        "v2 (stored): ids as gaps, padding 0": {
            "sample_ids": idcoding.encode(idcoding.GAPS, ids),
            "sample_counts": counts,
            "sample_logprobs": lp,
        },
        "by log-prob, log-prob bit differences": {
            "sample_ids": by_lp[0],
            "sample_counts": by_lp[1],
            "sample_logprobs": idcoding.encode(idcoding.DELTA, by_lp[2]),
        },
    }


def codecs() -> dict[str, object]:
    from numcodecs import Blosc, blosc

    blosc.use_threads = False
    out = {
        "blosc zstd clevel 5": Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc zstd clevel 9": Blosc(cname="zstd", clevel=9, shuffle=Blosc.SHUFFLE),
    }
    try:
        from numcodecs.pcodec import PCodec

        PCodec(level=8).encode(np.zeros(4, np.uint16))
        out["pcodec level 8"] = PCodec(level=8)
    except Exception:  # pcodec not installed
        pass
    return out


def _size(values: np.ndarray, chunk_rows: int, name: str, codec) -> int:
    if values.dtype.itemsize == 1 and "pcodec" in name:  # pcodec refuses 8-bit types: Blosc for those
        from numcodecs import Blosc

        codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)
    return stored_bytes(values, chunk_rows, codec)


def measure(group: Path) -> dict:
    cache = TeacherCache(group)
    g = zarr.open_group(str(group), mode="r")
    index = g["token_index"][:]
    keep = np.concatenate([np.arange(s, s + c) for s, c in index if c > 0])
    arrays = {
        n: idcoding.decode(a.coding, g[n][:][keep]) for n, a in cache.layout.arrays.items() if n in kinds.TOKEN_ARRAYS
    }
    n_tok = len(keep)
    chunk_rows = cache.layout.arrays["positions"].chunk_rows
    variants: dict[str, dict[str, np.ndarray]] = {}
    tv = topk_variants(arrays["topk_ids"], arrays["topk_logprobs"]) if "topk_ids" in arrays else {"": {}}
    sv = (
        sampled_variants(arrays["sample_ids"], arrays["sample_counts"], arrays["sample_logprobs"])
        if "sample_ids" in arrays
        else {"": {}}
    )
    for tname, tarrays in tv.items():
        for sname, sarrays in sv.items():
            if tname and sname and not (tname.startswith(("v1", "v2")) and sname[:2] == tname[:2]):
                continue  # hybrid: pair v1 with v1 and v2 with v2 only
            variants[" / ".join(x for x in (tname, sname) if x)] = {**tarrays, **sarrays}
    rest = {n: v for n, v in arrays.items() if n in ("tail_logmass", "positions")}
    rows = []
    for codec_name, codec in codecs().items():
        for chunk in sorted({chunk_rows, 1024}):
            rest_b = sum(_size(v, chunk, codec_name, codec) for v in rest.values()) / n_tok
            for vname, varrays in variants.items():
                per = {n: _size(v, chunk, codec_name, codec) / n_tok for n, v in varrays.items()}
                rows.append(
                    {
                        "variant": vname,
                        "codec": codec_name,
                        "chunk_rows": chunk,
                        "per_array": per,
                        "rest": rest_b,
                        "total": sum(per.values()) + rest_b,
                    }
                )
    return {
        "cache": shown(group),
        "targets": cache.targets.to_dict(),
        "tokens": n_tok,
        "chunk_rows": chunk_rows,
        "rows": rows,
    }


def kind(targets: dict) -> str:
    if targets.get("targets", "topk") == "topk":
        return f"topk-{targets['top_k']}"
    if targets["targets"] == "sampled":
        return f"sampled-{targets['samples']}"
    return f"hybrid-{targets['top_k']}+{targets['samples']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a cache root (every token-level teacher cache under it is measured)")
    ap.add_argument("--out", type=Path, default=DOCS / "performance-idcoding.json")
    args = ap.parse_args()
    groups = sorted(p.parent for p in args.root.resolve().glob("*/*/zarr.json") if (p.parent / "token_index").exists())
    results = [measure(g) for g in groups]
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "caches": results})
    print("| targets | variant | codec | chunk (tokens) | B/token (token arrays) |")
    print("|---|---|---|---:|---:|")
    for r in results:
        for row in r["rows"]:
            print(
                f"| {kind(r['targets'])} | {row['variant']} | {row['codec']} | {row['chunk_rows']} "
                f"| {row['total']:.1f} |"
            )


if __name__ == "__main__":
    main()
