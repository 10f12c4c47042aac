"""Completion markers: where they live, which files count as a finished block, what they record, and that a
damaged or foreign marker is never trusted."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from skdcache.cache.markers import (
    BLOCKS_DIR,
    block_marker_name,
    checksum,
    completed_blocks,
    encode_marker,
    marker_path,
    read_marker,
)
from skdcache.cache.store import atomic_write


def test_marker_names_and_paths(tmp_path: Path):
    assert block_marker_name(0) == "_blocks/000000.json"
    assert block_marker_name(123456) == "_blocks/123456.json"
    assert block_marker_name(1234567) == "_blocks/1234567.json"  # wider than the padding: still its own name
    assert marker_path(tmp_path / "g", 7) == tmp_path / "g" / BLOCKS_DIR / "000007.json"


def test_completed_blocks_counts_only_marker_files(tmp_path: Path):
    group = tmp_path / "g"
    assert completed_blocks(group) == set()  # no group at all
    (group / BLOCKS_DIR).mkdir(parents=True)
    assert completed_blocks(group) == set()
    for block in (0, 3, 12):
        atomic_write(marker_path(group, block), encode_marker(block, (0, 1), {}))
    (group / BLOCKS_DIR / "zarr.json").write_text("{}")  # the empty array node that holds the folder
    (group / BLOCKS_DIR / ".000004.json.partial-99").write_text("{")  # a marker write cut short by a kill
    (group / BLOCKS_DIR / "000005.tmp").write_text("{}")
    (group / BLOCKS_DIR / "notes.json").write_text("{}")
    assert completed_blocks(group) == {0, 3, 12}


def test_completed_blocks_without_a_blocks_folder(tmp_path: Path):
    group = tmp_path / "g"
    group.mkdir()
    (group / BLOCKS_DIR).write_text("not a folder")
    assert completed_blocks(group) == set()


def test_checksum_is_crc32_of_the_stored_bytes():
    values = np.arange(24, dtype=np.float16).reshape(4, 6)
    assert checksum(values) == f"{zlib.crc32(values.tobytes()):08x}"
    assert len(checksum(values)) == 8 and int(checksum(values), 16) >= 0
    # the values as laid out in memory do not matter, only the values (C order)
    strided = np.asfortranarray(values)
    assert not strided.flags.c_contiguous and checksum(strided) == checksum(values)
    assert checksum(values[:, ::2]) == checksum(np.ascontiguousarray(values[:, ::2]))
    # the stored dtype does (a marker records the values after the cast), and so does every single value
    assert checksum(values.astype(np.float32)) != checksum(values)
    changed = values.copy()
    changed[3, 5] = -changed[3, 5]
    assert checksum(changed) != checksum(values)
    assert checksum(np.zeros((0, 6), dtype=np.float16)) == "00000000"


def test_marker_round_trip(tmp_path: Path):
    sums = {"logits": "0a1b2c3d", "hidden": "ffffffff"}
    data = encode_marker(5, (320, 384), sums)
    assert json.loads(data) == {"block": 5, "rows": [320, 384], "checksums": sums}
    assert data == encode_marker(5, (320, 384), dict(reversed(sums.items())))  # sorted keys: same bytes
    path = marker_path(tmp_path, 5)
    atomic_write(path, data)
    assert read_marker(path, 5) == sums


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"block": 5, "rows": [0, 1], "checksums": {"logits": "0a1b',  # torn
        b"\xff\xfe not json",
        b"[5]",
        b'"block"',
        b'{"rows": [0, 1], "checksums": {}}',  # no block
        b'{"block": 6, "rows": [0, 1], "checksums": {}}',  # another block's marker, copied here
        b'{"block": "5", "rows": [0, 1], "checksums": {}}',
        b'{"block": 5, "rows": [0, 1]}',  # no checksums
        b'{"block": 5, "rows": [0, 1], "checksums": ["0a1b2c3d"]}',
        b'{"block": 5, "rows": [0, 1], "checksums": {"logits": 12345}}',
    ],
)
def test_a_damaged_or_foreign_marker_is_not_trusted(tmp_path: Path, content: bytes):
    path = marker_path(tmp_path, 5)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_marker(path, 5) is None


def test_a_missing_marker_reads_as_none(tmp_path: Path):
    assert read_marker(marker_path(tmp_path, 0), 0) is None
    marker_path(tmp_path, 0).mkdir(parents=True)  # a folder where the file should be
    assert read_marker(marker_path(tmp_path, 0), 0) is None
