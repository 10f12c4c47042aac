"""One block of a teacher cache: the NaN / inf check (every non-finite float16 is found, wherever it lies in the
block) and the assembly of batch outputs in row order."""

from __future__ import annotations

import numpy as np
import pytest

from skdcache.errors import SkdError
from skdcache.teacher.blocks import _token_places, check_finite


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [0, 300_000, -1])
def test_non_finite_hidden_is_refused(bad, where):
    hidden = np.random.default_rng(0).standard_normal((1000, 3, 200)).astype(np.float16)
    check_finite(0, {"hidden": hidden}, "t")
    hidden.reshape(-1)[where] = bad
    with pytest.raises(SkdError, match="NaN/inf hidden in block 7"):
        check_finite(7, {"hidden": hidden}, "t")


def test_largest_finite_values_pass():
    logits = np.array([[65504.0, -65504.0, 0.0]], dtype=np.float16)
    check_finite(0, {"logits": logits}, "t")
    with pytest.raises(SkdError):  # other dtypes are checked too
        check_finite(0, {"logits": logits.astype(np.float32) * np.float32(np.inf)}, "t")


def test_token_places_match_a_row_by_row_copy():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, 40)
    batch = rng.permutation(40)[:17]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    expected = np.concatenate([np.arange(offsets[r], offsets[r] + counts[r]) for r in batch])
    assert np.array_equal(_token_places(counts, batch), expected)
