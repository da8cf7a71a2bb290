"""DAVIS 2017 semi-supervised evaluation (J&F), number for number the official evaluator's.

Reference: davisvideochallenge/davis2017-evaluation at ac7c43f, ``--task semi-supervised``. Every
value agrees with it to within 1e-6 (in practice to the last bits) wherever it produces numbers;
``tests/test_eval.py`` checks this on the reference prediction sets of ``../shared``.

Input layout::

    DAVIS_ROOT/Annotations/480p/<seq>/<frame>.png    ground truth, every frame annotated
    DAVIS_ROOT/ImageSets/<year>/<subset>.txt         sequence names, one a line
    DAVIS_ROOT/JPEGImages/480p/<seq>/<frame>.jpg     optional here; when present its frame
                                                     count must equal the annotation count
    RESULTS/<seq>/<frame>.png                        predictions, same file stems as the
                                                     annotations, indexed (palette) or grey PNGs

Rules, as in the official tool:

- The first and the last frame of every sequence are not scored and not read, so their result
  files may be absent (and may hold anything).
- The object count K of a sequence is the highest id in its first annotation frame. Value 255
  (void) is background for every object; annotation ids above K in later frames are background.
- Prediction value k is object k. A prediction with fewer objects than K is fine: the missing
  objects are scored as empty masks (J = F = 1 where the ground truth is empty too, else 0).
- Means over objects, not sequences; J&F-Mean = (mean J-Mean + mean F-Mean) / 2.

Where the official tool aborts or is wrong, this module does better, explicitly:

- A predicted id above K in a scored frame: the official tool prints a message and stops with
  exit status 0 and no results. Here it is an :class:`~vostool.errors.InputError` naming the
  sequence, the frame, the id and K. (An extra id only in the unscored first/last frame is not
  read, so, exactly as officially, it changes nothing.)
- J-Decay / F-Decay for more than 256 evaluated frames: the official tool wraps its quarter limits
  around in ``uint8`` and reports a wrong value (often NaN). Here they are computed correctly.
- A missing result folder or scored frame, a frame whose size differs from the annotation, a
  colour PNG, a sequence with fewer than 3 frames, a first annotation frame without any object
  (e.g. a DAVIS 2016-style 0/255 mask, which the official tool silently scores as zero objects):
  :class:`~vostool.errors.InputError` naming the sequence and the file.
- No cache: nothing is read from, or written into, the results folder; every call evaluates
  the PNGs (the official script silently re-prints CSVs it finds there from an earlier run).

Speed: sequences are evaluated in parallel worker processes; inside a sequence, chunks of frames
are scored at once with vectorised numpy (boundary dilation is cropped to where the boundaries are).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vostool.errors import InputError
from vostool.eval.metrics import boundary_radius, frame_scores, summarise
from vostool.eval.report import EvalReport, ObjectResult

RESOLUTION = "480p"
VOID_LABEL = 255
# Frames scored together: large enough for numpy to amortise its per-call cost, small enough to
# keep a worker's memory flat for arbitrarily long sequences (~40 MB at 854x480).
CHUNK_FRAMES = 16
LABEL_MODES = ("P", "L", "1", "I", "I;16")

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SequenceJob:
    """Where one sequence's ground truth and predictions are."""

    name: str
    annotation_paths: tuple[Path, ...]
    result_dir: Path


def read_sequence_names(davis_root: Path, subset: str, year: str) -> list[str]:
    """Sequence names of ``ImageSets/<year>/<subset>.txt`` in file order (blank lines and repeats dropped)."""
    listing = davis_root / "ImageSets" / year / f"{subset}.txt"
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputError(f"cannot read the sequence list ({error.strerror or error})", listing) from error
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not names:
        raise InputError("the sequence list is empty", listing)
    return names


def _plan_sequence(davis_root: Path, results_dir: Path, name: str) -> SequenceJob:
    """Check that a sequence's folders exist and list its annotation frames."""
    annotation_dir = davis_root / "Annotations" / RESOLUTION / name
    if not annotation_dir.is_dir():
        raise InputError(f"ground-truth folder of sequence {name} not found", annotation_dir)
    annotation_paths = tuple(sorted(annotation_dir.glob("*.png")))
    if len(annotation_paths) < 3:
        raise InputError(
            f"sequence {name} has {len(annotation_paths)} annotated frames; semi-supervised scoring needs at least 3",
            annotation_dir,
        )
    image_dir = davis_root / "JPEGImages" / RESOLUTION / name
    if image_dir.is_dir():
        n_images = len(list(image_dir.glob("*.jpg")))
        if n_images != len(annotation_paths):
            raise InputError(
                f"sequence {name} has {n_images} frames but {len(annotation_paths)} annotation PNGs;"
                " semi-supervised scoring needs every frame annotated",
                annotation_dir,
            )
    result_dir = results_dir / name
    if not result_dir.is_dir():
        raise InputError(f"result folder of sequence {name} not found", result_dir)
    return SequenceJob(name=name, annotation_paths=annotation_paths, result_dir=result_dir)


