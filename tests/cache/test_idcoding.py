"""Token array codings (cache format v2): lossless round trips, v1 caches still read, reads equal across formats."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from skdcache.cache import format as fmt
from skdcache.cache import idcoding, kinds
from skdcache.cache.manifest import Manifest
from skdcache.cache.reader import TeacherCache
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter
from skdcache.errors import CacheError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_v1_cache as v1  # noqa: E402


def _topk(rng, n: int, k: int, vocab: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids per row (0 and vocab - 1 among them) and descending float16 log-probs, edge values included."""
    ids = np.stack([rng.choice(np.arange(1, vocab - 1), k, replace=False) for _ in range(n)]).astype(dtype)
    ids[0, :2] = [vocab - 1, 0]
    ids[1, -2:] = [0, vocab - 1]
    lp = (-np.sort(rng.exponential(rng.choice([0.01, 1.0, 30.0]), (n, k)), axis=1)).astype(np.float16)
    lp[2, :2] = [0.0, -0.0]  # a certain token; -0.0 has the sign bit set
    lp[3, -2:] = [-65504.0, -np.inf]  # the largest float16 magnitude and a zero probability
    return ids, lp


def _sampled(rng, n: int, samples: int, vocab: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Ascending distinct ids then zero padding (count 0), as reduce.py writes them."""
    ids = np.zeros((n, samples), dtype=dtype)
    counts = np.zeros((n, samples), dtype=np.uint8)
    for t in range(n):
        m = int(rng.integers(1, samples + 1))
        ids[t, :m] = np.sort(rng.choice(vocab, m, replace=False))  # may include 0 (first) and vocab - 1 (last)
        counts[t, :m] = 1
    ids[0, 0] = 0  # id 0 first
    ids[1:3], counts[1:3] = 0, 0
    ids[1, :2], counts[1, :2] = [0, vocab - 1], 1  # id 0 and vocab - 1, then padding
    ids[2, 0], counts[2, 0] = vocab - 1, 1  # vocab - 1 alone
    return ids, counts


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("vocab,dtype", [(1000, "uint16"), (65536, "uint16"), (151_936, "uint32")])
def test_delta_round_trips_token_targets(seed: int, vocab: int, dtype: str):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(4, 300)), int(rng.choice([1, 2, 8, 32, 64]))
    ids, lp = _topk(rng, n, max(k, 2), vocab, dtype)
    sids, counts = _sampled(rng, n, max(k, 3), vocab, dtype)
    cases = [(idcoding.DELTA, v) for v in (lp, sids, ids, lp[:, :1], sids[:0])]
    cases += [(idcoding.GAPS, v) for v in (sids, sids[:, :1], sids[:0], np.sort(ids, axis=1))]
    for coding, values in cases:
        coded = idcoding.encode(coding, values)
        assert coded.shape == values.shape and coded.dtype == values.dtype
        back = idcoding.decode(coding, coded)
        assert back.dtype == values.dtype
        np.testing.assert_array_equal(back.view(np.uint8), np.ascontiguousarray(values).view(np.uint8))  # bit for bit
    # what the coding is for: descending log-probs become small non-negative steps, sorted ids their gaps
    steps = idcoding.encode(idcoding.DELTA, lp[4:]).view(np.uint16)[:, 1:]
    assert (steps < 0x8000).all()
    gaps = idcoding.encode(idcoding.GAPS, sids).astype(np.int64)[:, 1:]
    valid = counts[:, 1:] > 0
    assert (gaps[valid] >= 1).all() and (gaps[~valid] == 0).all()  # padding stays 0, not 0 - last id


@pytest.mark.parametrize(
    "row",
    [[5, 3, 0], [5, 5, 0], [5, 0, 7], [0, 0, 3]],  # descending, repeated, an id after padding, id 0 not first
)
def test_gaps_refuses_what_it_could_not_restore(row: list[int]):
    ok = np.array([[0, 0, 0], [4, 0, 0], [0, 9, 65535]], dtype=np.uint16)  # id 0 alone, one id, 0 then ids
    np.testing.assert_array_equal(idcoding.decode(idcoding.GAPS, idcoding.encode(idcoding.GAPS, ok)), ok)
    with pytest.raises(ValueError, match="ascending"):
        idcoding.encode(idcoding.GAPS, np.array([row] * 2, dtype=np.uint16))


def test_delta_round_trips_any_bit_pattern():
    """Modular arithmetic: any values at all come back bit for bit (NaN payloads, unsorted, big-endian)."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**16, (500, 17), dtype=np.uint16)
    for values in (bits, bits.view(np.float16), rng.integers(0, 2**32, (9, 5), dtype=np.uint32), bits[:, ::2]):
        back = idcoding.decode(idcoding.DELTA, idcoding.encode(idcoding.DELTA, values))
        np.testing.assert_array_equal(back.view(np.uint8), np.ascontiguousarray(values).view(np.uint8))
    swapped = bits.astype(">u2")  # another byte order comes back in the machine's, with the same values
    np.testing.assert_array_equal(idcoding.decode(idcoding.DELTA, idcoding.encode(idcoding.DELTA, swapped)), bits)
    assert idcoding.encode(None, bits) is bits and idcoding.decode(None, bits) is bits
    with pytest.raises(ValueError, match="unknown"):
        idcoding.decode("zigzag", bits)


def test_layout_records_codings_and_version():
    spec = TargetSpec.from_dict(v1.SPEC)
    layout, _ = fmt.plan_layout(spec, v1.N_ROWS, None, v1.VOCAB, None, v1.counts(), None, rows_per_block=v1.BLOCK)
    codings = {n: a.coding for n, a in layout.arrays.items() if a.coding}
    assert codings == {"topk_logprobs": "delta", "sample_ids": "gaps"}
    assert layout.format_version == 2
    d = layout.to_dict()
    assert d["arrays"]["sample_ids"]["coding"] == "gaps" and "coding" not in d["arrays"]["topk_ids"]
    assert fmt.layout_from_dict(d, v1.N_ROWS, spec) == layout
    # resuming / repairing a v1 cache keeps its (absent) codings, so it stays one consistent v1 cache
    old = json.loads((FIXTURES / "v1-hybrid" / "zarr.json").read_text())["attributes"]["skdcache"]["layout"]
    kept = layout.with_codings_of(old)
    assert not any(a.coding for a in kept.arrays.values()) and kept.format_version == 1
    assert kept.to_dict() == old
    # a sequence-level cache has nothing to code: written as v1, exactly as before
    seq, _ = fmt.plan_layout(TargetSpec("sequence", 16), 10, 3, None, None, None, None)
    assert seq.format_version == 1
    bad = json.loads(json.dumps(d))
    bad["arrays"]["topk_ids"]["coding"] = "delta"
    with pytest.raises(CacheError, match="coding"):
        fmt.layout_from_dict(bad, v1.N_ROWS, spec)


def _write(path: Path, coded: bool) -> Path:
    """The fixture's targets written by today's writer, with (v2) or without (v1) the codings."""
    spec = TargetSpec.from_dict(v1.SPEC)
    layout, index = fmt.plan_layout(spec, v1.N_ROWS, None, v1.VOCAB, None, v1.counts(), None, rows_per_block=v1.BLOCK)
    if not coded:
        layout = layout.with_codings_of({"arrays": {n: {} for n in layout.arrays}})
    dataset = {"fingerprint": "f" * 32, "n_rows": v1.N_ROWS}
    manifest = Manifest(layout.format_version, {"name": "t"}, "-", dataset, spec.to_dict(), layout.to_dict())
    writer = CacheWriter(path, manifest, layout, index)
    for b in range(layout.n_blocks):
        lo, hi = layout.block_rows(b)
        writer.write_block(b, v1.targets(int(v1.counts()[lo:hi].sum()), seed=b))
    writer.finish(None)
    return path


def _expected(rows: np.ndarray) -> dict[str, np.ndarray]:
    """The fixture's targets of `rows`, in order, with the stored dtypes."""
    spec = TargetSpec.from_dict(v1.SPEC)
    layout, _ = fmt.plan_layout(spec, v1.N_ROWS, None, v1.VOCAB, None, v1.counts(), None, rows_per_block=v1.BLOCK)
    c = v1.counts()
    per_row: dict[str, list] = {}
    for b in range(layout.n_blocks):
        lo, hi = layout.block_rows(b)
        block = v1.targets(int(c[lo:hi].sum()), seed=b)
        offsets = np.concatenate([[0], np.cumsum(c[lo:hi])])
        for r in range(lo, hi):
            for name, values in block.items():
                dtype = layout.arrays[name].dtype
                per_row.setdefault(name, []).append(values[offsets[r - lo] : offsets[r - lo + 1]].astype(dtype))
    return {name: np.concatenate([parts[r] for r in rows]) for name, parts in per_row.items()}


def test_v1_fixture_written_by_the_old_writer_reads_as_before(tmp_path: Path):
    """tests/cache/fixtures/v1-hybrid was written by the skdcache before codings (see make_v1_cache.py)."""
    group = FIXTURES / "v1-hybrid"
    attrs = zarr.open_group(str(group), mode="r").attrs["skdcache"]
    assert attrs["format_version"] == 1 and not any("coding" in a for a in attrs["layout"]["arrays"].values())
    cache = TeacherCache(group)
    assert cache.verify() == []
    rows = np.array([0, 3, 39, 17, 0, 22, 16, 15])  # repeats, a row without targets, block edges
    got = cache.read(rows)
    for name, want in _expected(rows).items():
        np.testing.assert_array_equal(getattr(got, name).numpy(), want.astype(getattr(got, name).numpy().dtype))


def test_v1_and_v2_caches_read_the_same(tmp_path: Path):
    """The same targets written with and without the codings: reads equal the input and each other; only the
    coded arrays' stored values differ, and a plain zarr reader undoes them as docs/cache-format.md says."""
    plain, coded = _write(tmp_path / "v1", coded=False), _write(tmp_path / "v2", coded=True)
    m1, m2 = (zarr.open_group(str(p), mode="r").attrs["skdcache"] for p in (plain, coded))
    assert (m1["format_version"], m2["format_version"]) == (1, 2)
    rng = np.random.default_rng(0)
    for rows in (np.arange(v1.N_ROWS), rng.integers(0, v1.N_ROWS, 50), np.array([3])):
        a, b = TeacherCache(plain).read(rows), TeacherCache(coded).read(rows)
        for name, want in _expected(rows).items():
            np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())
            np.testing.assert_array_equal(getattr(b, name).numpy(), want.astype(getattr(b, name).numpy().dtype))
    assert TeacherCache(coded).verify() == [] and TeacherCache(plain).verify() == []
    g1, g2 = zarr.open_group(str(plain), mode="r"), zarr.open_group(str(coded), mode="r")
    start, count = g2["token_index"][5]
    for name in kinds.TOKEN_ARRAYS:
        if name not in g1:
            continue
        stored, want = g2[name][start : start + count], g1[name][start : start + count]
        coding = m2["layout"]["arrays"][name].get("coding")
        if coding is not None:  # the documented decode
            uint = np.dtype(f"u{stored.dtype.itemsize}")
            assert not np.array_equal(stored, want)
            decoded = np.cumsum(stored.view(uint), axis=-1, dtype=uint)
            if coding == "gaps":
                decoded[:, 1:][stored[:, 1:] == 0] = 0
            stored = decoded.view(stored.dtype)
        np.testing.assert_array_equal(stored, want)


def test_old_fixture_is_copied_not_modified(tmp_path: Path):
    """Reading (and verifying) the v1 fixture writes nothing into it."""
    copy = Path(shutil.copytree(FIXTURES / "v1-hybrid", tmp_path / "g"))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    TeacherCache(copy).read(np.arange(v1.N_ROWS))
    TeacherCache(copy).verify()
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
