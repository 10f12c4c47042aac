"""skdcache: Stochastic Knowledge Distillation from an offline Zarr v3 cache of teacher outputs."""

from skdcache.cache.reader import Targets, TeacherCache  # noqa: E402
from skdcache.data.rows import DataSpec, load_rows  # noqa: E402
from skdcache.errors import CacheError, SkdError  # noqa: E402
from skdcache.precompute import TargetOptions, precompute  # noqa: E402
from skdcache.teacher.load import TeacherSpec  # noqa: E402
from skdcache.version import __version__  # noqa: E402

__all__ = [
    "CacheError",
    "DataSpec",
    "SkdError",
    "TargetOptions",
    "Targets",
    "TeacherCache",
    "TeacherSpec",
    "__version__",
    "load_rows",
    "precompute",
]