def _read_labels(path: Path, sequence: str, role: str) -> np.ndarray:
    """One label map (H, W) from an indexed or grey PNG; ``role`` is 'result' or 'annotation'."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image) if mode in LABEL_MODES else None
    except FileNotFoundError as error:
        raise InputError(f"{role} frame {path.stem} of sequence {sequence} is missing", path) from error
    except OSError as error:
        raise InputError(f"{role} frame {path.stem} of sequence {sequence} is not a readable PNG", path) from error
    if labels is None or labels.ndim != 2:
        raise InputError(
            f"{role} frame {path.stem} of sequence {sequence} is a {mode} image, not an indexed (palette) PNG", path
        )
    return labels


def _object_count(path: Path, sequence: str) -> tuple[int, tuple[int, int]]:
    """K (highest id of the first annotation frame, void excluded) and the frame size."""
    first = _read_labels(path, sequence, "annotation")
    ids = first[first != VOID_LABEL]
    n_objects = int(ids.max()) if ids.size else 0
    if n_objects < 1:
        raise InputError(f"first annotation frame of sequence {sequence} has no object (ids 1..K expected)", path)
    return n_objects, first.shape


def _read_chunk(
    job: SequenceJob, annotation_paths: list[Path], shape: tuple[int, int], n_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction stacks (T, H, W) of some scored frames, validated."""
    annotations, predictions = [], []
    for annotation_path in annotation_paths:
        annotation = _read_labels(annotation_path, job.name, "annotation")
        if annotation.shape != shape:
            raise InputError(
                f"annotation frame {annotation_path.stem} of sequence {job.name} is"
                f" {annotation.shape[1]}x{annotation.shape[0]}, the first frame {shape[1]}x{shape[0]}",
                annotation_path,
            )
        result_path = job.result_dir / f"{annotation_path.stem}.png"
        prediction = _read_labels(result_path, job.name, "result")
        if prediction.shape != shape:
            raise InputError(
                f"result frame {result_path.stem} of sequence {job.name} is"
                f" {prediction.shape[1]}x{prediction.shape[0]}, the annotation {shape[1]}x{shape[0]}",
                result_path,
            )
        highest = int(prediction.max())
        if highest > n_objects:
            raise InputError(
                f"result frame {result_path.stem} of sequence {job.name} holds object id {highest} but the"
                f" ground truth has {n_objects} object(s) (ids above the first annotation frame's are not allowed)",
                result_path,
            )
        annotations.append(annotation)
        predictions.append(prediction)
    return np.stack(annotations), np.stack(predictions)


def evaluate_sequence(job: SequenceJob) -> list[ObjectResult]:
    """Score every object of one sequence over its frames 1..N-2."""
    n_objects, shape = _object_count(job.annotation_paths[0], job.name)
    radius = boundary_radius(*shape)
    scored = list(job.annotation_paths[1:-1])
    j_scores = np.empty((n_objects, len(scored)))
    f_scores = np.empty((n_objects, len(scored)))
    for start in range(0, len(scored), CHUNK_FRAMES):
        stop = min(start + CHUNK_FRAMES, len(scored))
        annotations, predictions = _read_chunk(job, scored[start:stop], shape, n_objects)
        for index in range(n_objects):
            j, f = frame_scores(annotations == index + 1, predictions == index + 1, radius)
            j_scores[index, start:stop], f_scores[index, start:stop] = j, f
    results = []
    for index in range(n_objects):
        j, f = summarise(j_scores[index]), summarise(f_scores[index])
        results.append(
            ObjectResult(
                sequence=job.name,
                object_id=index + 1,
                j_mean=j.mean,
                j_recall=j.recall,
                j_decay=j.decay,
                f_mean=f.mean,
                f_recall=f.recall,
                f_decay=f.decay,
                n_frames=len(scored),
            )
        )
    return results


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the platform tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _process_context() -> multiprocessing.context.BaseContext:
    # Linux: fork. A worker only decodes PNGs with Pillow and runs numpy ufuncs; it takes no lock
    # that the caller's other threads (rich's refresh thread, torch's or OpenBLAS's pools) could
    # hold at fork time, and fork() spares every worker (or a forkserver) re-importing vostool,
    # torch and the caller's main module, which costs seconds. Elsewhere fork is unsafe or absent.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _run_in_process(
    jobs: list[SequenceJob], results: list[list[ObjectResult] | None], progress: ProgressCallback | None
) -> None:
    """Evaluate, in this process, every job whose result slot is still empty."""
    done = sum(result is not None for result in results)
    for index, job in enumerate(jobs):
        if results[index] is None:
            results[index] = evaluate_sequence(job)
            done += 1
            if progress is not None:
                progress(done, len(jobs))


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (it stops the pool and says so once), and a
    SIGTERM/SIGHUP handler inherited through fork must not make a worker unwind like the CLI does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


