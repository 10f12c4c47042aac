"""List, describe and verify the teacher caches under a cache root (what `ls`, `info` and `verify` print)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from skdcache.cache import format as fmt
from skdcache.cache import kinds
from skdcache.cache.manifest import Manifest, read_manifest
from skdcache.cache.markers import completed_blocks
from skdcache.cache.reader import TeacherCache
from skdcache.cache.roots import CacheRoot, open_root
from skdcache.cache.selection import CacheEntry, select_teachers
from skdcache.cache.spec import TargetSpec
from skdcache.cache.store import read_json
from skdcache.errors import CacheError


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_caches(root: Path) -> list[CacheEntry]:
    """Every teacher cache under `root`, grouped by dataset; unreadable ones are listed with their error."""
    entries: list[CacheEntry] = []
    if not root.is_dir():
        return entries
    for ds_dir in sorted(p for p in root.iterdir() if (p / fmt.DATASET_FILE).exists()):
        dataset = read_json(ds_dir / fmt.DATASET_FILE)
        for group in sorted(p for p in ds_dir.iterdir() if (p / "zarr.json").exists()):
            try:
                manifest = read_manifest(group)
                spec = TargetSpec.from_dict(manifest.targets)  # what `ls` prints must parse
                fmt.layout_from_dict(manifest.layout, manifest.dataset.n_rows, spec)
                entries.append(CacheEntry(group, dataset, manifest))
            except CacheError as exc:
                entries.append(CacheEntry(group, dataset, None, str(exc)))
    return entries


def find_teacher_caches(root: Path, dataset_fingerprint: str, names: list[str] | None) -> dict[str, Path]:
    """Complete caches of this dataset by teacher name (the most recent one when a name has several)."""
    return select_teachers(list_caches(root), dataset_fingerprint, names, str(root))


def summary_row(entry: CacheEntry) -> dict:
    m = entry.manifest
    if m is None:
        return {"dataset": entry.path.parent.name[:12], "teacher": "?", "state": f"unreadable: {entry.error}"}
    n_blocks = m.layout["n_blocks"]
    done = n_blocks if entry.stored_bytes is not None else len(completed_blocks(entry.path))
    metric = m.metric
    return {
        "dataset": entry.path.parent.name[:12],
        "split": entry.dataset.get("split"),
        "rows": entry.dataset.get("n_rows"),
        "teacher": m.teacher.name,
        "head": m.teacher.head,
        "params": f"{m.teacher.num_parameters / 1e6:.1f}M",
        "key": m.cache_key[:12],
        "targets": describe_targets(m.targets),
        "state": m.state if m.state == "complete" else f"{m.state} {done}/{n_blocks} blocks",
        "size": human_bytes(entry.stored_bytes if entry.stored_bytes is not None else dir_bytes(entry.path)),
        "metric": f"{metric.name}={metric.value:.4f}" if metric else "-",
    }


def describe_targets(targets: dict) -> str:
    """What a manifest's targets store, in a few characters (`kinds.describe`); "?" when they do not parse."""
    try:
        return kinds.describe(TargetSpec.from_dict(targets))
    except CacheError:
        return "?"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def array_sizes(path: Path, manifest: Manifest) -> list[dict]:
    """Shape, dtype and stored bytes of each array, per example and per token target."""
    n_rows = manifest.dataset.n_rows
    layout = fmt.layout_from_dict(manifest.layout, n_rows)
    cache = TeacherCache(path, allow_incomplete=True)
    rows = []
    for name, spec in layout.arrays.items():
        stored = dir_bytes(path / name)
        index = fmt.index_array(name, cache.index)
        per_token = int(cache.index[index][:, 1].sum()) if index else 0
        rows.append(
            {
                "array": name,
                "shape": list(spec.shape),
                "dtype": spec.dtype,
                "chunks": list(spec.chunks),
                "shards": list(spec.shards),
                "stored": stored,
                "per_example": stored / n_rows,
                "per_token": stored / per_token if per_token else None,
            }
        )
    return rows


def token_bytes_per_token(path: Path, manifest: Manifest) -> float:
    """Stored bytes per token target of a token-level cache: its arrays summed, the row index left out."""
    return sum(a["per_token"] or 0 for a in array_sizes(path, manifest) if a["array"] != "token_index")


def verify_root(root: Path, names: list[str] | None = None) -> dict[Path, list[str]]:
    """Problems per teacher cache (empty list = every block readable and matching its checksums)."""
    report: dict[Path, list[str]] = {}
    for entry in list_caches(root):
        if names and entry.name not in names:
            continue
        if entry.manifest is None:
            report[entry.path] = [entry.error or "unreadable manifest"]
            continue
        try:
            report[entry.path] = TeacherCache(entry.path, allow_incomplete=True).verify()
        except Exception as exc:  # a damaged index or metadata file is a finding, not a crash
            report[entry.path] = [f"cannot open: {type(exc).__name__}: {exc}"]
    return report


# ---- any root (local folder or URL), for `ls`, `info` and `verify` ---------------------------------------------
def list_root(root: str | Path | CacheRoot | None) -> list[CacheEntry]:
    """Teacher caches of any root: a folder's groups, or the groups published at a URL (sizes as stored there)."""
    root = open_root(root)
    if not root.is_remote:
        return list_caches(existing_root(root.path))
    remote = root.remote()
    return [
        CacheEntry(root.path / fp / m.cache_key, d, m, stored_bytes=remote.stored_bytes(fp, m.cache_key))
        for fp, d, m in remote.manifests()
    ]


