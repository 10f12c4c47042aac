"""On a CUDA device (skipped elsewhere): precompute in bf16 autocast matches the CPU's fp32 cache, and targets
move to the device. `benchmarks/gpu/run.sh` runs these with `-m cuda`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skdcache import DataSpec, TargetOptions, TeacherCache, TeacherSpec, precompute

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_precompute_matches_cpu(tmp_path: Path, data_dir: Path, clf_teacher: Path):
    """bf16 autocast on the GPU; fp32 on the CPU: same cache key layout, logits within bf16 rounding."""
    spec, team = DataSpec(str(data_dir)), [TeacherSpec("t", str(clf_teacher))]
    caches = {}
    for device in ("cpu", "cuda"):
        opts = TargetOptions(max_length=24, batch_size=16, rows_per_block=32, progress=False, device=device)
        [result] = precompute(spec, team, tmp_path / device, opts)
        caches[device] = TeacherCache(result.path)
    rows = np.arange(caches["cpu"].n_rows)
    cpu, gpu = caches["cpu"].read(rows), caches["cuda"].read(rows)
    torch.testing.assert_close(gpu.logits, cpu.logits, atol=5e-2, rtol=5e-2)
    moved = gpu.to(torch.device("cuda"))
    assert moved.logits.device.type == "cuda" and torch.equal(moved.logits.cpu(), gpu.logits)
