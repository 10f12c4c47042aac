"""Cache format: token ranges start on shard boundaries, chunks tile shards, token-id dtype follows the vocab."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from conftest import make_model, write_split

from skdcache import DataSpec, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.cache import format as fmt
from skdcache.cache import kinds
from skdcache.cache.chunking import aligned_starts
from skdcache.cache.manifest import Manifest
from skdcache.cache.spec import TargetSpec


def test_token_id_dtype_boundary():
    """uint16 holds ids 0..65535 (vocab up to 65536); one more token needs uint32."""
    assert kinds.token_id_dtype(30522) == kinds.token_id_dtype(65536) == "uint16"
    assert kinds.token_id_dtype(65537) == kinds.token_id_dtype(151936) == "uint32"


def test_aligned_starts_by_hand():
    """Blocks of 2 rows, shards of 4 tokens: each block starts on the next boundary; empty blocks take no space."""
    counts = np.array([3, 5, 0, 0, 7, 1, 2])
    starts, total = aligned_starts(counts, rows_per_block=2, shard_len=4)
    assert starts.tolist() == [0, 3, 8, 8, 8, 15, 16]
    assert total == 18  # the last block is not padded


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("rows_per_block", "shard_len"), [(4, 8), (16, 64), (32, 512), (7, 5)])
def test_aligned_starts_blocks_own_whole_shards(seed: int, rows_per_block: int, shard_len: int):
    """Rows of a block are contiguous from a shard boundary; no two blocks touch one shard; no rows overlap."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, size=int(rng.integers(1, 120)))
    counts[rng.random(len(counts)) < 0.2] = 0
    starts, total = aligned_starts(counts, rows_per_block, shard_len)
    ends = starts + counts
    order = np.lexsort((ends, starts))
    assert (starts[order][1:] >= ends[order][:-1]).all()  # no overlap
    assert total == max(int(ends.max()), 1)
    owner: dict[int, int] = {}
    for b0 in range(0, len(counts), rows_per_block):
        s, e = starts[b0 : b0 + rows_per_block], ends[b0 : b0 + rows_per_block]
        assert s[0] % shard_len == 0
        assert (s[1:] == e[:-1]).all()  # contiguous inside the block, in row order
        if e[-1] > s[0]:
            for shard in range(s[0] // shard_len, (e[-1] - 1) // shard_len + 1):
                assert owner.setdefault(shard, b0) == b0, f"shard {shard} shared by blocks {owner[shard]} and {b0}"


def _check_tiling(layout: fmt.Layout, rows_per_block: int, tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "z"), mode="w")
    for spec in layout.arrays.values():
        assert spec.shard_rows % spec.chunk_rows == 0, spec
        assert spec.chunks[1:] == spec.shards[1:] == spec.shape[1:]
        if spec.shape[0] == layout.n_rows:
            assert spec.shard_rows == rows_per_block, spec  # one shard of every row array per block
        group.create_array(spec.name, shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks, shards=spec.shards)


SPECS = {
    "sequence-cls": (TargetSpec("sequence", 128, hidden_layers=(0, 1, 2), hidden_tokens="cls"), 768),
    "sequence-cls-small": (TargetSpec("sequence", 128, hidden_layers=(2,), hidden_tokens="cls"), 32),
    "mlm-all": (TargetSpec("mlm", 128, top_k=32, hidden_layers=(1, 2), hidden_tokens="all"), 128),
    "causal": (TargetSpec("causal", 128, top_k=8), 64),
}


