"""Runs one `train()` per rank for the DDP tests, optionally dying right after a checkpoint.

python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_helper.py CONFIG.json [CRASH_AT]
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from skdcache.data.rows import DataSpec
from skdcache.train import evaluate_and_checkpoint, train
from skdcache.training.config import TrainConfig

train_module = importlib.import_module("skdcache.train")  # the package exports a function of that name


def main() -> None:
    fields = json.loads(Path(sys.argv[1]).read_text())
    fields["data"] = DataSpec(**fields["data"])
    crash_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if crash_at is not None:

        def evaluate_and_save(run, state, *args, **kwargs):
            evaluate_and_checkpoint(run, state, *args, **kwargs)  # ends with a barrier: every rank's part is on disk
            if state.step == crash_at:
                sys.exit(3)

        train_module.evaluate_and_checkpoint = evaluate_and_save
    train(TrainConfig(**fields))


if __name__ == "__main__":
    main()
