"""A block's NaN / inf check: every non-finite float16 is found, wherever it lies in the block."""

from __future__ import annotations

import numpy as np
import pytest

from skdcache.errors import SkdError
from skdcache.teacher.blocks import check_finite


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
