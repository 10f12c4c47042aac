"""The capture pipeline changes no cache byte: every shard precompute writes (encoded by skdcache in threads) is
the file zarr's own writer makes from the same values, block by block, for every target kind."""

from __future__ import annotations

import pytest
import zarr

from skdcache.cache import format as fmt
from skdcache.cache.manifest import read_manifest
from skdcache.data.rows import DataSpec, load_rows
from skdcache.precompute import TargetOptions, precompute_teacher
from skdcache.teacher.load import TeacherSpec
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
    index = {name: group[name][:] for name in fmt.INDEX_ARRAYS if name in layout.arrays}
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
