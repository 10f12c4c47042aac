"""Per-row teacher scores: equal to an independent float64 computation over the full cached arrays, stored
beside the cache (never inside a checksummed group), keyed by content, and shown by `skdcache info`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import make_model, spread, write_split

from skdcache import DataSpec, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.cache.catalog import find_teacher_caches
from skdcache.data.rows import load_rows
from skdcache.sampling.scores import SCORES_DIR, scores_path, stored_scores, teacher_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def opts(**kw) -> TargetOptions:
    return TargetOptions(**{**dict(max_length=32, top_k=4, batch_size=64, rows_per_block=32, progress=False), **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_split(d / "train.csv", 70, seed=1, pair=True)
    return d


def _team(root: Path, data: Path, head: str, label_column: str | None = "label", num_labels: int = 3):
    spec = DataSpec(str(data), label_column=label_column)
    teachers = [
        TeacherSpec(f"{head}{i}", str(spread(make_model(root / f"t{i}", head, num_labels=num_labels, seed=i), 4.0)))
        for i in (1, 2)
    ]
    precompute(spec, teachers, root / "cache", opts())
    rows = load_rows(spec)
    paths = find_teacher_caches(root / "cache", rows.fingerprint, None)
    return spec, rows, [TeacherCache(p) for p in paths.values()]


@pytest.fixture(scope="module")
def seq(tmp_path_factory, data: Path):
    return _team(tmp_path_factory.mktemp("seq"), data, "sequence")


def _full_logits(cache: TeacherCache) -> np.ndarray:
    """Every row's cached logits straight from zarr, as float64 (not through the code under test)."""
    return np.asarray(zarr.open_array(str(cache.path / "logits"), mode="r")[:], dtype=np.float64)


def test_sequence_scores_equal_an_independent_float64_computation(seq):
    _, rows, caches = seq
    for cache in caches:
        got = teacher_scores(cache, rows.labels)
        z = _full_logits(cache)  # [n, C]
        y = rows.labels
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        want_ce = -np.log(p[np.arange(len(y)), y])
        other = np.array([max(p[i, j] for j in range(p.shape[1]) if j != y[i]) for i in range(len(y))])
        np.testing.assert_allclose(got["ce"], want_ce, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["entropy"], -(p * np.log(p)).sum(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["correct"], (p.argmax(1) == y).astype(np.float32))
        np.testing.assert_allclose(got["margin"], p[np.arange(len(y)), y] - other, rtol=1e-5, atol=1e-6)
        assert got["ce"].dtype == np.float32 and got["ce"].shape == (cache.n_rows,)


def test_scores_are_stored_beside_the_cache_keyed_by_content_and_reused(seq, monkeypatch):
    _, rows, caches = seq
    cache = caches[0]
    inside = sorted(p.relative_to(cache.path) for p in cache.path.rglob("*"))
    first = teacher_scores(cache, rows.labels)
    path = scores_path(cache, rows.labels)
    assert path.exists() and path.parent == cache.path.parent / SCORES_DIR
    assert path.name.startswith(cache.path.name)
    assert sorted(p.relative_to(cache.path) for p in cache.path.rglob("*")) == inside  # group untouched
    assert cache.verify() == []
    other = rows.labels.copy()
    other[0] = (other[0] + 1) % 3
    assert scores_path(cache, other) != path  # other labels, other file

    import skdcache.sampling.scores as scores_module

    def boom(*a, **k):
        raise AssertionError("recomputed although stored")

    monkeypatch.setattr(scores_module, "sequence_scores", boom)
    again = teacher_scores(cache, rows.labels)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])


def test_a_damaged_scores_file_is_recomputed(seq):
    _, rows, caches = seq
    cache = caches[1]
    want = teacher_scores(cache, rows.labels)
    scores_path(cache, rows.labels).write_bytes(b"not an npz")
    got = teacher_scores(cache, rows.labels)
    np.testing.assert_array_equal(want["ce"], got["ce"])


def test_regression_scores_are_squared_errors(tmp_path: Path, data: Path):
    _, rows, caches = _team(tmp_path, data, "sequence", label_column="score", num_labels=1)
    for cache in caches:
        got = teacher_scores(cache, rows.labels)
        z = _full_logits(cache)[:, 0]
        np.testing.assert_allclose(got["ce"], (z - rows.labels.astype(np.float64)) ** 2, rtol=1e-5, atol=1e-6)
        assert np.isnan(got["entropy"]).all()


def test_info_shows_stored_scores(seq):
    from cli.main import cli

    _, rows, caches = seq
    teacher_scores(caches[0], rows.labels)
    assert stored_scores(caches[0].path)
    result = CliRunner().invoke(cli, ["info", str(caches[0].path)])
    assert result.exit_code == 0, result.output
    assert "scores" in result.output and "correct" in result.output


@pytest.mark.parametrize("label_column,num_labels", [("label", 3), ("score", 1)])
def test_scores_read_in_parts_equal_scores_read_at_once(
    tmp_path: Path, data: Path, monkeypatch, label_column, num_labels
):
    """Caches larger than one read (READ_ROWS) are scored part by part: the same scores as one pass, regression's
    tolerance included (it uses the spread of all the labels)."""
    import skdcache.sampling.scores as scores_module

    _, rows, caches = _team(tmp_path, data, "sequence", label_column=label_column, num_labels=num_labels)
    for cache in caches:
        whole = teacher_scores(cache, rows.labels)
        scores_path(cache, rows.labels).unlink()
        monkeypatch.setattr(scores_module, "READ_ROWS", 16)  # 70 rows: 5 parts, the last one short
        parts = teacher_scores(cache, rows.labels)
        monkeypatch.undo()
        for name in whole:
            np.testing.assert_array_equal(parts[name], whole[name])
