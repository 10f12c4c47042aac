"""Which cache a teacher name resolves to: one rule for local folders and remote listings alike.

Kept apart from `catalog` (which opens roots) so that `remote` can apply the same rule without importing
the catalog that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skdcache.cache.manifest import Manifest
from skdcache.errors import CacheError


@dataclass
class CacheEntry:
    path: Path
    dataset: dict
    manifest: Manifest | None
    error: str | None = None
    stored_bytes: int | None = None  # known without a local folder (remote listings)

    @property
    def name(self) -> str:
        return self.manifest.teacher.name if self.manifest else "?"


def select_teachers(
    entries: list[CacheEntry], dataset_fingerprint: str, names: list[str] | None, where: str
) -> dict[str, Path]:
    """The rule `find_teacher_caches` applies, shared with remote roots (which list manifests, not folders)."""
    found: dict[str, tuple[str, Path]] = {}
    for entry in entries:
        m = entry.manifest
        if m is None or m.state != "complete" or m.dataset.fingerprint != dataset_fingerprint:
            continue
        if entry.name not in found or (m.completed_at or "") > found[entry.name][0]:
            found[entry.name] = (m.completed_at or "", entry.path)
    if names is None:
        return {n: p for n, (_, p) in sorted(found.items())}
    missing = [n for n in names if n not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none"
        raise CacheError(
            f"teacher(s) {', '.join(missing)} not cached for dataset {dataset_fingerprint[:12]} in {where} "
            f"(cached: {have}); run `skdcache precompute` with the same data flags first"
        )
    return {n: found[n][1] for n in names}
