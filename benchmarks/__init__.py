"""skdcache's benchmarks, run from the clone's root: `python -m benchmarks.perf.run` or the file itself.

Shared plumbing lives in harness.py, tiny teachers in fixtures.py."""
