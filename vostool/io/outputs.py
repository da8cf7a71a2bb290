"""All the outputs of one ``segment`` run, written in one pass and moved into place together.

Folders (the masks of ``--out``) are written into staging folders beside them and replaced as a whole;
files (the overlay video, the RLE file, a JSON-lines file) into temporary files beside theirs, or into
the masks' staging folder when they lie inside ``--out``. Only when every one is complete and checked
(the videos decode to every frame) do all of them move in, together (:func:`commit_together`); a
failure or an interrupt before that leaves every old output exactly as it was and no new one.

Streams are the exception: JSON lines for standard output (``-``), a FIFO or a character device go out
live, one flushed line per frame, for a reader downstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vostool.errors import VostoolError
from vostool.io.editor import (
    CUTOUT_FOLDER,
    CUTOUT_SUFFIXES,
    MATTE_FOLDER,
    MATTE_SUFFIXES,
    SOFT_FOLDER,
    CutoutFolderWriter,
    CutoutVideoWriter,
    MatteFolderWriter,
    MatteVideoWriter,
    SoftWriter,
    is_video_path,
)
from vostool.io.staging import MASK_FOLDER, StagedFolder, commit_together, finish_despite_interrupts, path_inside
from vostool.io.writers import STDOUT, AtomicFile, JsonlWriter, OverlayWriter, PaletteWriter, RleWriter, is_stream_target
from vostool.pipeline import FrameOutput
from vostool.settings import SettingsError

PathLike = str | Path


@dataclass(frozen=True)
class OutputTargets:
    """Where a run writes (None: not wanted). ``rle``: a COCO RLE JSON file, or ``-`` for JSON lines on
    standard output; ``jsonl``: JSON lines, one per frame, to a file or ``-``; ``matte``: a video
    (.mp4/.mov/.mkv) or a folder; ``cutout``: a video (.webm/.mov) or a folder; ``soft``: a folder.
    ``objects``: the ids that form the matte, the cut-out and the soft maps (None: all)."""

    out_dir: PathLike | None = None
    overlay: PathLike | None = None
    rle: PathLike | None = None
    jsonl: PathLike | None = None
    matte: PathLike | None = None
    cutout: PathLike | None = None
    soft: PathLike | None = None
    objects: tuple[int, ...] | None = None

    # The library's parameter for each output, for messages (the CLI's flag is --<parameter>).
    PARAMETERS = {"out_dir": "out", "overlay": "overlay", "rle": "rle", "jsonl": "jsonl", "matte": "matte",
                  "cutout": "cutout", "soft": "soft"}  # fmt: skip
    STREAMABLE = frozenset({"rle", "jsonl"})
    EDITOR = ("matte", "cutout", "soft")

    def given(self) -> dict[str, PathLike]:
        """The requested outputs by field name."""
        return {name: getattr(self, name) for name in self.PARAMETERS if getattr(self, name) is not None}

    def flag(self, field_name: str) -> str:
        return "--" + self.PARAMETERS[field_name]

    def check(self) -> None:
        """Raise for outputs that cannot be (a VostoolError, SettingsError naming the option), before any work."""
        given = self.given()
        if not given:
            raise VostoolError(
                "no output requested: pass --out DIR, --overlay FILE.mp4, --rle FILE.json (or - for JSON lines "
                "on standard output), --jsonl FILE, --matte, --cutout and/or --soft"
            )
        stdout = [name for name, path in given.items() if str(path) == STDOUT]
        for name in stdout:
            if name not in self.STREAMABLE:
                raise SettingsError(self.PARAMETERS[name], STDOUT, "only --rle and --jsonl can write to standard output; give a path")
        if len(stdout) > 1:
            raise SettingsError("jsonl", STDOUT, "--rle - already writes the frames to standard output")
        self._check_kinds()
        if self.objects is not None and not any(getattr(self, name) is not None for name in self.EDITOR):
            raise SettingsError("objects", _ids(self.objects), "selects the objects of --matte, --cutout and --soft; pass one of them")

    def _check_kinds(self) -> None:
        if self.matte is not None and Path(self.matte).suffix and not self._is_video("matte") and not Path(self.matte).is_dir():
            raise SettingsError("matte", self.matte, "give a video (.mkv, .mov, .mp4) or a folder for 8-bit PNGs")
        if self.cutout is not None and Path(self.cutout).suffix and not self._is_video("cutout") and not Path(self.cutout).is_dir():
            raise SettingsError(
                "cutout", self.cutout,
                f"{Path(self.cutout).suffix} cannot carry alpha here: give .webm (VP9 with alpha), .mov (ProRes "
                "4444 with alpha) or a folder for RGBA PNGs",
            )
        if self.soft is not None and Path(self.soft).is_file():
            raise SettingsError("soft", self.soft, "is a file; give a folder (it gets one sub-folder of PNGs per object)")

    def check_objects(self, present: Iterable[int]) -> None:
        """Every id of ``objects`` must be in a mask (SettingsError naming the first that is not)."""
        present = sorted(set(present))
        for object_id in self.objects or ():
            if object_id not in present:
                have = ", ".join(map(str, present)) or "none"
                raise SettingsError("objects", _ids(self.objects), f"no mask has object {object_id} (the masks have {have})")

    def _is_video(self, name: str) -> bool:
        suffixes = {"matte": MATTE_SUFFIXES, "cutout": CUTOUT_SUFFIXES}[name]
        path = getattr(self, name)
        return path is not None and is_video_path(path, suffixes)

    def files(self) -> dict[str, PathLike]:
        """The file outputs by flag (standard output left out)."""
        kinds = {name: path for name, path in self.given().items() if name in _FILE_KINDS}
        kinds.update({name: getattr(self, name) for name in ("matte", "cutout") if self._is_video(name)})
        return {self.flag(name): path for name, path in kinds.items() if str(path) != STDOUT}

    def folders(self) -> dict[str, PathLike]:
        """The folder outputs by flag, each replaced as a whole."""
        kinds = {"out_dir": self.out_dir, "soft": self.soft}
        kinds.update({name: getattr(self, name) for name in ("matte", "cutout") if not self._is_video(name)})
        return {self.flag(name): path for name, path in kinds.items() if path is not None}


_FILE_KINDS = ("overlay", "rle", "jsonl")


def _ids(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in ids)


def parse_object_ids(text: str) -> tuple[int, ...]:
    """``"1,3"`` -> (1, 3); SettingsError (parameter ``objects``) for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise SettingsError("objects", text, "give object ids (whole numbers from 1) separated by commas, e.g. 1,3")
    return tuple(dict.fromkeys(int(part) for part in parts))


