"""Where precompute's time goes: wall and CPU seconds per stage of the capture pipeline, summed over threads.

The pipeline runs stages on several threads at once (forward and reduction on the main thread, shards
encoded and written by a pool), so a stage's wall seconds are summed over the threads that ran it and can
exceed the elapsed time; its CPU seconds (`time.thread_time`) say how much of a core it needed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

# The stages in pipeline order, as the benchmark tables list them.
STAGES = (
    "forward",  # the teacher's forward pass (replayed in benchmarks)
    "reduce",  # log-softmax, top-k, tail mass, draws, hidden-state selection, cast to the stored dtype
    "d2h",  # device-to-host copy of the reduced targets
    "assemble",  # batch outputs copied to their rows' places in the block
    "check",  # NaN / inf check of the block
    "encode",  # Blosc compression and crc32c of every inner chunk, shard index
    "checksum",  # the block marker's crc32 of each array
    "write",  # shard files written
    "fsync",  # shard files, their directories and the marker made durable
)


class StageClock:
    """Thread-safe accumulator of (wall, cpu, calls) per stage; `with clock.stage("encode"): ...`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
            with self._lock:
                entry = self.totals.setdefault(name, [0.0, 0.0, 0])
                entry[0] += wall
                entry[1] += cpu
                entry[2] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {"wall_s", "cpu_s", "calls"}} in pipeline order (unknown stages last)."""
        order = [s for s in STAGES if s in self.totals] + sorted(set(self.totals) - set(STAGES))
        return {s: dict(zip(("wall_s", "cpu_s", "calls"), self.totals[s], strict=True)) for s in order}
