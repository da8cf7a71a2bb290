"""``vostool batch``: many videos or a whole benchmark split, resumable, on one process or many ranks.

See :mod:`vostool.batch.core` (the run), :mod:`vostool.batch.layouts` (DAVIS, YouTube-VOS, MOSE, LVOS,
manifests), :mod:`vostool.batch.plan` (completion markers, sharding), :mod:`vostool.batch.runner` (one
rank's videos) and :mod:`vostool.batch.distributed` (torchrun, ``--workers``).
"""

from vostool.batch.core import EXPORT_FORMATS, BatchError, BatchOptions, BatchSummary, run_batch
from vostool.batch.layouts import LAYOUTS, Dataset, VideoJob, discover
from vostool.batch.runner import VideoOutcome

__all__ = [
    "EXPORT_FORMATS",
    "LAYOUTS",
    "BatchError",
    "BatchOptions",
    "BatchSummary",
    "Dataset",
    "VideoJob",
    "VideoOutcome",
    "discover",
    "run_batch",
]
