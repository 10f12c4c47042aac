"""The cache writer: every shard precompute writes (encoded by skdcache in threads) is the file zarr's own writer
makes from the same values, block by block, for every target kind; and, directly on small layouts, markers
published after the bytes, resume, refusals, and the invalidation of one damaged block."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import zarr

from skdcache.cache import format as fmt
from skdcache.cache import idcoding, kinds
from skdcache.cache import writer as writer_module
from skdcache.cache.manifest import FORMAT_VERSION, Manifest, read_manifest
from skdcache.cache.markers import checksum, marker_path, read_marker
from skdcache.cache.reader import TeacherCache
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter
from skdcache.data.rows import DataSpec, load_rows
from skdcache.errors import CacheError
from skdcache.precompute import precompute_teacher
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from tests.conftest import make_model

KINDS = {
    "sequence": ("sequence", {"hidden_layers": "all", "hidden_tokens": "cls"}),
    "all_tokens": ("sequence", {"hidden_layers": "0,2", "hidden_tokens": "all"}),
    "mlm_topk": ("mlm", {"top_k": 8}),
    "causal_sampled": ("causal", {"targets": "sampled", "samples": 12}),
    "causal_hybrid": ("causal", {"targets": "hybrid", "top_k": 4, "samples": 6}),
}


@pytest.mark.parametrize("kind", KINDS)
def test_shards_equal_zarrs_own_writes(tmp_path, data_dir, kind):
    head, fields = KINDS[kind]
    teacher = make_model(tmp_path / "t", head, seed=5)
    rows = load_rows(DataSpec(str(data_dir), label_column="label" if head == "sequence" else None))
    opts = TargetOptions(max_length=32, batch_size=16, progress=False, eval_split=None, rows_per_block=64, **fields)
    result = precompute_teacher(TeacherSpec("t", str(teacher)), rows, tmp_path / "cache", opts)
    assert result.stages["encode"]["calls"] > 0 and result.stages["write"]["calls"] > 0
    group = zarr.open_group(str(result.path), mode="r")
    layout = fmt.layout_from_dict(read_manifest(result.path).layout, len(rows))
    index = {name: group[name][:] for name in kinds.INDEX_ARRAYS if name in layout.arrays}
    ref = zarr.open_group(str(tmp_path / "ref"), mode="w")
    compared = 0
    for name, spec in layout.arrays.items():
        values = group[name][:]
        arr = ref.create_array(
            name,
            shape=spec.shape,
            dtype=spec.dtype,
            chunks=spec.chunks,
            shards=spec.shards,
            compressors=fmt.compressors(),
            fill_value=0,
            config={"write_empty_chunks": True},
        )
        idx = fmt.index_array(name, layout.arrays)
        for block in range(layout.n_blocks):  # the regions each block owns, written as the old writer did
            start, stop = layout.block_rows(block)
            lo, hi = (start, stop) if idx is None else (index[idx][start, 0], index[idx][stop - 1].sum())
            if hi > lo:
                arr[lo:hi] = values[lo:hi]
        ours = sorted(p.relative_to(result.path) for p in (result.path / name / "c").rglob("*") if p.is_file())
        theirs = sorted(
            p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref" / name / "c").rglob("*") if p.is_file()
        )
        assert ours == theirs, name
        for rel in ours:
            assert (result.path / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes(), rel
            compared += 1
    assert compared > layout.n_blocks


# ---- the writer on its own, on small hand-made layouts ------------------------------------------------------------
CAUSAL = TargetSpec("causal", 16, top_k=2)


def causal_writer(path: Path, counts: list[int], rows_per_block: int = 4) -> CacheWriter:
    counts = np.asarray(counts)
    layout, index = fmt.plan_layout(CAUSAL, len(counts), None, 100, None, counts, None, rows_per_block=rows_per_block)
    manifest = Manifest(
        FORMAT_VERSION,
        {"name": "t"},
        "tok",
        {"fingerprint": "f" * 32, "n_rows": len(counts)},
        CAUSAL.to_dict(),
        layout.to_dict(),
        cache_key="k",
    )
    return CacheWriter(path, manifest, layout, index)


def token_block(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "topk_logprobs": -rng.random((n, 2)).astype(np.float16),
        "topk_ids": rng.integers(0, 100, (n, 2)).astype(np.uint16),
        "tail_logmass": -rng.random(n).astype(np.float16),
        "positions": np.arange(n, dtype=np.uint16),
    }


def shard_files(group: Path) -> set[str]:
    return {p.relative_to(group).as_posix() for p in group.rglob("*") if p.is_file() and "/c/" in p.as_posix()}


def test_a_block_is_marked_with_the_checksums_of_its_stored_values(tmp_path: Path):
    w = causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 2])
    data = token_block(10, seed=0)
    data["topk_ids"] = data["topk_ids"].astype(np.int64)  # cast to the stored dtype on the way
    w.write_block(0, data)
    assert w.done() == {0}
    marker = read_marker(marker_path(tmp_path / "g", 0), 0)
    stored = {n: np.asarray(v, dtype=w.layout.arrays[n].dtype) for n, v in data.items()}
    stored["token_index"] = w.index["token_index"][0:4]
    coded = {n: idcoding.encode(w.layout.arrays[n].coding, v) for n, v in stored.items()}  # the bytes on disk
    assert w.layout.arrays["topk_logprobs"].coding and marker == {n: checksum(v) for n, v in coded.items()}
    assert data["topk_ids"].dtype == np.int64  # the caller's arrays are not modified
    with pytest.raises(CacheError, match="blocks \\[1\\] missing; rerun precompute"):
        w.finish(None)
    w.write_block(1, token_block(4, seed=1))
    manifest = w.finish({"name": "accuracy", "value": 0.5})
    assert manifest.state == "complete" and read_manifest(tmp_path / "g").state == "complete"
    cache = TeacherCache(tmp_path / "g")
    assert cache.verify_blocks() == {}
    got = cache.read([0, 5])
    assert got.token_counts.tolist() == [3, 2]


def test_a_reopened_writer_resumes_and_a_changed_layout_is_refused(tmp_path: Path):
    w = causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 2])
    w.write_block(0, token_block(10, seed=0))
    assert causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 2]).done() == {0}  # same layout: resumes
    with pytest.raises(CacheError, match="holds a different layout; delete it to recompute"):
        causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 3])


def test_a_changed_layout_without_finished_blocks_starts_over(tmp_path: Path):
    causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 2])  # created, then cut short before any block
    w = causal_writer(tmp_path / "g", [1, 1, 1, 1, 1, 1])
    assert w.done() == set() and read_manifest(tmp_path / "g").layout == w.layout.to_dict()


def test_a_block_of_the_wrong_size_is_refused_unmarked(tmp_path: Path):
    w = causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 2])
    with pytest.raises(CacheError, match="block 0 of topk_logprobs: 9 rows for a region of 10"):
        w.write_block(0, token_block(9, seed=0))
    assert w.done() == set()


def test_a_full_disk_is_one_line_and_leaves_the_block_unmarked(tmp_path: Path, monkeypatch):
    w = causal_writer(tmp_path / "g", [3, 2, 1, 4, 2, 2])

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module.os, "write", full)
    with pytest.raises(CacheError) as info:
        w.write_block(0, token_block(10, seed=0))
    monkeypatch.undo()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("disk full while writing block 0") and "finished blocks are kept" in msg
    assert w.done() == set()


def test_invalidate_removes_one_block_and_nothing_of_the_others(tmp_path: Path):
    group = tmp_path / "g"
    w = causal_writer(group, [3, 2, 1, 4, 2, 2, 1, 1, 5, 1, 1, 1])
    for b, n in enumerate((10, 6, 8)):
        w.write_block(b, token_block(n, seed=b))
    before = shard_files(group)
    w.invalidate(1)
    assert w.done() == {0, 2}
    gone = before - shard_files(group)
    assert gone and all(p.startswith(tuple(f"{n}/c/1" for n in w.layout.arrays)) for p in gone), gone
    assert read_manifest(group).state == "writing"
    problems = TeacherCache(group, allow_incomplete=True).verify_blocks()
    assert set(problems) == {1}  # blocks 0 and 2 still read back and match their markers


def test_invalidating_a_block_without_targets_keeps_the_next_blocks_shards(tmp_path: Path):
    """A block whose rows have no token targets (e.g. chat rows whose answers lie past --max-length) owns no
    token shard; its region starts on the boundary where the next block's first shard begins."""
    group = tmp_path / "g"
    w = causal_writer(group, [0, 0, 0, 0, 3, 2, 1, 4])
    w.write_block(0, token_block(0, seed=0))
    w.write_block(1, token_block(10, seed=1))
    w.invalidate(0)
    assert w.done() == {1}
    assert shard_files(group) >= {
        f"{n}/c/0" + ("/0" if n in ("topk_logprobs", "topk_ids") else "")
        for n in ("topk_logprobs", "topk_ids", "tail_logmass", "positions")
    }
    assert set(TeacherCache(group, allow_incomplete=True).verify_blocks()) == {0}
