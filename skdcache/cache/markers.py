"""Completion markers of a teacher cache: `<group>/_blocks/<b>.json`, written after block b's bytes are durable.

Part of the format (docs/cache-format.md): a block counts as written only when its
marker exists, and the marker records the crc32 of every array's values in the block.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

BLOCKS_DIR = "_blocks"


# Completion markers: <group>/_blocks/<b>.json. `_blocks` is also an empty zarr array (its zarr.json), so the
# group is a valid zarr hierarchy; zarr lists groups, never an array's folder, so it never sees the markers.
MARKER_NODE_ATTRS = {"description": "skdcache completion markers: one <block>.json per finished block, in this folder"}


def block_marker_name(block: int) -> str:
    return f"{BLOCKS_DIR}/{block:06d}.json"


def marker_path(group_path: Path, block: int) -> Path:
    return group_path / block_marker_name(block)


def completed_blocks(group_path: Path) -> set[int]:
    """Blocks whose completion marker exists (their bytes are durable and their checksums recorded)."""
    marker_dir = group_path / BLOCKS_DIR
    if not marker_dir.is_dir():
        return set()
    return {int(p.stem) for p in marker_dir.glob("*.json") if p.stem.isdigit()}


def checksum(data: np.ndarray) -> str:
    """What a marker records per array: crc32 of the block's values as written (after the dtype cast)."""
    return f"{zlib.crc32(np.ascontiguousarray(data).view(np.uint8).reshape(-1)):08x}"


def read_marker(path: Path, block: int) -> dict[str, str] | None:
    """The checksums a block's marker records ({array: crc32 hex}), or None when it is unreadable or is not
    the marker of `block` (a damaged marker is reported by `verify`, never trusted)."""
    try:
        d = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    sums = d.get("checksums") if isinstance(d, dict) else None
    if d.get("block") != block if isinstance(d, dict) else True:
        return None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        return None
    return sums


def encode_marker(block: int, rows: tuple[int, int], checksums: dict[str, str]) -> bytes:
    return json.dumps({"block": block, "rows": list(rows), "checksums": checksums}, sort_keys=True).encode()
