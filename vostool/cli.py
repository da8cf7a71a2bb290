"""The ``vostool`` command line: parses options, calls the library, prints.

Progress and tables go to stderr so that stdout stays clean for ``--json`` in pipelines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import VostoolError, VostoolWarning
from .models.registry import DEFAULT_MODEL, MODELS
from .settings import RunSettings, SettingsError

app = typer.Typer(
    name="vostool",
    help="Semi-supervised video object segmentation: give a video and first-frame masks, get masks for every frame.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Outside a terminal Rich assumes 80 columns and squeezes tables; logs and pipes get room instead.
_WIDTH = None if sys.stderr.isatty() else 150
err = Console(stderr=True, width=_WIDTH)
out = Console(width=None if sys.stdout.isatty() else 150)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, ``docker stop``, a closed terminal, a scheduler), raised in the main
    thread. A KeyboardInterrupt, so that every clean-up path that handles Ctrl-C handles it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    # One clean-up is enough: a second SIGTERM while temp files are being removed must not cut it short.
    for handled in _TERMINATING_SIGNALS:
        signal.signal(handled, signal.SIG_IGN)
    raise Terminated(signum)


_TERMINATING_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


def install_signal_handlers() -> None:
    """Treat SIGTERM and SIGHUP like Ctrl-C: unwind (removing temp files and staging folders), then exit
    128 + the signal number."""
    for signum in _TERMINATING_SIGNALS:
        signal.signal(signum, _raise_terminated)


def say(label: str, text: str) -> None:
    """One line on stderr: a styled label, then ``text`` verbatim (paths may hold '[' or ':x:', which
    Rich would otherwise read as markup or emoji)."""
    err.print(f"{label} {escape(text)}", highlight=False, soft_wrap=True, emoji=False)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, VostoolWarning):
        say("[bold yellow]warning:[/]", str(message))
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a VostoolError into one line on stderr and its exit code (2), never a traceback; an interrupt
    (Ctrl-C: 130, SIGTERM: 143, SIGHUP: 129) into one line too."""
    try:
        yield
    except SettingsError as exc:
        say("[bold red]error:[/]", exc.flag)
        raise typer.Exit(exc.exit_code) from None
    except VostoolError as exc:
        say("[bold red]error:[/]", str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
        err.print(f"[bold red]{what}[/]", highlight=False)
        raise typer.Exit(128 + signum) from None


class FrameProgress:
    """A Rich progress bar (frames, fps, ETA) on stderr, shown from the first processed frame on, so that
    errors found while checking the input stay a single line."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: Progress | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            # A stream of unknown length (standard input) has no total, so no ETA: frames and fps only.
            eta = [TimeRemainingColumn()] if total is not None else []
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[fps]:.1f} fps"), TimeElapsedColumn(), *eta,
                console=err,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, fps=0.0)
        elapsed = self.bar.tasks[self.task].elapsed or 0.0
        self.bar.update(self.task, completed=done, total=total, fps=done / elapsed if elapsed > 0 else 0.0)

    def describe(self, description: str) -> None:
        self.description = description
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextlib.contextmanager
def frame_progress(description: str, quiet: bool) -> Iterator[FrameProgress | None]:
    """Yields a ``(done, total)`` callback for the library, or None when quiet."""
    progress = None if quiet else FrameProgress(description)
    try:
        yield progress
    finally:
        if progress is not None:
            progress.close()


def _version(value: bool) -> None:
    if value:
        out.print(f"vostool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """vostool: STCN, SimVOS and an offline default model on one streaming engine."""


MODEL_HELP = f"Model name ({', '.join(MODELS)})."
PRECISION_HELP = (
    "fp32, tf32, fp16 or bf16. fp32: TF32 off on CUDA (parity with the official code); tf32: TF32 "
    "products and convolutions allowed on CUDA (on the CPU the same as fp32); fp16/bf16: autocast, with "
    "the memory affinity, softmax and soft aggregation kept in fp32."
)
COMPILE_HELP = (
    "torch.compile the encoders and decoders (the memory readout stays eager): the first frame of a "
    "resolution compiles them (seconds to minutes, longest on CPU), later frames run faster."
)


@app.command()
def segment(
    input: Annotated[Path, typer.Argument(help="Video file (mp4/mov/mkv/avi/webm), folder of JPEG/PNG frames, or - for a video piped into standard input (Matroska, WebM, MPEG-TS, ...).")],
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="First-frame mask: palette/grayscale PNG (values = object ids) or COCO RLE JSON.")] = None,
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Folder of masks for any frames, named like the frames; a mask at frame t introduces its new ids from t on.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write palette PNG masks here, named like the input frames.")] = None,
    overlay: Annotated[Optional[Path], typer.Option("--overlay", help="Write an MP4 with the masks blended over the frames.")] = None,
    rle: Annotated[Optional[Path], typer.Option("--rle", help="Write per-frame, per-object COCO RLE to this JSON file; - writes JSON lines to stdout, one flushed line per frame as it is done.")] = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Write one JSON line per frame (index, name, per-object RLE, area, bbox) to this file (or -), flushed frame by frame.")] = None,
    matte: Annotated[Optional[Path], typer.Option("--matte", help="Write a grayscale matte (white = object): an H.264 .mp4/.mov/.mkv (yuv420p, full range) or a folder of 8-bit PNGs.")] = None,
    cutout: Annotated[Optional[Path], typer.Option("--cutout", help="Write the frames with the matte as alpha: .webm (VP9 yuva420p), .mov (ProRes 4444) or a folder of RGBA PNGs.")] = None,
    soft: Annotated[Optional[Path], typer.Option("--soft", help="Write each object's probability as 8-bit PNGs, DIR/<id>/<frame>.png (before the argmax, at the frames' size).")] = None,
    objects: Annotated[Optional[str], typer.Option("--objects", help="Object ids that form --matte, --cutout and --soft, e.g. 1,3 (default: all).")] = None,
    direction: Annotated[str, typer.Option("--direction", help="forward, backward or both. forward: each object from the first frame it is annotated on to the end; backward: from the last frame it is annotated on back to the start; both: every frame takes each object from its nearest annotation, forward from an earlier one or backward from a later one (a tie goes forward). Annotate the middle frame with --masks and use both.")] = "forward",
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = DEFAULT_MODEL,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Checkpoint file (overrides the registry's default).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    size: Annotated[Optional[int], typer.Option("--size", help="Internal short side in pixels, 64-2160 (default: the model's, 480); -1 = native. The long side is capped at 3.56x the short side: a more elongated video is processed smaller, and the run says so.")] = None,
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
    mem_every: Annotated[Optional[int], typer.Option("--mem-every", help="Write a frame to memory every N frames (default: the model's).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Memory positions read per query position (default: the model's).")] = None,
    max_memory_frames: Annotated[Optional[int], typer.Option("--max-memory-frames", help="Cap on memory frames; annotated frames stay, the oldest others are dropped.")] = None,
    offline: Annotated[bool, typer.Option("--offline", envvar="VOSTOOL_OFFLINE", help="Never download checkpoints.")] = False,
    allow_truncated: Annotated[bool, typer.Option("--allow-truncated", help="Segment what a truncated or damaged video still decodes instead of refusing it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a one-line JSON summary on stdout.")] = False,
) -> None:
    """Segment the objects of the first-frame mask through a video.

    Progress and the summary go to stderr; stdout carries only data (--json, --rle -, --jsonl -). When
    the reader of stdout stops early (| head), the run ends quietly with exit 0 and writes no file.
    """
    from .io.writers import OutputClosed

    name = "stdin" if str(input) == "-" else input.name
    try:
        with user_errors(), frame_progress(f"segment {name}", quiet) as progress:
            from .api import segment as run_segment

            streamed = [flag for flag, path in (("--rle", rle), ("--jsonl", jsonl)) if str(path) == "-"]
            if as_json and streamed:
                raise VostoolError(f"--json: {streamed[0]} - already writes the frames to stdout; drop --json or give a file")
            from .io.outputs import parse_object_ids

            summary = run_segment(
                input, mask, masks_dir=masks, model=model, weights=weights, device=device, size=size,
                precision=precision, out_dir=out_dir, overlay=overlay, rle=rle, jsonl=jsonl, matte=matte,
                cutout=cutout, soft=soft, objects=None if objects is None else parse_object_ids(objects),
                direction=direction,
                mem_every=mem_every, top_k=top_k, max_memory_frames=max_memory_frames, offline=offline,
                progress=progress, allow_truncated=allow_truncated, compile=compile,
            )
    except OutputClosed:
        _stdout_gone()
    if as_json:
        print(json.dumps(summary.to_dict()), flush=True)
    if not quiet:
        err.print(_summary_table(summary))


def _stdout_gone() -> None:
    """The reader of stdout left (``| head -1``): what it read is all it wanted. Exit 0 without a word,
    and with stdout pointed at /dev/null so that Python's final flush cannot complain either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(0)


def _summary_table(summary) -> Table:
    table = Table(title="vostool segment", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("input", summary.input)
    table.add_row("model", f"{summary.model} on {summary.device} ({summary.precision})")
    table.add_row("frames", f"{summary.frames} at {summary.size[1]}x{summary.size[0]}")
    table.add_row("objects", ", ".join(map(str, summary.objects)) or "none")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.fps:.2f} fps)")
    for kind, path in summary.outputs.items():
        table.add_row(kind, path)
    return table


