"""The command line every fault campaign shares: `fuzz(count, seed, workdir)` in a temporary directory, its
JSON written only when the campaign finished (a cut run leaves the last complete one in place), exit 1 on any
failure so a campaign can gate a release."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import DOCS, command, write_json


def run_campaign(
    doc: str,
    fuzz: Callable[[int, int, Path], dict],
    count: str,
    default: int,
    out: str,
    failed: Callable[[dict], bool] = lambda outcomes: bool(outcomes["failures"]),
    hide: tuple[str, ...] = ("failures",),
) -> None:
    """Parse `--<count> N --seed S --out PATH`, run the campaign, write `docs/<out>` and print its summary."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(f"--{count}", type=int, default=default)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DOCS / out))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = fuzz(getattr(args, count), args.seed, Path(tmp))
    outcomes["command"] = command()
    write_json(args.out, outcomes)
    print(json.dumps({k: v for k, v in outcomes.items() if k not in hide}, indent=2))
    sys.exit(1 if failed(outcomes) else 0)