@contextlib.contextmanager
def _interrupts_held_off() -> Iterator[None]:
    """Defer Ctrl-C in this process while workers are forked, so that no child starts with Python's
    KeyboardInterrupt handler (the initializer runs only after the fork); an interrupt that arrives in
    that window is raised when it closes. Main thread only (signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued sequences and end running workers now instead of waiting for their sequences."""
    # ProcessPoolExecutor has no public way to end busy workers before Python 3.14 (terminate_workers);
    # its process table is the one handle there is.
    # SIGKILL, not SIGTERM: a worker forked a moment ago may not have run its initializer yet and would
    # still carry the CLI's SIGTERM handler (a traceback on stderr); workers hold nothing to clean up.
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _run_in_pool(
    jobs: list[SequenceJob], results: list[list[ObjectResult] | None], workers: int, progress: ProgressCallback | None
) -> None:
    """Evaluate the jobs in worker processes; falls back to this process if the pool breaks."""
    # Longest sequences first, so that no long one starts last and keeps the others waiting.
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i].annotation_paths), reverse=True)
    done = 0
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=_process_context(), initializer=_ignore_interrupts
        ) as pool, warnings.catch_warnings():
            # Python >= 3.12 warns about any fork() of a multi-threaded process; see _process_context.
            warnings.filterwarnings(
                "ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning
            )
            try:
                with _interrupts_held_off():
                    futures = {pool.submit(evaluate_sequence, jobs[i]): i for i in order}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    done += 1
                    if progress is not None:
                        progress(done, len(jobs))
            except BaseException:
                _stop_workers(pool)
                raise
    except BrokenProcessPool as error:
        # A worker died (killed, or could not start): the numbers do not depend on where they
        # are computed, so finish here rather than fail.
        warnings.warn(f"evaluation worker processes failed ({error}); continuing in this process", stacklevel=3)
        _run_in_process(jobs, results, progress)


def evaluate_davis(
    davis_root: str | Path,
    results_dir: str | Path,
    *,
    subset: str = "val",
    year: str = "2017",
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> EvalReport:
    """Evaluate the predictions in ``results_dir`` against the DAVIS ground truth of ``davis_root``.

    ``workers``: processes to use; None = min(available CPUs, number of sequences), 1 = in this
    process. Workers are forked on Linux; elsewhere they are spawned, so a script calling this
    with more than one worker there needs the usual ``if __name__ == "__main__":`` guard.
    ``progress(done, total)`` is called with 0 first and then after each sequence.
    Raises :class:`~vostool.errors.InputError` for any problem with the inputs (see module docs).
    """
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    if not (davis_root / "Annotations" / RESOLUTION).is_dir():
        raise InputError(f"not a DAVIS folder: Annotations/{RESOLUTION} is missing", davis_root)
    if not results_dir.is_dir():
        raise InputError("results folder not found", results_dir)
    names = read_sequence_names(davis_root, subset, str(year))
    jobs = [_plan_sequence(davis_root, results_dir, name) for name in names]
    if workers is None:
        workers = min(available_cpus(), len(jobs))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if progress is not None:
        progress(0, len(jobs))
    per_sequence: list[list[ObjectResult] | None] = [None] * len(jobs)
    if workers == 1 or len(jobs) == 1:
        _run_in_process(jobs, per_sequence, progress)
    else:
        _run_in_pool(jobs, per_sequence, min(workers, len(jobs)), progress)
    per_object = [result for sequence_results in per_sequence for result in sequence_results or ()]
    return EvalReport.from_objects(per_object, names)