@app.command("eval")
def eval_command(
    davis: Annotated[Path, typer.Option("--davis", help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets/<year>/<set>.txt).")],
    results: Annotated[Optional[Path], typer.Option("--results", help="Palette-PNG results (<seq>/<frame>.png). With --model: where to write them.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Segment the set with this model first, then evaluate.")] = None,
    subset: Annotated[str, typer.Option("--set", help="Image set: ImageSets/<year>/<set>.txt.")] = "val",
    year: Annotated[str, typer.Option("--year", help="DAVIS year.")] = "2017",
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Evaluation processes (default: one per core).")] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the table as CSV.")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="With --model: checkpoint file.")] = None,
    device: Annotated[str, typer.Option("--device", help="With --model: auto, cpu, cuda or mps.")] = "auto",
    size: Annotated[Optional[int], typer.Option("--size", help="With --model: internal short side (-1 = native).")] = None,
    precision: Annotated[str, typer.Option("--precision", help=f"With --model: {PRECISION_HELP}")] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help=f"With --model: {COMPILE_HELP}")] = False,
    mem_every: Annotated[Optional[int], typer.Option("--mem-every", help="With --model: memory interval.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="With --model: top-k readout.")] = None,
    max_memory_frames: Annotated[Optional[int], typer.Option("--max-memory-frames", help="With --model: memory cap.")] = None,
    offline: Annotated[bool, typer.Option("--offline", envvar="VOSTOOL_OFFLINE", help="Never download checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """DAVIS 2017 semi-supervised J&F, identical to the official evaluator (optionally segmenting first)."""
    with user_errors():
        from .eval import evaluate_davis

        if model is None and results is None:
            raise VostoolError("pass --results DIR (existing predictions) and/or --model NAME (segment first)")
        if model is not None:
            from .eval.predict import segment_davis

            settings = RunSettings(size=size, mem_every=mem_every, top_k=top_k, max_memory_frames=max_memory_frames,
                                   precision=precision, device=device, compile=compile)  # validated before anything is read

            results = results or Path("vostool-results") / f"{model}-davis{year}-{subset}"
            with frame_progress("segment", quiet) as progress:
                def announce(name: str, index: int, total: int) -> None:
                    if progress is not None:
                        progress.describe(f"[{index + 1}/{total}] {name}")

                segment_davis(
                    davis, results, subset=subset, year=year, on_sequence=announce, progress=progress,
                    model=model, weights=weights, offline=offline, settings=settings,
                )
            if not quiet:
                err.print(f"results written to {results}")
        with frame_progress("evaluate", quiet) as progress:
            report = evaluate_davis(davis, results, subset=subset, year=year, workers=workers, progress=progress)
        if csv is not None:
            report.to_csv(csv)
    if as_json:
        print(json.dumps(report.to_json()), flush=True)
    elif not quiet:
        report.render(out)


@app.command("train")
def train_command(
    data: Annotated[Path, typer.Argument(help="DAVIS-layout folder (JPEGImages/<clip> and Annotations/<clip>, or the same under a 480p folder), or one clip's frame folder with --masks.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Write the trained weights here (.pth); use them with segment --weights.")],
    masks: Annotated[Optional[Path], typer.Option("--masks", help="With a frame folder: its masks, named like the frames, for any number of frames.")] = None,
    init: Annotated[str, typer.Option("--init", help="The model to train; it starts from its own shipped weights.")] = "lite0-stcn",
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Start from this checkpoint instead.")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Start from the model's untrained state.")] = False,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples (three frames each) per step.")] = 4,
    learning_rate: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine decay).")] = 5e-4,
    crop: Annotated[int, typer.Option("--crop", help="Square training crop side in pixels (a multiple of 16).")] = 320,
    max_skip: Annotated[int, typer.Option("--max-skip", help="Most frames between the sampled frames of a clip.")] = 10,
    shapes: Annotated[float, typer.Option("--shapes", help="Share of samples that are synthetic textured shapes crossing each other (0 to 1).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed and data give the same weights.")] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save the training state (OUT.state) every N steps.")] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.state, left by an interrupted run.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Fine-tune a model on your own annotated clips (or train it), then segment with --weights OUT."""
    with user_errors():
        from .train import TrainSettings, train

        settings = TrainSettings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                 checkpoint_every=checkpoint_every, crop=crop, max_skip=max_skip, shapes_fraction=shapes,
                                 device=device)
        with training_progress(quiet) as progress:
            report = train(data, out_file, model=init, weights=weights, from_scratch=from_scratch, masks=masks,
                           settings=settings, resume=resume, on_step=progress)
        if not quiet:
            resumed = f", resumed at step {report.resumed_from}" if report.resumed_from else ""
            err.print(f"trained {report.steps} steps in {report.seconds:.0f} s{resumed}; final loss "
                      f"{report.final_loss:.4f}; weights {report.weights}, loss curve {report.loss_curve}",
                      highlight=False)


def _training_log_lines():
    import time

    began = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 20) == 0:
            elapsed = time.perf_counter() - began
            err.print(f"train step {step}/{total} loss {loss:.4f} elapsed {elapsed:.0f} s", highlight=False)

    return on_step


@contextlib.contextmanager
def training_progress(quiet: bool) -> Iterator:
    """A Rich bar of steps with the running loss; None when quiet. Where stderr is not a terminal (a log
    file, a scheduler), one plain line every 5 % of the run instead, since a bar is never redrawn there."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        yield _training_log_lines()
        return
    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    task = None

    def on_step(step: int, total: int, loss: float) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("train", total=total, loss=loss, completed=step - 1)
        bar.update(task, completed=step, loss=loss)

    try:
        yield on_step
    finally:
        bar.stop()


weights_app = typer.Typer(help="List, download, locate and verify released checkpoints; blend two checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _human_size(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "?"
    return ("≈" if approx else "") + f"{n / 2**20:.1f} MiB"


@weights_app.command("list")
def weights_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON on stdout.")] = False,
) -> None:
    """Every registered checkpoint: model, name, cached or not, size, source."""
    from . import weights

    rows = []
    for ckpt in weights.list_checkpoints():
        cached = weights.cached_path(ckpt)
        size = (cached.stat().st_size, False) if cached else (ckpt.size_bytes or ckpt.approx_size_bytes,
                                                                ckpt.size_bytes is None)
        rows.append({"model": ckpt.model, "checkpoint": ckpt.name, "default": ckpt.default,
                     "available": ckpt.model in MODELS,
                     "cached": str(cached) if cached else None, "size": size, "source": ckpt.source})
    if as_json:
        print(json.dumps([{**r, "size": r["size"][0]} for r in rows]))
        return
    table = Table(title=f"vostool checkpoints (cache: {weights.cache_dir()})", title_justify="left")
    for column in ("model", "checkpoint", "cached", "size", "source"):
        table.add_column(column)
    for r in rows:
        name = r["checkpoint"] + (" (default)" if r["default"] else "")
        model = r["model"] if r["available"] else f"{r['model']} [dim](not available yet)[/]"
        table.add_row(model, name, "yes" if r["cached"] else "no", _human_size(*r["size"]), r["source"])
    out.print(table)


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str], typer.Argument(help="Checkpoint or model names (see `vostool weights list`).")],
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of the file.")] = None,
    offline: Annotated[bool, typer.Option("--offline", envvar="VOSTOOL_OFFLINE", help="Never download: only check what is cached.")] = False,
) -> None:
    """Download checkpoints into the cache, verifying layout (and hash) before keeping them."""
    from . import weights

    with user_errors():
        for name in names:
            ckpt = weights.get_checkpoint(name)
            was_cached = weights.cached_path(ckpt) is not None and not force
            path = weights.download(ckpt, force=force, offline=offline, expected_sha256=sha256)
            state = "bundled with vostool" if ckpt.bundled else "cached" if was_cached else "downloaded"
            err.print(f"{name}: {state}, {path}", highlight=False, soft_wrap=True)


@weights_app.command("path")
def weights_path(name: Annotated[str, typer.Argument(help="Checkpoint or model name.")]) -> None:
    """Print where a checkpoint is (or will be) cached."""
    from . import weights

    with user_errors():
        print(weights.cache_file(weights.get_checkpoint(name)))


@weights_app.command("verify")
def weights_verify(
    path: Annotated[Optional[Path], typer.Argument(help="A checkpoint file; default: every cached checkpoint.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The model the file is for (needed for files outside the cache).")] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of the file.")] = None,
) -> None:
    """Check a checkpoint's exact layout against its model, and its sha256 against what is known."""
    from . import weights

    with user_errors():
        targets = [(path, model)] if path is not None else [
            (p, c.model) for c in weights.list_checkpoints() if (p := weights.cached_path(c)) is not None
        ]
        if not targets:
            err.print("no cached checkpoints to verify")
        for file, file_model in targets:
            result = weights.verify(file, file_model, expected_sha256=sha256)
            matched = ", ".join(result.hash_matches) or "no reference hash yet"
            out.print(f"[green]ok[/] {result.path} ({result.model}, {result.num_tensors} tensors, "
                      f"sha256 {result.sha256[:16]}…, matches: {matched})", highlight=False)


@weights_app.command("blend")
def weights_blend(
    first: Annotated[Path, typer.Argument(help="A checkpoint file of the model.")],
    second: Annotated[Path, typer.Argument(help="Another checkpoint file of the same model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The blended weights file to write (.pth).")],
    share: Annotated[float, typer.Option("--share", help="SECOND's share of the blend: 0 gives FIRST, 1 gives SECOND.")] = 0.5,
    model: Annotated[str, typer.Option("--model", help=f"The model both files are for. {MODEL_HELP}")] = DEFAULT_MODEL,
) -> None:
    """Average two checkpoints of one model, tensor by tensor: (1 - share) x FIRST + share x SECOND.

    Blending a fine-tune with the weights it started from keeps some of their general behaviour.
    """
    from . import weights

    with user_errors():
        path = weights.blend_checkpoints(first, second, out, model=model, share=share)
        err.print(f"wrote {path} ({1 - share:g} x {first.name} + {share:g} x {second.name}, "
                  f"sha256 {weights.sha256_file(path)})", highlight=False, soft_wrap=True)


BENCH_JSON_HELP = (
    'JSON (--json, schema "vostool-bench-v1", described in docs/benchmarks.md): {"schema", "vostool", '
    '"machine": {platform, torch, cpu, device, device_name, load_average_1min, ...}, "settings": {the options}, '
    '"results": [{"model", "weights": bundled|file|synthetic, "note", "frames", "objects", "frame_size": [H, W], '
    '"input_size": [H, W], "load_seconds", "compile_seconds" (with --compile, else null), '
    '"model_only": {"fps", "fps_runs", "seconds_runs"}, '
    '"end_to_end": {"fps", "fps_runs", "seconds_runs", "open_seconds", "outputs"}, '
    '"stages_ms_per_frame": {stage: ms}, "memory": {"end_to_end"|"model_only": {"rss_start_bytes", '
    '"peak_rss_bytes", "gpu_start_bytes", "peak_gpu_bytes"}}, "growth": [{"frames", "frame_size", '
    '"memory_frames", "memory_bank_bytes", "fps", "memory": {...}}]}]}. Speeds are medians of --repeats runs after a warm-up.'
)


@app.command(epilog=BENCH_JSON_HELP)
def bench(
    model: Annotated[Optional[list[str]], typer.Option("--model", help=f"Model to measure; repeat for several. {MODEL_HELP}")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help=f"{COMPILE_HELP} The compile time is reported apart.")] = False,
    size: Annotated[int, typer.Option("--size", help="Internal short side; the synthetic clip is rendered at it (16:9).")] = 480,
    objects: Annotated[int, typer.Option("--objects", min=1, max=255, help="Objects in the first-frame mask.")] = 2,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Frames per run (default: 8 on CPU, 100 on a GPU).")] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", min=1, help="Timed runs per measurement (default: 3 on CPU, 5 on a GPU).")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", min=0, help="Frames of the untimed warm-up run (default: 3 on CPU, 10 on a GPU).")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", help="Measure on this video or frame folder instead of a synthetic clip (its first --frames frames).")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="With --input: its first frame's mask (PNG or RLE JSON), so the objects are the real ones; without it, --objects boxes on a grid (the memory-growth runs always use --objects).")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Checkpoint for the (one) model; without it, models that need one run on synthetic weights (speed only).")] = None,
    max_memory_frames: Annotated[Optional[int], typer.Option("--max-memory-frames", help="Cap on memory frames, as in segment.")] = None,
    growth_frames: Annotated[Optional[list[int]], typer.Option("--growth-frames", min=2, help="Video lengths for the memory-growth runs; repeat (default: 100 and 1000).")] = None,
    growth_size: Annotated[int, typer.Option("--growth-size", min=16, help="Short side of the memory-growth runs.")] = 64,
    no_growth: Annotated[bool, typer.Option("--no-growth", help="Skip the memory-growth runs.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (default: torch's choice, one per core).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """Model-only and end-to-end FPS, time per stage, peak memory and its growth with video length."""
    from .bench import DEFAULT_GROWTH_FRAMES, BenchSettings, run_bench

    settings = BenchSettings(
        models=tuple(model or [DEFAULT_MODEL]), device=device, precision=precision, compile=compile, size=size, objects=objects,
        frames=frames, repeats=repeats, warmup=warmup, input=str(input) if input else None,
        mask=str(mask) if mask else None, weights=str(weights) if weights else None, max_memory_frames=max_memory_frames,
        growth_frames=() if no_growth else tuple(growth_frames or DEFAULT_GROWTH_FRAMES), growth_size=growth_size,
        threads=threads,
    )
    with user_errors():
        if quiet:
            report = run_bench(settings)
        else:
            with err.status("bench") as status:
                report = run_bench(settings, log=lambda message: status.update(f"bench: {message}"))
    if as_json:
        print(json.dumps(report.to_dict()), flush=True)
    elif not quiet:
        err.print(_bench_table(report))


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def _bench_table(report) -> Table:
    from .engine.timing import STAGES

    machine = report.machine
    table = Table(title=f"vostool bench: {machine['device_name']} ({machine['device']}, "
                        f"{report.settings.precision})", title_justify="left")
    table.add_column("")
    for result in report.results:
        table.add_column(result.model, justify="right")
    results = report.results

    def row(label: str, values: list[str], style: str | None = None) -> None:
        table.add_row(label, *values, style=style)

    row("weights", [r.note or (r.weights_path or r.weights) for r in results])
    row("frames", [f"{r.frames} x {r.frame_size[1]}x{r.frame_size[0]} (net {r.input_size[1]}x{r.input_size[0]})" for r in results])
    row("model-only fps", [f"{r.model_only['fps']:.2f}" for r in results], style="bold")
    row("end-to-end fps", [f"{r.end_to_end['fps']:.2f}" for r in results], style="bold")
    row("load / open (s)", [f"{r.load_seconds:.2f} / {r.end_to_end['open_seconds']:.2f}" for r in results])
    if report.settings.compile:
        row("compile (s)", [f"{r.compile_seconds:.1f}" for r in results])
    seen = {stage for r in results for stage in r.stages_ms_per_frame}
    for stage in [s for s in STAGES if s in seen] + sorted(seen - set(STAGES)):
        row(f"  {stage} (ms/frame)", [f"{r.stages_ms_per_frame[stage]:.1f}" if stage in r.stages_ms_per_frame else "-" for r in results])
    row("peak RSS", [_mib(r.memory["end_to_end"]["peak_rss_bytes"]) for r in results])
    row("peak GPU memory", [_mib(r.memory["end_to_end"]["peak_gpu_bytes"]) for r in results])
    for index, length in enumerate(report.settings.growth_frames):
        row(f"{length} frames at {report.settings.growth_size}p", [
            f"RSS {_mib(g.memory.peak_rss_bytes)}, GPU {_mib(g.memory.peak_gpu_bytes)}; "
            f"memory {g.memory_frames} frames, {g.memory_bank_bytes / 2**20:.1f} MiB"
            for g in (r.growth[index] for r in results)
        ])
    table.caption = ("decode and write run in background threads beside the model; stage times are busy "
                     "time per frame (medians)")
    return table


@app.command()
def export(
    results: Annotated[Path, typer.Argument(help="Results folder (<seq>/<frame>.png, or one sequence's <frame>.png); with --from coco-rle, the JSON file.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="davis, mose, youtube-vos (submission zips), coco-rle (JSON) or overlay-mp4.")] = None,
    from_format: Annotated[Optional[str], typer.Option("--from", help="coco-rle: turn a vostool RLE JSON back into palette PNGs.")] = None,
    frames: Annotated[Optional[Path], typer.Option("--frames", help="overlay-mp4: the video or frame folder (several sequences: a folder of <seq>/ or <seq>.mp4).")] = None,
    frames_list: Annotated[Optional[Path], typer.Option("--frames-list", help="youtube-vos: meta.json or a 'video/frame' list; only those frames go into the zip.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file or folder (default: next to RESULTS).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a one-line JSON summary on stdout.")] = False,
) -> None:
    """Package palette-PNG results for a benchmark server, as COCO RLE or as overlay videos, and back."""
    from .export import FORMATS, IMPORT_FORMATS, export_results, import_rle

    with user_errors():
        if (format is None) == (from_format is None):
            raise VostoolError("give either --format FORMAT (export) or --from coco-rle (import)")
        if from_format is not None:
            if from_format not in IMPORT_FORMATS:
                raise VostoolError(f"--from {from_format}: choose one of {', '.join(IMPORT_FORMATS)}")
            summary = import_rle(results, out)
        else:
            if format not in FORMATS:
                raise VostoolError(f"--format {format}: choose one of {', '.join(FORMATS)}")
            with frame_progress(f"export {format}", quiet) as progress:
                summary = export_results(results, format, out, frames=frames, frames_list=frames_list, progress=progress)
    if as_json:
        print(json.dumps(summary.to_dict()), flush=True)
    if not quiet:
        skipped = f"; skipped (not listed): {', '.join(summary.skipped)}" if summary.skipped else ""
        err.print(f"{summary.format}: {summary.frames} frames of {summary.sequences} sequence(s) -> {summary.output}{skipped}",
                  highlight=False)


@app.command("batch")
def batch_command(
    source: Annotated[Path, typer.Argument(help="Dataset folder (DAVIS root; YouTube-VOS, MOSE or LVOS split folder) or a .csv/.jsonl manifest.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Results: one folder of palette PNGs per video (<out>/<video>/<frame>.png), kept between runs.")],
    layout: Annotated[str, typer.Option("--layout", help="auto, davis, youtube-vos, mose, lvos or manifest.")] = "auto",
    all_frames: Annotated[Optional[Path], typer.Option("--all-frames", help="YouTube-VOS/MOSE: the valid_all_frames folder; propagate over every frame, write the listed ones.")] = None,
    subset: Annotated[str, typer.Option("--set", help="DAVIS: image set (ImageSets/<year>/<set>.txt).")] = "val",
    year: Annotated[str, typer.Option("--year", help="DAVIS year.")] = "2017",
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = DEFAULT_MODEL,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Checkpoint file (overrides the registry's default).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps; with several ranks auto/cuda is each rank's LOCAL_RANK GPU.")] = "auto",
    size: Annotated[Optional[int], typer.Option("--size", help="Internal short side in pixels (default: the model's); -1 = native.")] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or bf16 (autocast).")] = "fp32",
    mem_every: Annotated[Optional[int], typer.Option("--mem-every", help="Write a frame to memory every N frames.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Memory positions read per query position.")] = None,
    max_memory_frames: Annotated[Optional[int], typer.Option("--max-memory-frames", help="Cap on memory frames.")] = None,
    offline: Annotated[bool, typer.Option("--offline", envvar="VOSTOOL_OFFLINE", help="Never download checkpoints.")] = False,
    allow_truncated: Annotated[bool, typer.Option("--allow-truncated", help="Segment what a truncated video still decodes.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Redo every video, complete or not.")] = False,
    export_format: Annotated[Optional[str], typer.Option("--export", help="At the end, write <out>-<format>.zip: davis, mose, youtube-vos (the listed frames) or coco-rle (<out>.json).")] = None,
    evaluate: Annotated[bool, typer.Option("--eval", help="DAVIS: print J&F against the ground truth at the end.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Local processes, started through torch's elastic launcher (as torchrun would).")] = 1,
    max_restarts: Annotated[int, typer.Option("--max-restarts", min=0, help="With --workers: restart the ranks this often after one dies (they resume).")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads per process (default: torch's, split between the local ranks).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON summary on stdout (rank 0).")] = False,
) -> None:
    """Segment a whole dataset or a folder of videos: resumable, and across GPUs and machines with torchrun."""
    with user_errors():
        from .batch import BatchOptions, run_batch

        run = RunSettings(size=size, mem_every=mem_every, top_k=top_k, max_memory_frames=max_memory_frames,
                          precision=precision, device=device)
        summary = run_batch(BatchOptions(
            source=source, out=out_dir, model=model, layout=layout, all_frames=all_frames, subset=subset, year=year,
            weights=weights, run=run, offline=offline, allow_truncated=allow_truncated, force=force,
            export=export_format, evaluate=evaluate, workers=workers, max_restarts=max_restarts, threads=threads,
            quiet=quiet,
        ))
    if summary.writer:
        if as_json:
            print(json.dumps(summary.to_dict()), flush=True)
        if not quiet:
            err.print(_batch_table(summary))
            if summary.report is not None:
                summary.report.render(err)
    if summary.failed:
        raise typer.Exit(1)


def _batch_table(summary) -> Table:
    table = Table(title="vostool batch", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("source", f"{summary.source} ({summary.layout})")
    table.add_row("model", f"{summary.model} on {summary.device}, {summary.ranks} rank(s)")
    table.add_row("videos", f"{summary.count('done')} done, {summary.count('skipped')} complete already, "
                            f"{summary.count('failed')} failed")
    table.add_row("time", f"{summary.seconds:.1f} s: {summary.frames_done} frames, {summary.fps:.2f} fps, "
                          f"{summary.videos_per_hour:.0f} videos/hour")
    table.add_row("results", summary.out)
    if summary.export:
        table.add_row("export", summary.export)
    for video in summary.failed:
        table.add_row("[red]failed[/]", escape(f"{video.name}: {video.error}"))
    for note in summary.notes:
        table.add_row("note", escape(note))
    return table


def main() -> None:
    install_signal_handlers()
    warnings.showwarning = _print_warning
    app(prog_name="vostool")


if __name__ == "__main__":
    main()
