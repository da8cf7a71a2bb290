"""Progress of a batch on stderr: overall videos and frames with an ETA, and the current video.

One process gets a Rich display (an overall bar over the frames of every video still to do, and one for
the current video). With several ranks each prints one line per finished video, prefixed with its rank,
so that interleaved output stays readable in a log.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vostool.batch.runner import VideoOutcome


def _console() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 150)


class RichReporter:
    """Two bars for one process: all videos to do (frames, ETA; videos in the label) and the current one."""

    def __init__(self, videos: int, frames: int, skipped: int) -> None:
        self.videos, self.finished, self.failed = videos, 0, 0
        self.frames_before = 0  # frames of the videos finished so far
        self.skipped = skipped
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:.1f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=_console(), transient=False,
        )
        self.bar.start()
        self.overall = self.bar.add_task(self._label(), total=max(frames, 1), fps=0.0)
        self.current = self.bar.add_task("", total=1, fps=0.0, visible=False)
        self.expected = 0

    def _label(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        skipped = f", {self.skipped} complete already" if self.skipped else ""
        return f"videos {self.finished}/{self.videos}{failed}{skipped}"

    def video_started(self, name: str, frames: int) -> None:
        self.expected = frames
        self.bar.reset(self.current, total=frames, visible=True, description=escape(name), fps=0.0)

    def frame(self, done: int, total: int) -> None:
        elapsed = self.bar.tasks[self.current].elapsed or 0.0
        self.bar.update(self.current, completed=done, fps=done / elapsed if elapsed > 0 else 0.0)
        overall = self.bar.tasks[self.overall]
        rate = (self.frames_before + done) / overall.elapsed if overall.elapsed else 0.0
        self.bar.update(self.overall, completed=self.frames_before + done, fps=rate)

    def video_finished(self, outcome: VideoOutcome) -> None:
        self.finished += 1
        self.failed += outcome.status == "failed"
        self.frames_before += outcome.frames if outcome.status == "done" else self.expected
        self.bar.update(self.overall, completed=self.frames_before, description=self._label())
        if outcome.status == "failed":
            self.bar.console.print(f"[bold red]failed:[/] {escape(outcome.name)}: {escape(outcome.error or '')}",
                                   highlight=False, soft_wrap=True)

    def close(self) -> None:
        self.bar.stop()


class LineReporter:
    """One line per finished video for rank ``rank`` of several."""

    def __init__(self, rank: int, videos: int, frames: int) -> None:
        self.rank, self.videos, self.frames = rank, videos, max(frames, 1)
        self.finished, self.frames_done, self.expected = 0, 0, 0
        self.start = time.perf_counter()
        self.console = _console()

    def video_started(self, name: str, frames: int) -> None:
        self.expected = frames

    def frame(self, done: int, total: int) -> None:
        pass

    def video_finished(self, outcome: VideoOutcome) -> None:
        self.finished += 1
        self.frames_done += outcome.frames if outcome.status == "done" else self.expected
        elapsed = time.perf_counter() - self.start
        left = elapsed * (self.frames - self.frames_done) / self.frames_done if self.frames_done else 0.0
        what = (f"failed: {outcome.error}" if outcome.status == "failed"
                else f"{outcome.frames} frames in {outcome.seconds:.1f} s")
        self.console.print(
            f"rank {self.rank}: [{self.finished}/{self.videos} videos, {min(self.frames_done, self.frames)}/"
            f"{self.frames} frames] {outcome.name} {what}; ETA {_duration(max(left, 0.0))}",
            highlight=False, soft_wrap=True, markup=False,
        )

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
