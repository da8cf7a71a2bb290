"""``vostool export``: palette-PNG results -> what a benchmark server or a viewer wants, and back.

RESULTS is a folder. If it holds PNG files itself it is *one sequence*, named after the folder;
otherwise each of its sub-folders that holds PNG files is a sequence (``<RESULTS>/<seq>/<frame>.png``,
the layout ``vostool eval`` and the DAVIS tools use). Folders without PNGs and hidden entries are
ignored. Formats:

* ``davis`` / ``mose``: a zip with the sequence folders at the archive root, ``<seq>/<frame>.png``
  (what the DAVIS test-dev and MOSE CodaLab servers take);
* ``youtube-vos``: a zip with ``Annotations/<video>/<frame>.png``. With ``frames_list`` (the
  challenge's ``meta.json``, or a text file of ``video/frame`` lines) the zip holds exactly the listed
  frames of the listed videos: the server rejects extra frames, so this drops the dense in-between
  frames and fails naming the first listed frame that has no result;
* ``coco-rle``: one ``vostool-rle-v1`` JSON (the layout :class:`vostool.io.writers.RleWriter` writes)
  whose frame names are ``<frame>`` for one sequence and ``<seq>/<frame>`` for several;
* ``overlay-mp4``: the masks blended over the frames of ``frames`` (a video or frame folder for one
  sequence; a folder of ``<seq>`` frame folders or ``<seq>.mp4`` videos for several, then ``out`` is a
  folder of ``<seq>.mp4``). Frames without a mask are shown unchanged.

:func:`import_rle` goes back: a ``vostool-rle-v1`` JSON -> palette PNGs (``<seq>/`` sub-folders for
``<seq>/<frame>`` names).

Zips and every other file are written atomically; a folder target (PNGs of an import, the videos of
several sequences) is written beside it and replaces the old folder as a whole only when complete (an
existing one may only hold what vostool writes there). Entry names are built from checked parts only:
no part may be empty, ``.``, ``..``, or contain a path separator, so no entry can land outside the
archive root (or outside ``out`` when importing), whatever the input names.
"""

from __future__ import annotations

import json
import zipfile
from io import BytesIO
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError, OutputError
from .io.frames import VIDEO_SUFFIXES, FrameSource, natural_key, open_frames
from .io.masks import read_mask, read_rle_video
from .io.palette import normalize_palette
from .io.staging import RESULTS_FOLDER, VIDEO_FOLDER, StagedFolder, remove_created_folders
from .io.writers import OverlayWriter, PaletteWriter, RleWriter, atomic_path, ensure_file_target

FORMATS = ("davis", "mose", "youtube-vos", "coco-rle", "overlay-mp4")
IMPORT_FORMATS = ("coco-rle",)
ZIP_FORMATS = ("davis", "mose", "youtube-vos")
YOUTUBE_ROOT = "Annotations"

Progress = Callable[[int, int], None]


@dataclass
class ExportSummary:
    """What an export wrote; ``to_dict()`` is the CLI's ``--json`` line."""

    format: str
    output: str
    sequences: int
    frames: int
    skipped: list[str] = field(default_factory=list)  # sequences left out (not in the frames list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ResultSequence:
    name: str
    masks: list[Path]  # PNGs in natural order

    def frame_names(self) -> list[str]:
        return [mask.stem for mask in self.masks]


# ------------------------------------------------------------------------------------------ reading


def safe_part(part: str, what: str, source: str | Path) -> str:
    """``part`` if it can be one path component inside an archive or folder; InputError otherwise."""
    bad = not part or part in (".", "..") or any(c in part for c in "/\\\0") or part.strip() != part
    if bad or (len(part) >= 2 and part[1] == ":"):  # "C:..." is a drive on Windows
        raise InputError(f"{what} {part!r} is not a safe file name (no separators, '.', '..' or drives)", source)
    return part


def archive_name(*parts: str, source: str | Path) -> str:
    """A zip entry name from checked components, always relative and inside the archive root."""
    return "/".join(safe_part(part, "name", source) for part in parts)


