"""What is left to do and who does it: completion markers, the ``--out`` check, and sharding.

A video's results folder ``<out>/<video>/`` holds its PNG masks and, written into the same staging
folder and so committed with them by one rename, the completion marker ``.vostool-batch.json``: the
model, its merged settings, the weights' sha256, the input's signature (frame count), the frames
propagated and the size of every PNG written. A video is complete only when its marker parses, names
the current run's model, settings and weights and the same input, and every PNG it lists is there
with its recorded size and no other PNG is: a folder a crash or a user cut short, or one an older
run with other settings wrote, is redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from vostool.batch.layouts import VideoJob
from vostool.errors import OutputError
from vostool.io.staging import is_vostool_temp

MARKER = ".vostool-batch.json"
MARKER_SCHEMA = "vostool-batch-video-v1"
SUMMARY_FILE = "batch-summary.json"
_FILE_MANAGER_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def run_key(model: str, settings: object, weights_sha256: str | None) -> dict:
    """What a result depends on besides its input: compared, as JSON, with each marker's."""
    return json.loads(json.dumps({"model": model, "settings": asdict(settings), "weights_sha256": weights_sha256}))


def marker_for(job: VideoJob, key: dict, frames: int, files: dict[str, int], extra: dict) -> dict:
    return {"schema": MARKER_SCHEMA, "video": job.name, **key, "source": job.source_signature(),
            "frames": frames, "files": files, **extra}


def completed_marker(folder: Path, job: VideoJob, key: dict) -> dict | None:
    """The marker of ``folder`` when it holds ``job``'s finished results for ``key`` (see the module
    docstring), else None."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        if not isinstance(marker, dict) or marker.get("schema") != MARKER_SCHEMA:
            return None
        if any(marker.get(name) != value for name, value in key.items()):
            return None
        if marker.get("source") != job.source_signature():
            return None
        files = marker["files"]
        present = {e.name: e.stat().st_size for e in os.scandir(folder) if e.name.lower().endswith(".png") and e.is_file()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return marker if isinstance(files, dict) and present == files else None


def completed(jobs: Sequence[VideoJob], out: Path, key: dict) -> dict[int, int]:
    """Index -> frames of every job whose results are complete for ``key``."""
    done = {}
    for index, job in enumerate(jobs):
        marker = completed_marker(out / job.name, job, key)
        if marker is not None:
            done[index] = int(marker.get("frames") or 0)
    return done


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but what batch runs write there, before any work.

    Each video folder is replaced as a whole when it is redone, so a folder may hold only PNG masks, the
    marker and vostool's temporary entries; beside them only the batch summary.
    """
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise OutputError("output folder is a file", out)
    for entry in _entries(out):
        if _ours(entry) or (entry.name == SUMMARY_FILE and entry.is_file(follow_symlinks=False)):
            continue
        if entry.is_dir(follow_symlinks=False):
            for inner in _entries(Path(entry.path)):
                if _ours(inner) or inner.name == MARKER or _is_png(inner):
                    continue
                _refuse(out, f"{entry.name}/{inner.name}")
            continue
        _refuse(out, entry.name)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise OutputError(f"cannot list output folder ({err.strerror or err})", folder) from err


def _ours(entry: os.DirEntry) -> bool:
    return is_vostool_temp(entry.name) or entry.name in _FILE_MANAGER_FILES


def _is_png(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(".png") and not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)


def _refuse(out: Path, shown: str) -> None:
    raise OutputError(
        f"output folder holds {shown}, which is not a batch result (video folders of PNG masks, {SUMMARY_FILE}); "
        "each video's folder is replaced as a whole when it is redone, so give a new folder or move it out",
        out,
    )


# -------------------------------------------------------------------------------------------- shards


def shard(weights: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``weights`` split into ``parts`` lists of near-equal total weight, deterministically.

    Greedy, longest first (LPT): each item, in order of decreasing weight (ties: lower index first), goes
    to the part with the least weight so far (ties: the lowest part). Every part lists its items longest
    first, so the ranks finish together and the long videos never come last.
    """
    order = sorted(range(len(weights)), key=lambda index: (-weights[index], index))
    loads = [0] * parts
    assigned: list[list[int]] = [[] for _ in range(parts)]
    for index in order:
        part = min(range(parts), key=lambda p: (loads[p], p))
        assigned[part].append(index)
        loads[part] += max(weights[index], 1)
    return assigned


def estimated_frames(job: VideoJob) -> int:
    """A video's frame count for sharding: exact for a frame folder, from the container's duration and
    frame rate for a video file (one ffmpeg header read; decoding it to count is left to its run)."""
    if job.frame_count is not None:
        return job.frame_count
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(job.frames))
        try:
            meta = next(reader)
        finally:
            reader.close()
        return max(1, round(float(meta.get("duration") or 0) * float(meta.get("fps") or 0)))
    except Exception:  # noqa: BLE001 - an undecodable video fails when it runs, with the decoder's message
        return 1
