"""Stage 4, which teacher a step (or a row) distils from: the `Sampler` protocol (`base`), fixed categorical
distributions (`categorical`), learned and student-aware ones, and per-row routing on cached `scores`."""