class RunOutputs:
    """The requested outputs of one run. Construct it before any work (it checks the targets and
    writes nothing), then ``with outputs: ... outputs.write(frame_output)``; leaving the block without
    an error commits everything together, leaving it through one discards every new output.

    ``object_ids``: every id of the run's masks (the soft maps get one folder each, unless
    ``targets.objects`` selects some).
    """

    def __init__(self, targets: OutputTargets, palette: bytes | None, fps: float | None, object_ids: Iterable[int] = ()) -> None:
        targets.check()
        self.targets, self.palette, self.fps = targets, palette, fps
        self.object_ids = tuple(sorted(set(object_ids)))
        files = targets.files()
        out_dir = targets.out_dir
        # Files inside --out are written into its staging folder and arrive with it.
        self.nested = {
            flag: inside
            for flag, path in files.items()
            if out_dir is not None and not is_stream_target(path) and (inside := path_inside(path, out_dir)) is not None
        }
        layouts = {"--out": MASK_FOLDER, "--matte": MATTE_FOLDER, "--cutout": CUTOUT_FOLDER, "--soft": SOFT_FOLDER}
        self.folders = {
            flag: StagedFolder(path, layouts[flag], extra=self.nested.values() if flag == "--out" else ())
            for flag, path in targets.folders().items()
        }
        self.files = files
        self.to_stdout = any(str(getattr(targets, name)) == STDOUT for name in targets.STREAMABLE)
        self.writers: dict[str, object] = {}
        self.stdout: JsonlWriter | None = None
        self.written: dict[str, str] = {}

    @property
    def wants_probabilities(self) -> bool:
        """Whether a writer needs the frames' probabilities (they are copied off the device only then)."""
        return self.targets.soft is not None

    def __enter__(self) -> RunOutputs:
        try:
            for flag, folder in self.folders.items():
                self.writers[flag] = self._folder_writer(flag, folder.create())
            for flag in self.files:
                self.writers[flag] = self._file_writer(flag, self._path(flag))
            if self.to_stdout:
                self.stdout = JsonlWriter(STDOUT)
        except BaseException:
            self._discard()
            raise
        return self

    def _folder_writer(self, flag: str, folder: Path):
        objects = self.targets.objects
        if flag == "--out":
            return PaletteWriter(folder, self.palette)
        if flag == "--matte":
            return MatteFolderWriter(folder, objects)
        if flag == "--cutout":
            return CutoutFolderWriter(folder, objects)
        return SoftWriter(folder, objects or self.object_ids)

    def _file_writer(self, flag: str, path: Path):
        objects = self.targets.objects
        if flag == "--overlay":
            return OverlayWriter(path, self.fps, palette=self.palette)
        if flag == "--rle":
            return RleWriter(path)
        if flag == "--jsonl":
            return JsonlWriter(path)
        if flag == "--matte":
            return MatteVideoWriter(path, self.fps, objects)
        return CutoutVideoWriter(path, self.fps, objects)

    def _path(self, flag: str) -> Path:
        nested = self.nested.get(flag)
        return self.folders["--out"].temp / nested if nested is not None else Path(self.files[flag])

    def write(self, out: FrameOutput) -> None:
        """Hand one frame to every writer (in the writer thread; frames come in order)."""
        for writer in self.writers.values():
            _feed(writer, out)
        if self.stdout is not None:
            self.stdout.write(out.index, out.name, out.labels, out.object_ids)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            commit_together(self._finish_files() + [self.folders[flag] for flag in self.folders])
        except BaseException:
            self._discard()
            raise
        self.written = {name: str(path) for name, path in self.targets.given().items()}

    def _finish_files(self) -> list[AtomicFile]:
        """Finish and check every file; those inside --out move into its staging folder now."""
        pending = []
        for flag in self.files:
            file = self.writers[flag].finish()
            if file is None:
                continue  # a stream (a FIFO): already out
            if flag in self.nested:
                file.commit()
            else:
                pending.append(file)
        if self.stdout is not None:
            self.stdout.finish()
        return pending

    def _discard(self) -> None:
        steps = [self.writers[flag].abort for flag in self.files if flag in self.writers]
        if self.stdout is not None:
            steps.append(self.stdout.abort)
        steps += [folder.discard for folder in self.folders.values()]
        finish_despite_interrupts(steps)


def _feed(writer: object, out: FrameOutput) -> None:
    """One frame to one writer, in the arguments it takes."""
    if isinstance(writer, (PaletteWriter, MatteFolderWriter, RleWriter)):
        writer.write(out.name, out.labels)
    elif isinstance(writer, MatteVideoWriter):
        writer.write(out.labels)
    elif isinstance(writer, CutoutFolderWriter):
        writer.write(out.name, out.frame, out.labels)
    elif isinstance(writer, (OverlayWriter, CutoutVideoWriter)):
        writer.write(out.frame, out.labels)
    elif isinstance(writer, JsonlWriter):
        writer.write(out.index, out.name, out.labels, out.object_ids)
    elif isinstance(writer, SoftWriter):
        writer.write(out.name, out.object_ids, out.probabilities)
    else:
        raise TypeError(f"no way to feed {type(writer).__name__}")
