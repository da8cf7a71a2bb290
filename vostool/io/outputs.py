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

from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

from vostool.errors import VostoolError
from vostool.io.staging import MASK_FOLDER, StagedFolder, commit_together, finish_despite_interrupts, path_inside
from vostool.io.writers import STDOUT, AtomicFile, JsonlWriter, OverlayWriter, PaletteWriter, RleWriter, is_stream_target
from vostool.pipeline import FrameOutput
from vostool.settings import SettingsError

PathLike = str | Path


@dataclass(frozen=True)
class OutputTargets:
    """Where a run writes (None: not wanted). ``rle``: a COCO RLE JSON file, or ``-`` for JSON lines on
    standard output; ``jsonl``: JSON lines, one per frame, to a file or ``-``."""

    out_dir: PathLike | None = None
    overlay: PathLike | None = None
    rle: PathLike | None = None
    jsonl: PathLike | None = None

    # The library's parameter for each field, for messages.
    PARAMETERS = {"out_dir": "out", "overlay": "overlay", "rle": "rle", "jsonl": "jsonl"}
    STREAMABLE = frozenset({"rle", "jsonl"})

    def given(self) -> dict[str, PathLike]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def flag(self, field_name: str) -> str:
        return "--" + self.PARAMETERS[field_name]

    def to_stdout(self) -> list[str]:
        """The fields that write to standard output."""
        return [name for name, path in self.given().items() if str(path) == STDOUT]

    def check(self) -> None:
        """Only JSON lines go to standard output, and only one output at a time (SettingsError)."""
        if not self.given():
            raise VostoolError(
                "no output requested: pass --out DIR, --overlay FILE.mp4, --rle FILE.json (or - for JSON lines "
                "on standard output) and/or --jsonl FILE"
            )
        stdout = self.to_stdout()
        for name in stdout:
            if name not in self.STREAMABLE:
                raise SettingsError(self.PARAMETERS[name], STDOUT, "only --rle and --jsonl can write to standard output; give a path")
        if len(stdout) > 1:
            raise SettingsError("jsonl", STDOUT, "--rle - already writes the frames to standard output")

    def files(self) -> dict[str, PathLike]:
        """The file outputs by flag (standard output left out)."""
        return {
            self.flag(name): path for name, path in self.given().items()
            if name != "out_dir" and str(path) != STDOUT
        }


class RunOutputs:
    """The requested outputs of one run. Construct it before any work (it checks the targets and
    writes nothing), then ``with outputs: ... outputs.write(frame_output)``; leaving the block without
    an error commits everything together, leaving it through one discards every new output."""

    def __init__(self, targets: OutputTargets, palette: bytes | None, fps: float | None) -> None:
        targets.check()
        self.targets, self.palette, self.fps = targets, palette, fps
        out_dir = targets.out_dir
        # Files inside --out are written into its staging folder and arrive with it.
        self.nested = {
            name: inside
            for name in ("overlay", "rle", "jsonl")
            if out_dir is not None and (path := getattr(targets, name)) is not None and not is_stream_target(path)
            and (inside := path_inside(path, out_dir)) is not None
        }
        self.masks = StagedFolder(out_dir, MASK_FOLDER, extra=self.nested.values()) if out_dir is not None else None
        self.palette_writer: PaletteWriter | None = None
        self.file_writers: dict[str, OverlayWriter | RleWriter | JsonlWriter] = {}
        self.written: dict[str, str] = {}

    @property
    def wants_probabilities(self) -> bool:
        """Whether a writer needs the frames' probabilities (they are copied off the device only then)."""
        return False

    def __enter__(self) -> RunOutputs:
        try:
            if self.masks is not None:
                self.palette_writer = PaletteWriter(self.masks.create(), self.palette)
            targets = self.targets
            if targets.overlay is not None:
                self.file_writers["overlay"] = OverlayWriter(self._path("overlay"), self.fps, palette=self.palette)
            if targets.rle is not None:
                rle = self._path("rle")
                self.file_writers["rle"] = JsonlWriter(rle) if str(rle) == STDOUT else RleWriter(rle)
            if targets.jsonl is not None:
                self.file_writers["jsonl"] = JsonlWriter(self._path("jsonl"))
        except BaseException:
            self._discard()
            raise
        return self

    def _path(self, name: str) -> Path:
        nested = self.nested.get(name)
        return self.masks.temp / nested if nested is not None else Path(getattr(self.targets, name))

    def write(self, out: FrameOutput) -> None:
        """Hand one frame to every writer (in the writer thread; frames come in order)."""
        if self.palette_writer is not None:
            self.palette_writer.write(out.name, out.labels)
        for writer in self.file_writers.values():
            if isinstance(writer, OverlayWriter):
                writer.write(out.frame, out.labels)
            elif isinstance(writer, JsonlWriter):
                writer.write(out.index, out.name, out.labels, out.object_ids)
            else:
                writer.write(out.name, out.labels)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            commit_together(self._finish_files() + ([self.masks] if self.masks is not None else []))
        except BaseException:
            self._discard()
            raise
        self.written = {name: str(path) for name, path in self.targets.given().items()}

    def _finish_files(self) -> list[AtomicFile]:
        """Finish and check every file; those inside --out move into its staging folder now."""
        pending = []
        for name, writer in self.file_writers.items():
            file = writer.finish()
            if file is None:
                continue  # a stream: already out
            if name in self.nested:
                file.commit()
            else:
                pending.append(file)
        return pending

    def _discard(self) -> None:
        steps = [writer.abort for writer in self.file_writers.values()]
        if self.masks is not None:
            steps.append(self.masks.discard)
        finish_despite_interrupts(steps)
