"""skdcache: Stochastic Knowledge Distillation from an offline Zarr v3 cache of teacher outputs."""

from skdcache.cache.reader import Targets, TeacherCache
from skdcache.data.rows import DataSpec, load_rows
from skdcache.errors import CacheError, SkdError
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.train import train
from skdcache.training.config import TrainConfig
from skdcache.version import __version__

__all__ = [
    "CacheError",
    "DataSpec",
    "SkdError",
    "TargetOptions",
    "Targets",
    "TeacherCache",
    "TeacherSpec",
    "TrainConfig",
    "__version__",
    "load_rows",
    "precompute",
    "train",
]
