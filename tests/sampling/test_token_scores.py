"""Token-level per-row scores equal a float64 computation, written here, from the full cached arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model, spread, write_split
from transformers import AutoTokenizer

from skdcache import DataSpec, SkdError, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.data.rows import load_rows, tokenize
from skdcache.sampling.token_scores import pack_ids, token_scores

MAX_LENGTH = 24


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("token-scores")
    write_split(root / "train.csv", 40, seed=1)
    return root


def _cache(root: Path, tmp: Path, head: str, **opts) -> tuple[TeacherCache, list[list[int]]]:
    teacher = spread(make_model(tmp / f"{head}-teacher", head, layers=1, seed=4), 3.0)
    spec = DataSpec(str(root), label_column=None)
    options = TargetOptions(max_length=MAX_LENGTH, batch_size=16, rows_per_block=16, progress=False, **opts)
    (result,) = precompute(spec, [TeacherSpec("t", str(teacher))], tmp / "cache", options)
    ids = tokenize(AutoTokenizer.from_pretrained(teacher), load_rows(spec), MAX_LENGTH).ids
    return TeacherCache(result.path), [list(x) for x in ids]


def _reference(cache: TeacherCache, ids: list[list[int]]) -> dict[str, list[float]]:
    """Per row, position by position in plain float64: the definition in skdcache/sampling/token_scores.py."""
    t = cache.read(np.arange(cache.n_rows))
    vocab = cache.manifest.teacher.vocab_size
    out: dict[str, list[float]] = {k: [] for k in ("ce", "correct", "entropy", "margin")}
    j = 0
    for r, count in enumerate(t.token_counts.tolist()):
        per: dict[str, list[float]] = {k: [] for k in out}
        for _ in range(count):
            known: dict[int, float] = {}
            rest = None
            if t.topk_ids is not None:
                known.update(zip(t.topk_ids[j].tolist(), t.topk_logprobs[j].double().tolist(), strict=True))
                rest = math.exp(float(t.tail_logmass[j]))
            if t.sample_ids is not None:
                drawn = {
                    i: lp
                    for i, c, lp in zip(
                        t.sample_ids[j].tolist(),
                        t.sample_counts[j].tolist(),
                        t.sample_logprobs[j].double().tolist(),
                        strict=True,
                    )
                    if c > 0
                }
                rest = (1.0 if rest is None else rest) - sum(math.exp(v) for v in drawn.values())
                known.update(drawn)
            rest = max(rest, 1e-12)
            pos = int(t.positions[j])
            target = pos + 1 if cache.targets.head == "causal" else pos
            j += 1
            if target >= len(ids[r]):
                continue
            label = ids[r][target]
            each = rest / (vocab - len(known))
            lp_label = known.get(label, math.log(each))
            best = max(known, key=known.get)
            per["ce"].append(-lp_label)
            per["correct"].append(float(best == label))
            per["entropy"].append(-sum(math.exp(v) * v for v in known.values()) - rest * math.log(each))
            per["margin"].append(math.exp(lp_label) - max(math.exp(v) for i, v in known.items() if i != label))
        for k in out:
            out[k].append(float(np.mean(per[k])) if per[k] else float("nan"))
    return out


@pytest.mark.parametrize(
    "head, opts",
    [
        ("causal", dict(top_k=4)),
        ("mlm", dict(top_k=4, mlm_probability=0.3)),
        ("causal", dict(targets="sampled", samples=6, sample_temperature=1.0)),
        ("causal", dict(targets="hybrid", top_k=3, samples=5, sample_temperature=2.0)),
    ],
)
def test_token_scores_equal_a_float64_reference(rows_dir: Path, tmp_path: Path, head: str, opts: dict):
    cache, ids = _cache(rows_dir, tmp_path, head, **opts)
    got = token_scores(cache, ids)
    want = _reference(cache, ids)
    for k in ("ce", "correct", "entropy", "margin"):
        assert got[k].dtype == np.float32 and got[k].shape == (cache.n_rows,)
        np.testing.assert_allclose(got[k], np.array(want[k]), rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=k)
    assert np.isfinite(got["ce"]).any() and 0 < np.nanmean(got["ce"]) < 20


def test_token_scores_refuse_rows_of_other_data(rows_dir: Path, tmp_path: Path):
    cache, ids = _cache(rows_dir, tmp_path, "causal", top_k=4)
    with pytest.raises(SkdError, match="holds 40 rows"):
        token_scores(cache, ids[:-1])
    packed = pack_ids(ids)
    assert packed[0] == 40 and len(packed) == 41 + sum(map(len, ids))


def test_token_scores_are_stored_beside_the_cache_and_read_back(rows_dir: Path, tmp_path: Path, monkeypatch):
    from skdcache.sampling import scores

    cache, ids = _cache(rows_dir, tmp_path, "causal", top_k=4)
    first = scores.teacher_scores(cache, ids)
    (stored,) = (cache.path.parent / scores.SCORES_DIR).glob(f"{cache.path.name}.*.npz")
    assert not any(p.name.endswith(".npz") for p in cache.path.rglob("*"))  # nothing inside the checksummed group
    monkeypatch.setattr(scores, "token_scores", lambda *a: pytest.fail("stored scores must be read, not recomputed"))
    again = scores.teacher_scores(cache, ids)
    for k, v in first.items():
        np.testing.assert_array_equal(v, again[k])
    other = [list(x) for x in ids]
    other[0][-1] = other[0][-2]  # other token labels: another key, computed again
    assert scores.scores_path(cache, pack_ids(other)) != stored
