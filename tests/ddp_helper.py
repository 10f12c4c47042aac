"""Runs one `train()` per rank for the DDP tests, optionally dying right after a checkpoint.

python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_helper.py CONFIG.json [CRASH_AT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from skdcache.data import DataSpec
from skdcache.train import TrainConfig, Trainer, train


def main() -> None:
    fields = json.loads(Path(sys.argv[1]).read_text())
    fields["data"] = DataSpec(**fields["data"])
    crash_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if crash_at is not None:
        original = Trainer._evaluate_and_save

        def evaluate_and_save(self, step, *args, **kwargs):
            original(self, step, *args, **kwargs)  # ends with a barrier: every rank's checkpoint part is on disk
            if step == crash_at:
                sys.exit(3)

        Trainer._evaluate_and_save = evaluate_and_save
    train(TrainConfig(**fields))


if __name__ == "__main__":
    main()
