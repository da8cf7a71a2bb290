"""Where a dataset's videos, masks and listed frames are: one :class:`VideoJob` per video.

Layouts (``--layout``; ``auto`` tells them apart by what the folder holds, in this order):

* ``manifest``: a ``.csv`` (header row) or ``.jsonl`` file, one video per row: ``input`` (a video file
  or a frame folder), ``mask`` (frame 0) and/or ``masks_dir`` (masks for any frames, named like the
  frames, as ``vostool segment --masks``), optional ``name`` (default: the input's stem). Relative
  paths are relative to the manifest's folder.
* ``davis``: ``JPEGImages/480p/<seq>/``, ``Annotations/480p/<seq>/``, ``ImageSets/<year>/<set>.txt``;
  each sequence starts from its first annotation, every frame is written.
* ``lvos``: ``<split>/JPEGImages/<vid>/``, ``<split>/Annotations/<vid>/`` and ``<split>/<split>_meta.json``
  (``valid_meta.json``); each object is introduced on the frame where its ``frame_range`` starts, from
  that frame's annotation (only that object's pixels: LVOS ships dense ground truth), every frame is
  written.
* ``youtube-vos``: ``<split>/JPEGImages/<vid>/``, ``<split>/Annotations/<vid>/``, ``<split>/meta.json``.
  Each object's mask is on the frame where it first appears; results are written for the frames
  ``meta.json`` lists (what the server scores). ``all_frames`` (the ``valid_all_frames`` folder)
  propagates over every frame instead of the listed ones and still writes only the listed ones.
* ``mose``: the YouTube-VOS layout, ``meta.json`` optional (without it every frame is written).

Everything here only lists folders and reads small JSON/CSV files: bad input is found in seconds,
before a model is loaded (:class:`~vostool.errors.InputError`, exit 2). Frames and masks are opened when
a video runs (see :mod:`vostool.batch.runner`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vostool.errors import InputError
from vostool.eval.davis import RESOLUTION, read_sequence_names
from vostool.eval.predict import first_annotation
from vostool.export import safe_part
from vostool.io.frames import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_key

LAYOUTS = ("auto", "davis", "youtube-vos", "mose", "lvos", "manifest")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
MANIFEST_COLUMNS = ("input", "mask", "masks_dir", "name")
YOUTUBE_META = "meta.json"


@dataclass(frozen=True)
class VideoJob:
    """One video to segment.

    ``frames``: a frame folder or a video file. ``mask``/``masks_dir``: as ``segment``'s ``--mask`` and
    ``--masks``. ``introductions``: instead of those, object id -> the mask file of the frame where that
    object first appears (only that object's pixels are used). ``write``: the frame names to write
    (None: every frame). ``frame_count``: the number of frames when a listing gives it exactly, None for a
    video file (counted when it is decoded).
    """

    name: str
    frames: Path
    mask: Path | None = None
    masks_dir: Path | None = None
    introductions: tuple[tuple[int, Path], ...] = ()
    write: tuple[str, ...] | None = None
    frame_count: int | None = None

    def source_signature(self) -> dict:
        """What the completion marker records of the input, to tell a changed input from the same one."""
        if self.frame_count is not None:
            return {"frames": self.frame_count, "written": len(self.write) if self.write is not None else None}
        stat = self.frames.stat()
        return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class Dataset:
    """The videos of a SOURCE, in a layout. ``frames_list``: the meta file that lists the frames to submit
    (YouTube-VOS); ``davis``: (root, set, year) when the source is a DAVIS folder (for ``--eval``)."""

    layout: str
    source: Path
    jobs: list[VideoJob]
    frames_list: Path | None = None
    davis: tuple[Path, str, str] | None = None
    notes: list[str] = field(default_factory=list)


def discover(
    source: str | Path, layout: str = "auto", *, all_frames: str | Path | None = None,
    subset: str = "val", year: str = "2017",
) -> Dataset:
    """The videos of ``source`` in ``layout`` (see the module docstring); InputError for anything wrong."""
    source = Path(source)
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout}: choose one of {', '.join(LAYOUTS)}")
    if not source.exists():
        raise InputError("no such dataset folder or manifest", source)
    if layout == "auto":
        layout = detect_layout(source)
    if all_frames is not None and layout not in ("youtube-vos", "mose"):
        raise InputError(f"--all-frames applies to the youtube-vos and mose layouts, not {layout}")
    if layout == "manifest":
        dataset = Dataset("manifest", source, read_manifest(source))
    elif layout == "davis":
        dataset = _davis(source, subset, str(year))
    elif layout == "lvos":
        dataset = _lvos(source)
    else:
        dataset = _youtube(source, layout, None if all_frames is None else Path(all_frames))
    if not dataset.jobs:
        raise InputError("no videos found", source)
    _refuse_duplicate_names(dataset)
    return dataset


def detect_layout(source: Path) -> str:
    if source.is_file():
        if source.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        raise InputError(f"a dataset source file must be a manifest ({', '.join(MANIFEST_SUFFIXES)})", source)
    if (source / "JPEGImages" / RESOLUTION).is_dir() and (source / "ImageSets").is_dir():
        return "davis"
    if (source / "JPEGImages").is_dir() and (source / "Annotations").is_dir():
        if (source / YOUTUBE_META).is_file():
            return "youtube-vos"
        if _lvos_meta(source).is_file():
            return "lvos"
        return "mose"
    raise InputError(
        "cannot tell the layout: expected a DAVIS folder (JPEGImages/480p, ImageSets), a YouTube-VOS, MOSE "
        "or LVOS split folder (JPEGImages/, Annotations/, meta file) or a .csv/.jsonl manifest; "
        "or give --layout",
        source,
    )


# ------------------------------------------------------------------------------------------- DAVIS


def _davis(root: Path, subset: str, year: str) -> Dataset:
    if not (root / "JPEGImages" / RESOLUTION).is_dir():
        raise InputError(f"not a DAVIS folder: JPEGImages/{RESOLUTION} is missing", root)
    jobs = []
    for name in read_sequence_names(root, subset, year):
        frames = _frame_folder(root / "JPEGImages" / RESOLUTION / name, name)
        jobs.append(VideoJob(safe_part(name, "sequence", root), frames, mask=first_annotation(root, name),
                             frame_count=len(_frame_names(frames))))
    return Dataset("davis", root, jobs, davis=(root, subset, year))


# ------------------------------------------------------------------------------- YouTube-VOS, MOSE


def _youtube(split: Path, layout: str, all_frames: Path | None) -> Dataset:
    _require_split_folders(split, layout)
    meta_path = split / YOUTUBE_META
    if not meta_path.is_file() and layout == "youtube-vos":
        raise InputError(f"{YOUTUBE_META} is missing (YouTube-VOS lists each object's frames there)", split)
    frame_root = _all_frames_root(all_frames) if all_frames is not None else split / "JPEGImages"
    listed = _youtube_meta(meta_path) if meta_path.is_file() else None
    names = list(listed) if listed is not None else _subfolders(split / "JPEGImages")
    jobs = []
    for name in names:
        frames = _frame_folder(frame_root / name, name)
        frame_names = _frame_names(frames)
        annotations = split / "Annotations" / name
        if listed is not None:
            firsts, write = listed[name]
            _check_listed(frames, frame_names, write, name)
            introductions = tuple((obj, annotations / f"{frame}.png") for obj, frame in firsts)
        else:
            introductions, write = _first_appearances(annotations, frame_names, name), None
        for _, mask in introductions:
            if not mask.is_file():
                raise InputError(f"video {name}: the mask where an object first appears is missing", mask)
        jobs.append(VideoJob(safe_part(name, "video", split), frames, introductions=introductions,
                             write=tuple(write) if write is not None else None, frame_count=len(frame_names)))
    return Dataset(layout, split, jobs, frames_list=meta_path if listed is not None else None)


def _youtube_meta(path: Path) -> dict[str, tuple[list[tuple[int, str]], list[str]]]:
    """video -> ([(object id, first frame)], listed frames in order) from a YouTube-VOS ``meta.json``."""
    result = {}
    try:
        for video, info in _json(path)["videos"].items():
            firsts, frames = [], set()
            for obj, data in info["objects"].items():
                object_frames = [Path(str(frame)).stem for frame in data["frames"]]
                if not object_frames:
                    raise InputError(f"video {video}: object {obj} lists no frames", path)
                firsts.append((_object_id(obj, path), min(object_frames, key=natural_key)))
                frames.update(object_frames)
            result[video] = (sorted(firsts), sorted(frames, key=natural_key))
    except (AttributeError, KeyError, TypeError) as err:
        raise InputError("not a YouTube-VOS meta.json ({'videos': {vid: {'objects': {id: {'frames': [...]}}}}})",
                         path) from err
    return result


def _all_frames_root(folder: Path) -> Path:
    """The ``valid_all_frames`` folder, or its ``JPEGImages`` inside."""
    if not folder.is_dir():
        raise InputError("--all-frames: no such folder", folder)
    return folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else folder


def _check_listed(frames: Path, frame_names: list[str], listed: list[str], video: str) -> None:
    missing = sorted(set(listed) - set(frame_names), key=natural_key)
    if missing:
        raise InputError(f"video {video}: listed frame {missing[0]} has no image ({len(missing)} missing)", frames)


def _first_appearances(annotations: Path, frame_names: list[str], video: str) -> tuple[tuple[int, Path], ...]:
    """Without a meta file: every annotation PNG, each object from the first one holding it (read when the
    video runs; the ids are only known then, so they are marked 0 here)."""
    if not annotations.is_dir():
        raise InputError(f"video {video}: no annotation folder", annotations)
    pngs = [p for p in annotations.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")]
    if not pngs:
        raise InputError(f"video {video}: no annotation PNG", annotations)
    known = set(frame_names)
    for png in pngs:
        if png.stem not in known:
            raise InputError(f"video {video}: annotation matches no frame", png)
    return tuple((0, png) for png in sorted(pngs, key=lambda p: natural_key(p.name)))


# -------------------------------------------------------------------------------------------- LVOS


def _lvos_meta(split: Path) -> Path:
    return split / f"{split.resolve().name}_meta.json"


def _lvos(split: Path) -> Dataset:
    _require_split_folders(split, "lvos")
    meta_path = _lvos_meta(split)
    if not meta_path.is_file():
        raise InputError(f"{meta_path.name} is missing (LVOS gives each object's frame range there)", split)
    data = _json(meta_path)
    jobs = []
    try:
        for video, info in data["videos"].items():
            frames = _frame_folder(split / "JPEGImages" / video, video)
            frame_names = _frame_names(frames)
            introductions = []
            for obj, obj_info in info["objects"].items():
                start = _frame_called(obj_info["frame_range"]["start"], frame_names, video, meta_path)
                introductions.append((_object_id(obj, meta_path), split / "Annotations" / video / f"{start}.png"))
            for _, mask in introductions:
                if not mask.is_file():
                    raise InputError(f"video {video}: the mask where an object's frame range starts is missing", mask)
            jobs.append(VideoJob(safe_part(video, "video", meta_path), frames, introductions=tuple(sorted(introductions)),
                                 frame_count=len(frame_names)))
    except (AttributeError, KeyError, TypeError) as err:
        raise InputError(
            "not an LVOS meta file ({'videos': {vid: {'objects': {id: {'frame_range': {'start': ...}}}}}})", meta_path
        ) from err
    return Dataset("lvos", split, jobs)


def _frame_called(value: object, frame_names: list[str], video: str, meta: Path) -> str:
    """The frame a meta file names: by its stem, or by its number ("12" for "00000012")."""
    text = Path(str(value)).stem
    if text in frame_names:
        return text
    if text.isdigit():
        matches = [name for name in frame_names if name.isdigit() and int(name) == int(text)]
        if len(matches) == 1:
            return matches[0]
    raise InputError(f"video {video}: frame {value!r} is not one of its frames", meta)


# ----------------------------------------------------------------------------------------- manifest


def read_manifest(path: Path) -> list[VideoJob]:
    """One :class:`VideoJob` per row of a CSV (header row) or JSONL manifest."""
    rows = _manifest_rows(path)
    if not rows:
        raise InputError("the manifest lists no videos", path)
    return [_manifest_job(path, number, row) for number, row in rows]


def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the manifest ({err})", path) from err
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        unknown = [c for c in reader.fieldnames or () if c not in MANIFEST_COLUMNS]
        if unknown:
            raise InputError(f"unknown column {unknown[0]!r} (columns: {', '.join(MANIFEST_COLUMNS)})", path)
        return [(number, row) for number, row in enumerate(reader, 2) if any((v or "").strip() for v in row.values())]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"line {number}: not JSON ({err.msg})", path) from err
        if not isinstance(row, dict):
            raise InputError(f"line {number}: expected an object with {', '.join(MANIFEST_COLUMNS)}", path)
        unknown = [key for key in row if key not in MANIFEST_COLUMNS]
        if unknown:
            raise InputError(f"line {number}: unknown key {unknown[0]!r} (keys: {', '.join(MANIFEST_COLUMNS)})", path)
        rows.append((number, row))
    return rows


def _manifest_job(manifest: Path, number: int, row: dict) -> VideoJob:
    where = "row" if manifest.suffix.lower() == ".csv" else "line"

    def path_of(key: str) -> Path | None:
        value = row.get(key)
        if value is None or not str(value).strip():
            return None
        path = Path(str(value).strip()).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        if not path.exists():
            raise InputError(f"{where} {number}: {key} {value!r} does not exist", manifest)
        return path

    frames, mask, masks_dir = path_of("input"), path_of("mask"), path_of("masks_dir")
    if frames is None:
        raise InputError(f"{where} {number}: no input", manifest)
    if mask is None and masks_dir is None:
        raise InputError(f"{where} {number}: give a mask and/or a masks_dir", manifest)
    if frames.is_file() and frames.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{where} {number}: input {frames.name!r} is neither a video nor a frame folder", manifest)
    name = str(row.get("name") or "").strip() or frames.stem
    count = len(_frame_names(frames)) if frames.is_dir() else None
    return VideoJob(safe_part(name, f"{where} {number}: name", manifest), frames, mask=mask, masks_dir=masks_dir,
                    frame_count=count)


# ------------------------------------------------------------------------------------------ shared


def _require_split_folders(split: Path, layout: str) -> None:
    for folder in ("JPEGImages", "Annotations"):
        if not (split / folder).is_dir():
            raise InputError(f"not a {layout} split folder: {folder}/ is missing (give the split, e.g. valid/)", split)


def _subfolders(folder: Path) -> list[str]:
    return sorted((e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")), key=natural_key)


def _frame_folder(folder: Path, video: str) -> Path:
    if not folder.is_dir():
        raise InputError(f"video {video}: no frame folder", folder)
    return folder


def _frame_names(folder: Path) -> list[str]:
    """Frame stems of a folder in natural order (as :class:`vostool.io.frames.FolderFrames` reads it)."""
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        raise InputError(f"cannot list folder ({err.strerror or err})", folder) from err
    names = [e.name for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith(".")]
    if not names:
        raise InputError("folder contains no .jpg/.jpeg/.png frames", folder)
    return [Path(name).stem for name in sorted(names, key=natural_key)]


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read JSON ({err})", path) from err


def _object_id(key: object, path: Path) -> int:
    text = str(key)
    if not text.isdigit() or not 0 < int(text) < 255:
        raise InputError(f"object id {text!r} is not a whole number from 1 to 254", path)
    return int(text)


def _refuse_duplicate_names(dataset: Dataset) -> None:
    seen: set[str] = set()
    for job in dataset.jobs:
        if job.name in seen:
            raise InputError(f"two videos are named {job.name!r}; their results would share a folder", dataset.source)
        seen.add(job.name)
