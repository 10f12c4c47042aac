"""The cache format's layout: where each array's entries go, chunking, sharding and shard files. Beside it, one
job each: the arrays themselves (names, shapes, dtypes) are the target kinds of `kinds.py`, what a cache
stores is `spec.py`, the manifest (the group's attributes) `manifest.py`, completion markers `markers.py`,
chunk sizes `chunking.py` (docs/cache-format.md describes them together).

A cache root holds one directory per dataset fingerprint and, inside it, one Zarr v3 group per teacher
cache (content key = teacher weights + tokenizer + target spec + format version):

    <root>/<dataset_fp>/dataset.json          what the rows are (source, split, columns, labels, n_rows)
    <root>/<dataset_fp>/<cache_key>/           Zarr v3 group; attributes["skdcache"] is the manifest
        logits             [n_rows, n_labels]  float16   sequence-level logits (columns in dataset label order)
        topk_logprobs      [n_tok, k]          float16   log-softmax over the full vocabulary, top-k, descending
        topk_ids           [n_tok, k]          uint16 | uint32 (vocab > 65535)
        tail_logmass       [n_tok]             float16   log(1 - sum(exp(topk_logprobs)))
        sample_ids         [n_tok, N]          uint16 | uint32   sampled / hybrid: distinct drawn ids, then padding
        sample_counts      [n_tok, N]          uint8 | uint16    draws per id (0 = padding)
        sample_logprobs    [n_tok, N]          float16   log p_T of each drawn id (T = sample_temperature)
        positions          [n_tok]             uint16    position in the sequence of each token target
        token_index        [n_rows, 2]         int64     (start, count) of each row in the token arrays
        hidden             [n_rows, L, H] (cls) or [n_hid_tok, L, H] (all tokens)  float16
        hidden_index       [n_rows, 2]         int64     (start, count) of each row in `hidden` (all tokens)
        _blocks/           an empty zarr array node (so plain zarr browses the group without warnings) whose
                           folder holds <b>.json, the completion marker of block b, written after its bytes
                           are durable; zarr never lists inside an array, and old skdcache versions read it

Rows are written in blocks of `rows_per_block` examples; block b owns rows [b*R, (b+1)*R) of every row array
(one shard each) and, in every token array, a range that starts on a shard boundary, so that each shard is
written whole by exactly one writer in one call. The unused tail of a block's last token shard is never
written (empty inner chunks are not stored), so the gaps cost no bytes; `token_index` gives the true extents.

Array families: a row array has one entry per example; a token array has one entry per target token (or per
sequence token for `hidden` with hidden_tokens "all"), and its index array gives each row's (start, count).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from skdcache.cache import idcoding
from skdcache.cache.chunking import CHUNKS_PER_TOKEN_SHARD, aligned_starts, row_chunk, token_chunk
from skdcache.cache.kinds import ARRAY_NAMES, INDEX_ARRAYS, INDEX_OF, Dims, array_names, stored_kinds
from skdcache.cache.manifest import FORMAT_VERSION, damaged, parse_count
from skdcache.cache.spec import TargetSpec
from skdcache.errors import CacheError

DATASET_FILE = "dataset.json"
ROWS_PER_BLOCK = 1024


@dataclass(frozen=True)
class ArraySpec:
    """One array of a teacher cache: full shape, dtype, inner chunk, shard (axis 0), coding (idcoding.py)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int
    shard_rows: int
    coding: str | None = None

    @property
    def chunks(self) -> tuple[int, ...]:
        return (self.chunk_rows, *self.shape[1:])

    @property
    def shards(self) -> tuple[int, ...]:
        return (self.shard_rows, *self.shape[1:])


def index_array(name: str, present) -> str | None:
    """The index array giving the token range of each row of `name`, or None for a row array.

    Args:
        present: the names of the arrays this cache has (a layout's or a group's arrays).
    """
    index = INDEX_OF.get(name)
    return index if index in present else None


