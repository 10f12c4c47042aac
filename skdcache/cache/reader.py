"""Random-access reads of one teacher's cached targets, and integrity checks of whole caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from skdcache.cache import format as fmt
from skdcache.cache import idcoding, kinds
from skdcache.cache.fastread import InMemory, ShardedRows, checked_slice
from skdcache.cache.manifest import read_manifest
from skdcache.cache.markers import checksum, completed_blocks, marker_path, read_marker
from skdcache.cache.spec import TargetSpec
from skdcache.errors import CacheError

IN_MEMORY_BYTES = 32 * 2**20  # arrays this small (logits, indexes) are read whole once per process


@dataclass
class Targets:
    """One teacher's targets for a batch of rows, in the order asked.

    logits [B, C] float32; token targets flattened in row order with `token_counts` [B]:
    topk_logprobs [n, k] float32, topk_ids [n, k] int64, tail_logmass [n] float32, positions [n] int64;
    hidden [B, L, H] (cls) or [n_hid, L, H] with `hidden_counts` [B] (all tokens), float32.
    With `row_mask`, the arrays hold only the rows the mask marks, in batch order (per-row routing).
    """

    logits: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    tail_logmass: torch.Tensor | None = None
    sample_ids: torch.Tensor | None = None  # sampled / hybrid: [n, N] int64, distinct ids then padding
    sample_counts: torch.Tensor | None = None  # [n, N] int64 draws per id (0 = padding)
    sample_logprobs: torch.Tensor | None = None  # [n, N] float32 log p_T of each id
    positions: torch.Tensor | None = None
    token_counts: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    hidden_counts: torch.Tensor | None = None
    row_mask: torch.Tensor | None = None  # [B] bool, per-row routing: rows that have a teacher (the others none)
    row_weight: torch.Tensor | None = None  # [B] float32, per-row weighting: this teacher's weight on each row

    def to(self, device: torch.device) -> Targets:
        """The same targets on `device` (no copy on the CPU, where the cache reads them)."""
        if device.type == "cpu":
            return self
        return Targets(**{k: v.to(device, non_blocking=True) if v is not None else None for k, v in vars(self).items()})


def _damaged(what: str) -> CacheError:
    return CacheError(f"{what}; run `skdcache verify` and `skdcache precompute --repair`")


def _open_arrays(path: Path, layout: fmt.Layout) -> dict:
    """The layout's arrays, opened by zarr and checked against the manifest: shapes, dtypes, chunks and shards
    are stored twice (manifest and each array's zarr.json), so damage to either one is caught here."""
    arrays = {}
    for name in layout.arrays:
        try:  # zarr raises JSON, key, type and value errors for damaged metadata
            arrays[name] = zarr.open_array(str(path / name), mode="r")
        except Exception as exc:
            raise _damaged(f"array {name} of {path} has damaged metadata in its zarr.json ({str(exc)[:100]})") from None
    for name, spec in layout.arrays.items():
        a = arrays[name]
        if not isinstance(a, zarr.Array):
            raise _damaged(f"{path / name} is not an array")
        got = (tuple(a.shape), str(a.dtype), tuple(a.chunks), tuple(a.shards or a.chunks))
        want = (spec.shape, spec.dtype, spec.chunks, spec.shards)
        if got != want:
            raise _damaged(f"array {name} of {path} is {got} in its zarr.json, {want} in the manifest")
    return arrays


def _expand(index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Token positions of `rows` given their (start, count) pairs: [sum(count)] int64."""
    starts, counts = index[rows, 0], index[rows, 1]
    if counts.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return offsets + np.arange(counts.sum(), dtype=np.int64)


class TeacherCache:
    """Open a complete teacher cache; `read(rows)` returns its targets as tensors.

    Reads are one orthogonal selection per array: zarr groups the requested rows by inner chunk, so a
    random batch costs one small read per touched chunk, not one per row.
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise CacheError(f"no teacher cache at {self.path}; run `skdcache precompute` first")
        self.manifest = read_manifest(self.path)
        self.targets = TargetSpec.from_dict(self.manifest.targets)
        self.n_rows = int(self.manifest.dataset.n_rows)
        self.layout = fmt.layout_from_dict(self.manifest.layout, self.n_rows, self.targets)
        done = completed_blocks(self.path) & set(range(self.layout.n_blocks))
        missing = set(range(self.layout.n_blocks)) - done
        if missing and not allow_incomplete:
            raise CacheError(
                f"teacher cache {self.name} is incomplete ({len(missing)} of {self.layout.n_blocks} blocks missing); "
                f"rerun `skdcache precompute` to finish it"
            )
        self._complete_blocks = np.zeros(self.layout.n_blocks, dtype=bool)
        self._complete_blocks[list(done)] = True
        self._complete_rows = np.zeros(self.n_rows, dtype=bool)
        self._damaged_rows = np.zeros(self.n_rows, dtype=bool)  # rows of blocks whose index fails its marker
        for b in done:
            lo, hi = self.layout.block_rows(b)
            self._complete_rows[lo:hi] = True
        self.arrays = _open_arrays(self.path, self.layout)
        self.index: dict[str, np.ndarray] = {}
        for name in kinds.INDEX_ARRAYS:
            if name in self.arrays:
                self.index[name] = self._read_index(name)
        self._sources: dict = {}

    def _read_index(self, name: str) -> np.ndarray:
        """An index array [n_rows, 2] of (start, count); each range must lie inside the arrays it indexes."""
        try:
            values = self._read_complete_rows(name)
        except CacheError:
            raise
        except Exception as exc:  # a chunk that fails its checksum or does not decode
            raise _damaged(f"index array {name} of {self.path} is unreadable ({type(exc).__name__})") from None
        arrays = self.layout.arrays
        extent = min(a.shape[0] for a in arrays.values() if fmt.index_array(a.name, arrays) == name)
        starts, counts = values[:, 0], values[:, 1]
        if values.size and (starts.min() < 0 or counts.min() < 0 or (starts + counts).max() > extent):
            raise _damaged(f"index array {name} of {self.path} points outside its arrays ({extent} rows)")
        for block in self._blocks_failing_markers(name, values):
            self._damaged_rows[slice(*self.layout.block_rows(block))] = True
        return values

    def _read_complete_rows(self, name: str) -> np.ndarray:
        """Row array `name` over complete blocks, zeros elsewhere: a block killed mid-write may leave a torn shard."""
        array = self.arrays[name]
        if self._complete_blocks.all():
            return checked_slice(array, self.path / name, 0, self.n_rows)
        values = np.zeros(array.shape, dtype=array.dtype)
        for lo, hi in map(self.layout.block_rows, np.flatnonzero(self._complete_blocks).tolist()):
            values[lo:hi] = checked_slice(array, self.path / name, lo, hi)
        return values

    def _rows(self, name: str):
        if name not in self._sources:  # built on first use: verify() must open damaged caches too
            self._sources[name] = self._row_source(name)
        return self._sources[name]

    def _row_source(self, name: str):
        """How `name` is read: in memory when small, the direct shard reader when local, else zarr."""
        array = self.arrays[name]
        if array.nbytes <= IN_MEMORY_BYTES:
            memory = InMemory(name, array, self.path / name)
            for block in self._blocks_failing_markers(name, memory.values):
                memory.damaged[slice(*self._block_values_range(name, *self.layout.block_rows(block)))] = True
            return memory.rows
        try:
            return ShardedRows(self.path / name, array).rows
        except ValueError:
            return lambda rows: array.get_orthogonal_selection((rows,))

    def _blocks_failing_markers(self, name: str, values: np.ndarray) -> list[int]:
        """Complete blocks whose values of array `name` differ from their marker's checksum.

        A small array read whole costs one crc32 per block to check, and this catches what per-chunk
        checksums cannot: a forged shard index that points a chunk at another chunk's bytes, or at none.
        """
        bad = []
        for block in np.flatnonzero(self._complete_blocks).tolist():
            sums = read_marker(marker_path(self.path, block), block)
            if sums is None:
                continue  # an unreadable marker is `verify`'s finding; the chunks' own checksums still hold
            lo, hi = self._block_values_range(name, *self.layout.block_rows(block))
            if sums.get(name) != checksum(values[lo:hi]):
                bad.append(block)
        return bad

    @property
    def name(self) -> str:
        return self.manifest.teacher.name

    @property
    def dataset_fingerprint(self) -> str:
        return self.manifest.dataset.fingerprint

    def check_dataset(self, fingerprint: str, n_rows: int | None = None) -> None:
        if fingerprint != self.dataset_fingerprint:
            raise CacheError(
                f"teacher cache {self.name} was computed for dataset {self.dataset_fingerprint[:12]}, not "
                f"{fingerprint[:12]} (other rows, order, labels or columns); precompute it for this data"
            )
        if n_rows is not None and n_rows != self.n_rows:
            raise CacheError(f"teacher cache {self.name} holds {self.n_rows} rows, the data has {n_rows}")

    def read(self, rows) -> Targets:
        """Targets of `rows` (any order, repeats allowed) as float32/int64 tensors."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"row index out of range for a cache of {self.n_rows} rows")
        if not self._complete_rows[rows].all():
            raise CacheError(f"rows of teacher cache {self.name} are not written yet; rerun precompute")
        if self._damaged_rows[rows].any():
            bad = rows[self._damaged_rows[rows]][:3].tolist()
            raise _damaged(f"the index of teacher cache {self.name} is damaged at rows {bad}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        out = Targets()
        for name in kinds.FIELDS:  # every stored field of every kind, as `kinds` lays them out
            if name not in self.arrays:
                continue
            index = fmt.index_array(name, self.index)
            if index is None:  # one entry per row
                values = self._rows(name)(uniq)[inverse]
            else:  # the rows' ranges of entries, in row order, with each row's count
                values = self._gather(name, _expand(self.index[index], rows))
                setattr(out, kinds.COUNTS_OF[index], torch.from_numpy(self.index[index][rows, 1].copy()))
            coding = self.layout.arrays[name].coding  # stored coded (v2): decoded here, the one place
            setattr(out, name, _tensor(idcoding.decode(coding, values)))
        return out

    def _gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        if positions.size == 0:
            return np.zeros((0, *self.arrays[name].shape[1:]), dtype=self.arrays[name].dtype)
        uniq, inverse = np.unique(positions, return_inverse=True)
        return self._rows(name)(uniq)[inverse]

    def verify(self) -> list[str]:
        """Re-read every block and compare its checksum; return one line per problem (empty = healthy)."""
        return [p for problems in self.verify_blocks().values() for p in problems]

    def verify_blocks(self) -> dict[int, list[str]]:
        """Problems by block: what `precompute --repair` recomputes."""
        found: dict[int, list[str]] = {}
        for block in range(self.layout.n_blocks):
            problems = found.setdefault(block, [])
            marker = marker_path(self.path, block)
            if not marker.exists():
                problems.append(f"block {block}: not written (no completion marker)")
                continue
            expected = read_marker(marker, block)
            if expected is None:
                problems.append(f"block {block}: completion marker unreadable")
                continue
            lo, hi = self.layout.block_rows(block)
            for name in self.arrays:
                try:
                    got = checksum(self._block_values(name, lo, hi))
                except Exception as exc:  # any decode failure is damage to report, not to raise
                    problems.append(f"block {block} array {name}: unreadable ({type(exc).__name__}: {exc})")
                    continue
                if got != expected.get(name):
                    problems.append(f"block {block} array {name}: checksum {got} != recorded {expected.get(name)}")
        return {b: p for b, p in found.items() if p}

    def _block_values_range(self, name: str, lo: int, hi: int) -> tuple[int, int]:
        """Rows [lo, hi) of array `name` that block rows [lo, hi) own."""
        family = fmt.index_array(name, self.index)
        if family is None:
            return lo, hi
        idx = self.index[family][lo:hi]
        return int(idx[0, 0]), max(int(idx[0, 0]), int(idx[-1, 0] + idx[-1, 1]))

    def _block_values(self, name: str, lo: int, hi: int) -> np.ndarray:
        lo, hi = self._block_values_range(name, lo, hi)
        if hi <= lo:
            return np.zeros((0, *self.arrays[name].shape[1:]), dtype=self.arrays[name].dtype)
        return checked_slice(self.arrays[name], self.path / name, lo, hi)

    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _tensor(values: np.ndarray) -> torch.Tensor:
    """Floats as float32, integers (ids, positions, counts) as int64: what losses and embeddings take."""
    dtype = torch.float32 if np.issubdtype(values.dtype, np.floating) else torch.int64
    if values.dtype == np.uint16 or values.dtype == np.uint32:
        values = values.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)


def group_problems(group: Path) -> list[str]:
    """What is wrong with a group that should be complete, by the checksums it carries (empty when whole).

    Never raises: a damaged index or metadata file is a finding, not a crash.
    """
    try:
        if read_manifest(group).state != "complete":
            return ["its manifest is not complete"]
        return TeacherCache(group).verify()
    except Exception as exc:
        return [f"cannot open: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"]
