"""Stochastic KD with a plain `transformers.Trainer` workflow: cache the teachers once, then train with SkdTrainer.

Offline, on CPU, in a couple of minutes:

    python examples/trainer_kd.py --teacher a=PATH_A --teacher b=PATH_B --student PATH_S --output runs/hf

--data defaults to the bundled tweets (skdcache/demo_data/tweets-mini): a directory of train/validation CSV
files with `text` and `label` columns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
from skdcache.integrations.transformers import SkdTrainer

BUNDLED = Path(__file__).resolve().parents[1] / "skdcache" / "demo_data" / "tweets-mini"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(BUNDLED), help="directory of train/validation .csv files")
    p.add_argument("--teacher", action="append", required=True, help="NAME=PATH of a fine-tuned classifier")
    p.add_argument("--student", required=True, help="student model directory (its own tokenizer is fine)")
    p.add_argument("--output", required=True)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    out = Path(args.output)

    # 1. cache every teacher's outputs once (skipped when already cached)
    spec = DataSpec(args.data)
    team = [TeacherSpec.parse(t) for t in args.teacher]
    precompute(spec, team, out / "cache", TargetOptions(max_length=64, progress=False))

    # 2. the usual Trainer setup; the rows must be the ones cached (same file, same order)
    datasets.disable_progress_bars()
    files = {s: str(Path(args.data) / f"{s}.csv") for s in ("train", "validation")}
    raw = datasets.load_dataset("csv", data_files=files)
    labels = sorted(set(raw["train"]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.student, num_labels=len(labels), id2label=dict(enumerate(labels)), ignore_mismatched_sizes=True
    )
    evaluation = raw["validation"].map(
        lambda x: {**tokenizer(x["text"], truncation=True, max_length=64), "labels": labels.index(x["label"])},
        remove_columns=raw["validation"].column_names,
    )
    trainer = SkdTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(out / "trainer"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.max_steps,
            learning_rate=1e-4,
            warmup_steps=0.1,  # a fraction of max_steps (transformers 5)
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=raw["train"],  # the raw rows: SkdTrainer tokenises them and adds the skd_row index
        eval_dataset=evaluation,
        processing_class=tokenizer,
        cache=out / "cache",  # 3. what SkdTrainer adds: the cache, and how to sample the team
        sampling="uniform",
        temperature=2.0,
        alpha=0.5,
    )
    trainer.train()
    print("eval:", trainer.evaluate())
    print("teachers drawn:", dict(trainer.teacher_histogram))
    trainer.save_model(str(out / "student"))


if __name__ == "__main__":
    main()
