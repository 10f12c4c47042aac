"""`--nproc N`: rerun the same command line under torchrun, one process per rank."""

from __future__ import annotations

import os
import sys


def rerun_under_torchrun(nproc: int) -> None:
    """Run this same command line under torchrun with `nproc` processes (without --nproc), then exit."""
    import subprocess

    args = []
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", "skdcache", *args]
    sys.exit(subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}))
