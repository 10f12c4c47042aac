"""Which cache a teacher name resolves to: complete caches of this dataset only, the newest of a name, and one
line naming what is missing and what is cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from skdcache.cache import format as fmt
from skdcache.cache.manifest import FORMAT_VERSION, Manifest
from skdcache.cache.selection import CacheEntry, select_teachers
from skdcache.cache.spec import TargetSpec
from skdcache.errors import CacheError

FP = "f" * 32
OTHER_FP = "e" * 32


def manifest(name: str, fingerprint: str = FP, state: str = "complete", completed_at: str | None = "2026-01-01"):
    spec = TargetSpec("sequence", 16)
    layout, _ = fmt.plan_layout(spec, 4, 2, None, None, None, None, rows_per_block=4)
    return Manifest(
        FORMAT_VERSION,
        {"name": name},
        "tok",
        {"fingerprint": fingerprint, "n_rows": 4},
        spec.to_dict(),
        layout.to_dict(),
        state=state,
        completed_at=completed_at if state == "complete" else None,
    )


def entry(path: str, *args, **kwargs) -> CacheEntry:
    return CacheEntry(Path(path), {}, manifest(*args, **kwargs))


def test_every_complete_cache_of_the_dataset_by_name():
    entries = [
        entry("/r/c", "c"),
        entry("/r/a", "a"),
        entry("/r/b-writing", "b", state="writing"),  # being written (or cut short): never served
        entry("/r/d-other", "d", OTHER_FP),  # another dataset
        CacheEntry(Path("/r/broken"), {}, None, error="unreadable"),  # no manifest
        entry("/r/b", "b"),
    ]
    found = select_teachers(entries, FP, None, "root")
    assert found == {"a": Path("/r/a"), "b": Path("/r/b"), "c": Path("/r/c")}
    assert list(found) == ["a", "b", "c"]  # sorted by name, whatever the listing order


def test_named_teachers_keep_the_order_asked_for():
    entries = [entry("/r/a", "a"), entry("/r/b", "b"), entry("/r/c", "c")]
    assert list(select_teachers(entries, FP, ["c", "a"], "root").items()) == [("c", Path("/r/c")), ("a", Path("/r/a"))]
    assert select_teachers(entries, FP, [], "root") == {}


def test_the_newest_cache_of_a_name_wins():
    entries = [
        entry("/r/old", "t", completed_at="2026-01-01T10:00:00+00:00"),
        entry("/r/new", "t", completed_at="2026-03-01T10:00:00+00:00"),
        entry("/r/mid", "t", completed_at="2026-02-01T10:00:00+00:00"),
        entry("/r/undated", "t", completed_at=None),  # completed before the time was recorded: oldest
    ]
    assert select_teachers(entries, FP, None, "root") == {"t": Path("/r/new")}
    assert select_teachers(entries[::-1], FP, ["t"], "root") == {"t": Path("/r/new")}


def test_equal_completion_times_keep_the_first_listed():
    entries = [entry("/r/first", "t"), entry("/r/second", "t")]
    assert select_teachers(entries, FP, None, "root") == {"t": Path("/r/first")}


def test_missing_teachers_are_one_line_naming_the_fix():
    entries = [entry("/r/a", "a"), entry("/r/b", "b"), entry("/r/x", "x", OTHER_FP)]
    with pytest.raises(CacheError) as info:
        select_teachers(entries, FP, ["a", "nope", "x"], "s3://bucket/cache")
    msg = str(info.value)
    assert "\n" not in msg
    assert "teacher(s) nope, x not cached" in msg  # x is cached, but for other data
    assert f"dataset {FP[:12]} in s3://bucket/cache" in msg and FP[:13] not in msg
    assert "(cached: a, b)" in msg and "skdcache precompute" in msg


def test_nothing_cached_says_none():
    with pytest.raises(CacheError, match=r"\(cached: none\)"):
        select_teachers([entry("/r/w", "w", state="writing")], FP, ["w"], "root")
    assert select_teachers([], FP, None, "root") == {}


def test_entry_name():
    assert entry("/r/a", "a").name == "a"
    assert CacheEntry(Path("/r/x"), {}, None, error="damaged").name == "?"