@dataclass(frozen=True)
class Layout:
    """Every array of one teacher cache, derived only from the spec, the shapes and the token counts."""

    rows_per_block: int
    n_rows: int
    arrays: dict[str, ArraySpec]

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.rows_per_block)

    def block_rows(self, block: int) -> tuple[int, int]:
        start = block * self.rows_per_block
        return start, min(start + self.rows_per_block, self.n_rows)

    def to_dict(self) -> dict:
        return {
            "rows_per_block": self.rows_per_block,
            "n_blocks": self.n_blocks,
            "arrays": {a.name: _array_dict(a) for a in self.arrays.values()},
        }

    @property
    def format_version(self) -> int:  # 2 when an array is coded (older skdcache must refuse it), else 1 as ever
        return FORMAT_VERSION if any(a.coding for a in self.arrays.values()) else 1

    def with_codings_of(self, layout: dict | None) -> Layout:
        """With the codings of a manifest's layout: resuming or repairing writes a cache as it was written."""
        old = idcoding.codings_in(layout)
        arrays = {n: replace(a, coding=old.get(n, a.coding)) for n, a in self.arrays.items()}
        return Layout(self.rows_per_block, self.n_rows, arrays)


def _array_dict(a: ArraySpec) -> dict:
    d = {"shape": list(a.shape), "dtype": a.dtype, "chunks": list(a.chunks), "shards": list(a.shards)}
    return {**d, "coding": a.coding} if a.coding else d


def plan_layout(
    spec: TargetSpec,
    n_rows: int,
    n_labels: int | None,
    vocab_size: int | None,
    hidden_size: int | None,
    target_counts: np.ndarray | None,
    seq_lengths: np.ndarray | None,
    rows_per_block: int = ROWS_PER_BLOCK,
) -> tuple[Layout, dict[str, np.ndarray]]:
    """Plan the arrays and the (start, count) index arrays that depend only on token counts.

    Returns the layout and the index arrays ({"token_index": [n_rows, 2], "hidden_index": [n_rows, 2]})
    so that a resumed run reproduces the exact same positions.
    """
    R = rows_per_block
    arrays: dict[str, ArraySpec] = {}
    index: dict[str, np.ndarray] = {}

    def rows_array(name: str, tail: tuple[int, ...], dtype: str) -> None:
        row_bytes = int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
        arrays[name] = ArraySpec(name, (n_rows, *tail), dtype, row_chunk(row_bytes, R), R)

    def token_arrays(index_name: str, counts: np.ndarray, members: list[tuple[str, tuple[int, ...], str]]) -> None:
        token_bytes = sum(int(np.prod(t, dtype=np.int64)) * np.dtype(d).itemsize for _, t, d in members)
        chunk = token_chunk(token_bytes)
        shard = chunk * CHUNKS_PER_TOKEN_SHARD
        starts, total = aligned_starts(counts, R, shard)
        index[index_name] = np.stack([starts, counts.astype(np.int64)], axis=1)
        rows_array(index_name, (2,), "int64")
        for name, tail, dtype in members:
            arrays[name] = ArraySpec(name, (total, *tail), dtype, chunk, shard, idcoding.coding_for(name))

    dims, counts = Dims(n_labels, vocab_size, hidden_size), {"token_index": target_counts, "hidden_index": seq_lengths}
    groups: dict[str, list] = {}  # index array -> its members, in `KINDS` order; a row array: itself
    for kind in stored_kinds(spec):
        by = kind.index_for(spec)
        for f in kind.fields:
            groups.setdefault(by or f.name, []).append((f.name, f.shape(spec, dims), f.dtype(spec, dims)))
    for key, members in groups.items():
        if key in counts:  # token arrays of one index share its chunking (sized by their summed bytes)
            token_arrays(key, counts[key], members)
        else:
            rows_array(*members[0])
    return Layout(R, n_rows, arrays), index


DTYPES = ("float16", "uint8", "uint16", "uint32", "int64")
MAX_ELEMENTS = 2**48  # far above any real cache, far below what a forged 10^12-row shape needs