def find_sequences(results: str | Path) -> list[ResultSequence]:
    """The sequences of a results folder (see the module docstring for the two layouts)."""
    results = Path(results)
    if not results.is_dir():
        raise InputError("no such results folder" if not results.exists() else "results must be a folder", results)
    own = _pngs(results)
    folders = [d for d in _visible(results) if d.is_dir() and _pngs(d)]
    if own and folders:
        raise InputError(
            f"holds both PNG masks and sequence folders ({folders[0].name}/); give a folder of "
            "sequence folders or one sequence's folder",
            results,
        )
    if own:
        return [ResultSequence(safe_part(results.resolve().name, "sequence", results), own)]
    if not folders:
        raise InputError("no PNG masks found (expected <seq>/<frame>.png or <frame>.png)", results)
    folders.sort(key=lambda d: natural_key(d.name))
    return [ResultSequence(safe_part(d.name, "sequence", d), _pngs(d)) for d in folders]


def _visible(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as err:
        raise InputError(f"cannot list folder ({err.strerror or err})", folder) from err


def _pngs(folder: Path) -> list[Path]:
    files = [p for p in _visible(folder) if p.suffix.lower() == ".png" and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def _png_bytes(mask: Path) -> bytes:
    """The mask as an indexed PNG: indexed files as they are, greyscale ones converted (ids kept)."""
    try:
        with Image.open(mask) as image:
            indexed = image.mode == "P" and image.format == "PNG"
    except OSError as err:
        raise InputError(f"cannot read mask ({err})", mask) from err
    if indexed:
        return mask.read_bytes()
    label_map = read_mask(mask, allow_empty=True)  # checks and converts greyscale / {0,255} masks
    if label_map.labels.max(initial=0) > 255:
        raise OutputError(f"object id {int(label_map.labels.max())} does not fit in an indexed PNG", mask)
    image = Image.fromarray(label_map.labels.astype(np.uint8))
    image.putpalette(normalize_palette(label_map.palette))
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ export


def export_results(
    results: str | Path,
    format: str,
    out: str | Path | None = None,
    *,
    frames: str | Path | None = None,
    frames_list: str | Path | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Export a results folder to ``format`` (one of :data:`FORMATS`) at ``out`` (default: next to it).

    Raises :class:`vostool.errors.VostoolError` naming the file for bad input.
    """
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r} (choose one of {', '.join(FORMATS)})")
    if frames_list is not None and format != "youtube-vos":
        raise InputError("--frames-list only applies to --format youtube-vos")
    if format == "overlay-mp4" and frames is None:
        raise InputError("--format overlay-mp4 needs --frames VIDEO_OR_DIR (the frames to draw on)")
    results = Path(results)
    sequences = find_sequences(results)
    out = Path(out) if out is not None else default_output(results, format, len(sequences))
    if format in ZIP_FORMATS:
        return _export_zip(sequences, format, out, frames_list, progress)
    if format == "coco-rle":
        return _export_rle(sequences, out, progress)
    return _export_overlays(sequences, Path(frames), out, progress)


def default_output(results: Path, format: str, sequences: int) -> Path:
    """``<results>-<format>.zip``, ``<results>.json``, ``<results>-overlay.mp4`` or ``-overlay/``, beside it."""
    stem = results.resolve()
    if format in ZIP_FORMATS:
        return stem.with_name(f"{stem.name}-{format}.zip")
    if format == "coco-rle":
        return stem.with_name(f"{stem.name}.json")
    return stem.with_name(f"{stem.name}-overlay" + (".mp4" if sequences == 1 else ""))


def _export_zip(
    sequences: list[ResultSequence], format: str, out: Path, frames_list: str | Path | None, progress: Progress | None
) -> ExportSummary:
    if out.suffix.lower() != ".zip":
        raise OutputError("a submission archive must end in .zip", out)
    root = (YOUTUBE_ROOT,) if format == "youtube-vos" else ()
    selected, skipped = sequences, []
    if frames_list is not None:
        selected, skipped = _select_listed(sequences, read_frames_list(frames_list), Path(frames_list))
    total = sum(len(seq.masks) for seq in selected)
    written = 0
    created = ensure_file_target(out)
    try:
        with atomic_path(out) as temp:
            # PNGs are compressed already; deflating them again costs time and saves nothing.
            with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
                for seq in selected:
                    for mask in seq.masks:
                        archive.writestr(archive_name(*root, seq.name, mask.name, source=mask), _png_bytes(mask))
                        written += 1
                        if progress is not None:
                            progress(written, total)
    except BaseException as err:
        remove_created_folders(created)  # a failed export leaves no new folder either
        if isinstance(err, OSError):
            raise OutputError(f"cannot write archive ({err.strerror or err})", out) from err
        raise
    return ExportSummary(format, str(out), len(selected), written, skipped)


def read_frames_list(path: str | Path) -> dict[str, list[str]]:
    """Frames to keep per video, from a YouTube-VOS ``meta.json`` or a text file of ``video/frame`` lines.

    In ``meta.json`` (``{"videos": {vid: {"objects": {id: {"frames": [...]}}}}}``) a video's frames are
    the union of its objects' frames, the frames the server scores. Frame names may carry an extension.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such frames list" if not path.exists() else "frames list is not a file", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read frames list ({err})", path) from err
    if text.lstrip().startswith("{"):
        return _frames_from_meta(path, text)
    listed: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("/")
        if len(parts) != 2:
            raise InputError(f"line {number}: expected 'video/frame', got {line!r}", path)
        video, frame = (safe_part(p, "name", path) for p in parts)
        listed.setdefault(video, []).append(Path(frame).stem)
    if not listed:
        raise InputError("frames list names no frames", path)
    return listed


def _frames_from_meta(path: Path, text: str) -> dict[str, list[str]]:
    try:
        videos = json.loads(text)["videos"]
        listed = {}
        for video, info in videos.items():
            frames = {Path(f).stem for obj in info["objects"].values() for f in obj["frames"]}
            listed[safe_part(video, "video", path)] = sorted(frames, key=natural_key)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise InputError(
            "not a YouTube-VOS meta.json ({'videos': {vid: {'objects': {id: {'frames': [...]}}}}})", path
        ) from err
    for frames in listed.values():
        for frame in frames:
            safe_part(frame, "frame", path)
    return listed


def _select_listed(
    sequences: list[ResultSequence], listed: dict[str, list[str]], list_path: Path
) -> tuple[list[ResultSequence], list[str]]:
    by_name = {seq.name: seq for seq in sequences}
    selected = []
    for video, frames in listed.items():
        seq = by_name.get(video)
        if seq is None:
            raise InputError(f"no results for video {video!r}, which the frames list names", list_path)
        masks = {mask.stem: mask for mask in seq.masks}
        missing = [frame for frame in frames if frame not in masks]
        if missing:
            raise InputError(f"video {video!r}: no mask for listed frame {missing[0]!r} ({len(missing)} missing)", list_path)
        selected.append(ResultSequence(video, [masks[frame] for frame in frames]))
    skipped = [seq.name for seq in sequences if seq.name not in listed]
    return selected, skipped


def _export_rle(sequences: list[ResultSequence], out: Path, progress: Progress | None) -> ExportSummary:
    prefix = len(sequences) > 1
    total = sum(len(seq.masks) for seq in sequences)
    written = 0
    with RleWriter(out) as writer:
        for seq in sequences:
            for mask in seq.masks:
                name = f"{seq.name}/{mask.stem}" if prefix else mask.stem
                writer.write(name, read_mask(mask, allow_empty=True).labels)
                written += 1
                if progress is not None:
                    progress(written, total)
    return ExportSummary("coco-rle", str(out), len(sequences), written)


def _export_overlays(sequences: list[ResultSequence], frames: Path, out: Path, progress: Progress | None) -> ExportSummary:
    if len(sequences) == 1:
        source = open_frames(frames)
        done = _write_overlay(_masks_by_frame(sequences[0], source), source, out, 0, len(source), progress)
        return ExportSummary("overlay-mp4", str(out), 1, done)
    if out.suffix:
        raise OutputError("several sequences make several videos: give a folder as --out", out)
    jobs = []  # every sequence's frames and masks are checked before anything is written
    for seq in sequences:
        source = open_frames(_sequence_frames(frames, seq.name))
        jobs.append((seq.name, source, _masks_by_frame(seq, source)))
    total = sum(len(source) for _, source, _ in jobs)
    done = 0
    with StagedFolder(out, VIDEO_FOLDER) as staged:  # the videos replace the old folder together
        for name, source, masks in jobs:
            done = _write_overlay(masks, source, staged.temp / f"{name}.mp4", done, total, progress)
    return ExportSummary("overlay-mp4", str(out), len(sequences), done)


def _write_overlay(
    masks: dict[str, Path], source: FrameSource, target: Path, done: int, total: int, progress: Progress | None
) -> int:
    """Draw ``masks`` (by frame name) over ``source`` into the video ``target``; returns ``done`` + its frames."""
    with OverlayWriter(target, source.fps) as writer:
        for name, frame in zip(source.names, source):
            mask = masks.get(name)
            labels = read_mask(mask, source.size, allow_empty=True).labels if mask else np.zeros(source.size, np.uint8)
            writer.write(frame, labels)
            done += 1
            if progress is not None:
                progress(done, total)
    return done


def _sequence_frames(frames: Path, name: str) -> Path:
    """The frames of sequence ``name`` under ``frames``: a ``<name>/`` folder or a ``<name>.<video>`` file."""
    candidates = [frames / name] + [frames / f"{name}{suffix}" for suffix in sorted(VIDEO_SUFFIXES)]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise InputError(f"no frames for sequence {name!r} (expected {name}/ or {name}.mp4 here)", frames)


def _masks_by_frame(seq: ResultSequence, source: FrameSource) -> dict[str, Path]:
    names = set(source.names)
    for mask in seq.masks:
        if mask.stem not in names:
            raise InputError(f"mask matches no frame of {source.path} (frames are named like {source.names[0]!r})", mask)
    return {mask.stem: mask for mask in seq.masks}


# ------------------------------------------------------------------------------------------ import


def import_rle(path: str | Path, out: str | Path | None = None) -> ExportSummary:
    """A ``vostool-rle-v1`` JSON -> palette PNGs in ``out`` (default: a folder named after the file).

    Frame names ``<seq>/<frame>`` go to ``out/<seq>/<frame>.png``; plain names to ``out/<frame>.png``.
    """
    path = Path(path)
    frames = read_rle_video(path)  # checks the file's structure before anything is decoded
    targets = _checked_targets(path)  # every name is checked before anything is written
    out = Path(out) if out is not None else path.resolve().with_suffix("")
    writers: dict[str, PaletteWriter] = {}
    with StagedFolder(out, RESULTS_FOLDER) as staged:  # the PNGs replace the old folder together
        for (folder, frame), (_, labels) in zip(targets, frames):
            if folder not in writers:
                writers[folder] = PaletteWriter(staged.temp / folder if folder else staged.temp)
            writers[folder].write(frame, labels)
    return ExportSummary("png", str(out), len(writers), len(targets))


def _checked_targets(path: Path) -> list[tuple[str, str]]:
    """(sub-folder or "", frame) per frame of an RLE file, refusing unsafe and duplicate names."""
    with open(path, encoding="utf-8") as handle:
        names = [frame["name"] for frame in json.load(handle)["frames"]]
    targets = [_split_frame_name(name, path) for name in names]
    seen: set[tuple[str, str]] = set()
    for target, name in zip(targets, names):
        if target in seen:
            raise InputError(f"two frames are named {name!r}", path)
        seen.add(target)
    return targets


def _split_frame_name(name: str, source: Path) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) > 2:
        raise InputError(f"frame name {name!r} has more than one '/' (expected <frame> or <seq>/<frame>)", source)
    parts = [safe_part(part, "frame name", source) for part in parts]
    return ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])

