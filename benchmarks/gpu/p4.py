"""P4 on one device: training steps/s and peak memory of `none` (student only), `skd` (cached targets) and
`online` (teachers run every step), each in its own process, via `benchmarks/perf/run.py`'s `p4`.

    python benchmarks/gpu/p4.py --device cuda --out docs/gpu-p4.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from run import ROOT, machine, p4  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--work", default=str(ROOT / ".bench-work" / "gpu" / "p4"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "gpu-p4.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = p4(work, args.steps, args.batch_size, args.device, args.rows)
    if result["skd"]["peak_cuda_mib"]:
        result["online_over_skd_peak_cuda"] = result["online"]["peak_cuda_mib"] / result["skd"]["peak_cuda_mib"]
    record = {"command": " ".join(["python", *sys.argv]), "machine": machine(), "device": args.device, "P4": result}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