def verify_any_root(root: str | Path | CacheRoot | None, names: list[str] | None = None) -> dict[Path, list[str]]:
    """`verify_root` for any root: a URL's published groups are mirrored whole first, then their copies checked."""
    root = open_root(root)
    if root.is_remote:
        remote = root.remote()
        published = remote.manifests()
        if not published:  # a mistyped URL must not pass as an empty, healthy root
            raise CacheError(f"no teacher cache published at {root}; check --cache (`skdcache ls --cache URL`)")
        for fp, _, m in published:
            if not names or m.teacher["name"] in names:
                remote.fetch(fp, m.cache_key)
        if not root.path.is_dir():
            return {}
        return verify_root(root.path, names)
    return verify_root(existing_root(root.path), names)


def existing_root(path: Path) -> Path:
    """A local cache root that exists: a typo in --cache must not read as an empty, healthy root."""
    if not path.is_dir():
        raise CacheError(f"no cache root at {path}; check --cache (`skdcache precompute` creates it)")
    return path


def json_row(entry: CacheEntry) -> dict:
    """`ls --json`: the table's row with the full path and key, and sizes and metrics as numbers."""
    row = summary_row(entry)
    row["path"] = str(entry.path)
    row["dataset"] = entry.path.parent.name
    m = entry.manifest
    if m is None:
        return row
    row["key"] = m.cache_key
    row["size"] = entry.stored_bytes if entry.stored_bytes is not None else dir_bytes(entry.path)
    row["params"] = m.teacher.num_parameters
    row["metric"] = {"name": m.metric.name, "value": m.metric.value} if m.metric else None
    return row


@dataclass
class CacheInfo:
    """What `skdcache info` shows of one teacher cache: its manifest and the stored size of each array."""

    path: Path
    manifest: Manifest
    arrays: list[dict]

    FIELDS = ("state", "cache_key", "teacher", "tokenizer_hash", "dataset", "targets", "metric", "versions")

    def to_dict(self) -> dict:
        return {"manifest": self.manifest.to_dict(), "arrays": self.arrays}

    def fields(self) -> dict[str, str]:
        m = self.manifest.to_dict()
        return {k: json.dumps(m[k]) if isinstance(m[k], dict | list) else str(m[k]) for k in self.FIELDS}

    def table(self) -> list[dict]:
        return [
            {
                "array": a["array"],
                "shape": "x".join(map(str, a["shape"])),
                "dtype": a["dtype"],
                "chunk/shard": f"{a['chunks'][0]}/{a['shards'][0]}",
                "stored": human_bytes(a["stored"]),
                "B/example": f"{a['per_example']:.1f}",
                "B/token": f"{a['per_token']:.1f}" if a["per_token"] else "-",
            }
            for a in self.arrays
        ]

    def total(self) -> str:
        total = sum(a["stored"] for a in self.arrays)
        return f"{human_bytes(total)}, {total / self.manifest.dataset['n_rows']:.1f} B/example"


def cache_info(group: str | Path, cache: str | Path | CacheRoot | None = None) -> CacheInfo:
    """One teacher cache: its folder (a path, ``~`` or ``file://``) or the key `skdcache ls` prints (a prefix
    of it is enough) under the cache root `cache`."""
    root = open_root(group)
    if root.is_remote:
        raise CacheError(f"{group}: info reads a local teacher cache; run `skdcache verify --cache URL` to mirror it")
    path = root.path
    if not path.is_dir() and "/" not in str(group):
        path = _find_key(str(group), open_root(cache))
    if not path.is_dir():
        raise CacheError(
            f"{path} is not a directory; pass a teacher cache folder (ROOT/<dataset>/<key>) or a key `ls` prints"
        )
    if not (path / "zarr.json").exists():
        if (path / fmt.DATASET_FILE).exists():
            keys = sorted(p.name[:12] for p in path.iterdir() if (p / "zarr.json").exists())
            raise CacheError(f"{path} is a dataset folder, not a teacher cache; pass one of its keys: {keys}")
        if any((p / fmt.DATASET_FILE).exists() for p in path.iterdir() if p.is_dir()):
            raise CacheError(f"{path} is a cache root; `skdcache ls --cache {path}` lists its teacher caches")
    manifest = read_manifest(path)
    return CacheInfo(path, manifest, array_sizes(path, manifest))


def _find_key(key: str, root: CacheRoot) -> Path:
    """The teacher cache whose key starts with `key` under a local root (the 12 characters `ls` shows)."""
    if root.is_remote or not root.path.is_dir():
        return Path(key)
    found = [e.path for e in list_caches(root.path) if e.path.name.startswith(key)]
    if len(found) > 1:
        raise CacheError(f"key {key} matches {len(found)} teacher caches in {root}; give more of it")
    return found[0] if found else Path(key)


def pull_root(url: str, local: str | Path | CacheRoot | None, names: list[str] | None = None) -> list[CacheEntry]:
    """Mirror the groups published at `url` (optionally only teachers `names`) into the local cache root `local`,
    each downloaded whole, checked block by block and renamed into place (an interrupted pull resumes)."""
    from skdcache.cache.remote import RemoteRoot
    from skdcache.cache.store import ensure_writable_root

    source = open_root(url)
    if not source.is_remote:
        raise CacheError(f"{url} is a local cache root; pull copies a remote one (s3://, gs://, https://)")
    target = open_root(local)
    if target.is_remote:
        raise CacheError(f"--cache {target}: pull into a local folder")
    remote = RemoteRoot(source.url, target.path)
    found = [(fp, d, m) for fp, d, m in remote.manifests() if not names or m.teacher.name in names]
    if not found:
        named = f" of teacher(s) {', '.join(names)}" if names else ""
        raise CacheError(f"no complete teacher cache{named} published at {url}; `skdcache ls --cache {url}` lists it")
    ensure_writable_root(target.path)  # only once the listing worked: a bad URL leaves no folder behind
    return [CacheEntry(remote.fetch(fp, m.cache_key), d, m) for fp, d, m in found]
