"""Chat distillation of a causal LM with SkdTrainer: cache the teacher's top-k targets on the assistant tokens once,
then train a smaller student on them with a plain `transformers.Trainer` workflow.

Offline, on CPU (SmolLM2-135M-Instruct as teacher, its first 2 layers as student):

    python benchmarks/perf/smollm.py .bench-work/models/smollm2-135m    # once: the teacher directory
    python examples/trainer_chat_kd.py --output runs/chat-kd

The defaults: 32 conversations, 4 steps of 8, max length 256. Measured with the real SmolLM2 under nice -n 15 on a
2-core machine saturated by other jobs (about 3% of a core): precompute 703 s wall, about 30 s of CPU.

Data: by default the first --rows bundled tweets (skdcache/demo_data/tweets-mini, MIT) as conversations,
user "Sentiment of this tweet (negative, neutral or positive): <text>", assistant "<label>", written to
OUTPUT/data/train.jsonl; or --data DIR, a directory with a train split holding a `messages` column.
Only the predictions of the assistant's tokens carry a loss (docs/chat-data.md). --student defaults to the
first --student-layers layers of the first teacher (written to OUTPUT/student-init); teacher and student
must share the tokenizer and its chat template.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
from skdcache.data.tables import load_split
from skdcache.integrations.transformers import SkdTrainer

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT / "skdcache" / "demo_data" / "tweets-mini" / "train.csv"
SMOLLM = ROOT / ".bench-work" / "models" / "smollm2-135m"  # what `python benchmarks/perf/smollm.py` writes


def tweet_chats(out_dir: Path, rows: int) -> Path:
    """The first `rows` bundled tweets as one-turn conversations, in train.jsonl (a `messages` column)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(TWEETS, newline="") as f, open(out_dir / "train.jsonl", "w") as out:
        for row in itertools.islice(csv.DictReader(f), rows):
            prompt = f"Sentiment of this tweet (negative, neutral or positive): {row['text']}"
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["label"]}]
            out.write(json.dumps({"messages": chat}) + "\n")
    return out_dir


def first_layers(teacher: str, layers: int, out_dir: Path) -> Path:
    """A student: the teacher's embeddings, first `layers` decoder layers, final norm and head."""
    model = AutoModelForCausalLM.from_pretrained(teacher)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out_dir)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="directory with a train split holding a messages column (default: tweets)")
    p.add_argument("--rows", type=int, default=32, help="bundled tweets to turn into conversations")
    p.add_argument("--teacher", action="append", help=f"NAME=PATH of a causal LM (default smollm={SMOLLM})")
    p.add_argument("--student", help="student model directory (default: the first teacher's first layers)")
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--output", required=True)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--top-k", type=int, default=16)
    args = p.parse_args()
    out, start = Path(args.output), time.perf_counter()
    team = [TeacherSpec.parse(t) for t in args.teacher or [f"smollm={SMOLLM}"]]
    if not Path(team[0].source).is_dir():
        raise SystemExit(f"no teacher at {team[0].source}: run python benchmarks/perf/smollm.py {SMOLLM}")
    data = Path(args.data) if args.data else tweet_chats(out / "data", args.rows)

    # 1. cache the teachers' top-k log-probs at the positions predicting assistant tokens (skipped when cached)
    spec = DataSpec(str(data), label_column=None, messages_column="messages")
    opts = TargetOptions(max_length=args.max_length, top_k=args.top_k, batch_size=16, eval_split=None, progress=False)
    precompute(spec, team, out / "cache", opts)
    print(f"cached in {time.perf_counter() - start:.0f}s")

    # 2. the usual Trainer setup on the same rows, messages column as is: SkdTrainer renders and tokenises them
    student = args.student or str(first_layers(team[0].source, args.student_layers, out / "student-init"))
    rows = load_split(spec, "train")  # the datasets.Dataset precompute read, same order
    trainer = SkdTrainer(
        model=AutoModelForCausalLM.from_pretrained(student),
        args=TrainingArguments(
            output_dir=str(out / "trainer"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.max_steps,
            learning_rate=1e-4,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(student),  # its chat template renders the messages
        cache=out / "cache",
        temperature=2.0,
        alpha=0.5,  # half KD on the teacher's top-k, half cross-entropy on the assistant tokens
    )
    trainer.train()
    for x in trainer.skd_history:
        print(f"step {x['step']:3d}  teacher {x.get('teacher', '-')}  loss {x['loss']:.4f}  kd {x['kd']:.4f}")
    trainer.save_model(str(out / "student"))
    print(f"done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
