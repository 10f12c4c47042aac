"""P4 on one device: training steps/s and peak memory of `none` (student only), `skd` (cached targets) and
`online` (teachers run every step), each in its own process: `benchmarks/perf/common.py`'s `p4`, as perf/run.py
runs it on the CPU.

    python benchmarks/gpu/p4.py --device cuda --out docs/gpu-p4.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, WORK, command, machine, write_json  # noqa: E402
from benchmarks.perf.common import p4  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--work", default=str(WORK / "gpu" / "p4"))
    parser.add_argument("--out", default=str(DOCS / "gpu-p4.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = p4(work, args.steps, args.batch_size, args.device, args.rows)
    if result["skd"]["peak_cuda_mib"]:
        result["online_over_skd_peak_cuda"] = result["online"]["peak_cuda_mib"] / result["skd"]["peak_cuda_mib"]
    record = {"command": command(), "machine": machine(), "device": args.device, "P4": result}
    write_json(args.out, record)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
