"""One SkdTrainer per rank for the DDP test: writes this rank's teacher, rows and loss per step.

python -m torch.distributed.run --standalone --nproc-per-node 2 tests/hf_ddp_helper.py SETUP.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers

from skdcache.integrations.transformers import SkdTrainer


class Recording(SkdTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        self.seen_rows = getattr(self, "seen_rows", []) + [inputs["skd_row"].tolist()]
        return super().compute_loss(model, inputs, *args, **kwargs)


def main() -> None:
    setup = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    dataset = datasets.load_dataset("csv", data_files={"train": setup["train"]}, split="train")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(setup["student"], num_labels=3)
    args = transformers.TrainingArguments(
        output_dir=setup["output"],
        per_device_train_batch_size=setup["per_device"],
        max_steps=setup["steps"],
        learning_rate=1e-3,
        seed=setup["seed"],
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=transformers.AutoTokenizer.from_pretrained(setup["student"]),
        cache=setup["cache"],
    )
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    record = {"world": trainer.args.world_size, "history": trainer.skd_history, "rows": trainer.seen_rows}
    Path(setup["output"], f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