def layout_from_dict(d: dict, n_rows: int, spec: TargetSpec | None = None) -> Layout:
    """Parse a manifest's layout and check it against itself, `n_rows` and (when given) the spec.

    Array names are checked so an edited manifest cannot point outside the group; shapes, chunks and counts
    so that a forged size is refused here instead of reaching an allocation.
    """
    if not isinstance(d, dict) or not isinstance(d.get("arrays"), dict):
        raise damaged("layout has no 'arrays' object")
    unknown = sorted(set(d["arrays"]) - set(ARRAY_NAMES))
    if unknown:
        raise CacheError(f"manifest names unknown arrays {unknown}; the cache was edited or damaged, recompute it")
    if spec is not None and set(d["arrays"]) != array_names(spec):
        raise damaged(f"layout arrays {sorted(d['arrays'])} are not those of its targets {sorted(array_names(spec))}")
    rows_per_block = parse_count(d.get("rows_per_block"), "layout.rows_per_block", 1, 2**30)
    arrays = {name: _array_spec(name, a) for name, a in d["arrays"].items()}
    layout = Layout(rows_per_block, n_rows, arrays)
    if d.get("n_blocks") != layout.n_blocks:
        raise damaged(f"layout.n_blocks is {d.get('n_blocks')!r}, {n_rows} rows make {layout.n_blocks} blocks")
    for a in arrays.values():
        index = index_array(a.name, arrays)
        if index is None and (a.shape[0] != n_rows or a.shard_rows != rows_per_block):
            raise damaged(
                f"array {a.name} has {a.shape[0]} rows in shards of {a.shard_rows}, "
                f"the cache {n_rows} in blocks of {rows_per_block}"
            )
        if a.name in INDEX_ARRAYS and a.shape[1:] != (2,):
            raise damaged(f"index array {a.name} has shape {list(a.shape)}, not [{n_rows}, 2]")
    return layout


def _array_spec(name: str, a: object) -> ArraySpec:
    if not isinstance(a, dict) or a.get("dtype") not in DTYPES:
        raise damaged(f"array {name} has no valid dtype (one of {list(DTYPES)})")
    lists = {k: a.get(k) for k in ("shape", "chunks", "shards")}
    if not all(isinstance(v, list) and 1 <= len(v) <= 4 for v in lists.values()):
        raise damaged(f"array {name}: shape, chunks and shards must be lists of 1 to 4 numbers")
    shape = tuple(parse_count(n, f"array {name} shape", 0, MAX_ELEMENTS) for n in lists["shape"])
    chunks = [parse_count(n, f"array {name} chunks", 1, MAX_ELEMENTS) for n in lists["chunks"]]
    shards = [parse_count(n, f"array {name} shards", 1, MAX_ELEMENTS) for n in lists["shards"]]
    if a.get("coding") not in (None, idcoding.coding_for(name)):  # v2 token arrays (idcoding.py)
        raise damaged(f"array {name} has coding {a['coding']!r}; this skdcache knows {idcoding.CODED_ARRAYS}")
    spec = ArraySpec(name, shape, a["dtype"], chunks[0], shards[0], a.get("coding"))
    if spec.chunks != tuple(chunks) or spec.shards != tuple(shards) or shards[0] % chunks[0]:
        raise damaged(f"array {name}: chunks {chunks} and shards {shards} do not tile shape {list(shape)}")
    if int(np.prod(shape, dtype=object)) > MAX_ELEMENTS or shards[0] // chunks[0] > 2**20:
        raise damaged(f"array {name}: shape {list(shape)} is impossibly large")
    return spec


def shard_file(array_dir: Path, shard: int, ndim: int) -> Path:
    """The file of shard `shard` along axis 0 (zarr v3 default key encoding "c/<i>/0/0...", separator "/").

    The one place shard paths are built: the writer (fsync, repair), the direct reader and integrity checks.
    """
    return array_dir.joinpath("c", str(shard), *(["0"] * (ndim - 1)))


def shards_of(lo: int, hi: int, shard_rows: int) -> range:
    """Shards along axis 0 that hold rows [lo, hi) (the shard of `lo` when the range is empty)."""
    return range(lo // shard_rows, max(lo, hi - 1) // shard_rows + 1)


def compressors():
    """Blosc-zstd on every inner chunk (float16 and small ints compress better byte-shuffled), then a
    crc32c of the compressed bytes: any reader (zarr or ours) refuses a damaged chunk instead of decoding
    garbage."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())