def _plan(name: str, rows_per_block: int, n_rows: int = 300):
    spec, hidden = SPECS[name]
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 128, size=n_rows)
    counts = lengths if spec.head == "causal" else np.maximum(1, lengths // 7)
    return fmt.plan_layout(spec, n_rows, 3, 70000, hidden, counts, lengths, rows_per_block)


@pytest.mark.parametrize("rows_per_block", [16, 64, 128, 1024])
@pytest.mark.parametrize("name", list(SPECS))
def test_plan_layout_chunks_tile_shards(tmp_path: Path, name: str, rows_per_block: int):
    """Every inner chunk divides its shard (zarr accepts the layout) and the index matches the counts."""
    layout, index = _plan(name, rows_per_block)
    _check_tiling(layout, rows_per_block, tmp_path)
    spec = SPECS[name][0]
    if spec.token_level:
        assert layout.arrays["topk_ids"].dtype == "uint32"
        assert layout.arrays["topk_logprobs"].shape[1:] == (spec.top_k,)
        shard = layout.arrays["topk_logprobs"].shard_rows
        starts, total = aligned_starts(index["token_index"][:, 1], rows_per_block, shard)
        assert (index["token_index"][:, 0] == starts).all() and layout.arrays["positions"].shape == (total,)
    else:
        assert layout.arrays["logits"].shape == (300, 3)
    if spec.hidden_tokens == "all":
        assert int(index["hidden_index"][-1].sum()) == layout.arrays["hidden"].shape[0]
    assert fmt.layout_from_dict(layout.to_dict(), 300) == layout


@pytest.mark.parametrize("rows_per_block", [48, 100])
def test_plan_layout_chunks_tile_shards_any_block_size(tmp_path: Path, rows_per_block: int):
    """rows_per_block is a user option: a block size that is not a power of two must still give a valid layout."""
    spec = TargetSpec("sequence", 128, hidden_layers=(0, 1, 2), hidden_tokens="cls")
    layout, _ = fmt.plan_layout(spec, 300, 3, None, 128, None, None, rows_per_block)
    _check_tiling(layout, rows_per_block, tmp_path)


def test_spec_and_manifest_round_trip():
    """TargetSpec and Manifest survive to_dict/from_dict (what the group attributes hold)."""
    spec = TargetSpec("mlm", 64, top_k=16, hidden_layers=(0, 2), hidden_tokens="all", mlm_probability=0.15, mask_seed=0)
    assert TargetSpec.from_dict(spec.to_dict()) == spec
    layout, _ = _plan("mlm-all", 64)
    m = Manifest(1, {"name": "t"}, "tok", {"n_rows": 300}, spec.to_dict(), layout.to_dict())
    assert Manifest.from_dict(m.to_dict()) == m and m.state == "writing"


def test_uint32_token_ids_round_trip(tmp_path: Path):
    """A 70,000-token vocabulary stores uint32 ids; ids above 65,535 come back intact and match a direct top-k."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = make_model(tmp_path / "big", "causal", hidden=8, vocab_size=70000, seed=3)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():  # widen the 0.02-std init so the top-k is well separated
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(12)
    model.save_pretrained(teacher)
    model.eval()
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 24, seed=4)
    opts = TargetOptions(max_length=16, top_k=8, batch_size=8, rows_per_block=16, progress=False)
    spec = DataSpec(str(data), label_column=None)
    [result] = precompute(spec, [TeacherSpec("big", str(teacher))], tmp_path / "c", opts)
    assert zarr.open_group(str(result.path), mode="r")["topk_ids"].dtype == np.uint32

    tok = AutoTokenizer.from_pretrained(teacher)
    with open(data / "train.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    batch = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    lengths = batch["attention_mask"].sum(1).tolist()
    reference = torch.cat([logp[i, :n] for i, n in enumerate(lengths)]).double()  # [n_tok, 70000]
    ref_values, ref_ids = reference.topk(8, dim=-1)

    targets = TeacherCache(result.path).read(np.arange(24))
    assert targets.token_counts.tolist() == lengths
    torch.testing.assert_close(targets.topk_logprobs.double(), ref_values, rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(
        reference.gather(1, targets.topk_ids), targets.topk_logprobs.double(), rtol=2e-3, atol=2e-4
    )
    assert (targets.topk_ids == ref_ids).float().mean() > 0.99
    high = ref_ids > 65535
    assert high.sum() > 10 and (targets.topk_ids[high] == ref_ids[high]).float().mean() > 0.99
    assert targets.topk_ids.max() < 70000
