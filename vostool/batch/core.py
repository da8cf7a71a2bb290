"""``vostool batch``: a whole dataset or a folder of videos, resumable, on one process or many ranks.

:func:`run_batch` checks everything it can before any model work (settings, layout, every video's
folders, ``--out``), then, on each rank: rank 0 finds the videos complete already (their markers match
this run's model, settings and weights) and shards the rest greedily by frame count, longest first;
every rank loads the network once and segments its share (:mod:`vostool.batch.runner`); the ranks'
outcomes are gathered, and rank 0 writes ``<out>/batch-summary.json`` and, when every video is done,
the submission zip (``export``) and the J&F (``evaluate``, DAVIS).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vostool import __version__
from vostool.batch import plan
from vostool.batch.distributed import World, broadcast, gather, launch_workers, process_group, rank_device
from vostool.batch.layouts import Dataset, discover
from vostool.batch.runner import VideoOutcome, run_share
from vostool.errors import VostoolError
from vostool.settings import RunSettings

EXPORT_FORMATS = ("davis", "mose", "youtube-vos", "coco-rle")
SUMMARY_SCHEMA = "vostool-batch-v1"


class BatchError(VostoolError):
    """A rank of ``--workers`` died (the videos it had finished are kept): exit 1, like a failed video."""

    exit_code = 1


@dataclass(frozen=True)
class BatchOptions:
    """Everything ``vostool batch`` is given (picklable: ``--workers`` hands it to every rank)."""

    source: Path
    out: Path
    model: str | None = None
    layout: str = "auto"
    all_frames: Path | None = None
    subset: str = "val"
    year: str = "2017"
    weights: Path | None = None
    run: RunSettings = field(default_factory=RunSettings)
    offline: bool = False
    allow_truncated: bool = False
    force: bool = False
    export: str | None = None
    evaluate: bool = False
    workers: int = 1
    max_restarts: int = 0
    threads: int | None = None
    quiet: bool = False


@dataclass
class BatchSummary:
    """What a batch did, gathered from every rank; ``to_dict()`` is ``--json`` and ``batch-summary.json``."""

    layout: str
    source: str
    out: str
    model: str
    device: str
    settings: dict
    weights_sha256: str | None
    ranks: int
    videos: list[VideoOutcome]
    seconds: float
    load_seconds: float
    export: str | None = None
    notes: list[str] = field(default_factory=list)
    scores: dict | None = None
    report: Any = None  # the EvalReport behind ``scores`` (not serialised)
    writer: bool = True  # this process is rank 0, which prints and writes for the run

    def count(self, status: str) -> int:
        return sum(video.status == status for video in self.videos)

    @property
    def failed(self) -> list[VideoOutcome]:
        return [video for video in self.videos if video.status == "failed"]

    @property
    def frames_done(self) -> int:
        return sum(video.frames for video in self.videos if video.status == "done")

    @property
    def fps(self) -> float:
        return self.frames_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def videos_per_hour(self) -> float:
        return self.count("done") * 3600 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "schema": SUMMARY_SCHEMA, "vostool": __version__, "layout": self.layout, "source": self.source,
            "out": self.out, "model": self.model, "device": self.device, "settings": self.settings,
            "weights_sha256": self.weights_sha256, "ranks": self.ranks,
            "counts": {status: self.count(status) for status in ("done", "skipped", "failed")},
            "frames": self.frames_done, "seconds": round(self.seconds, 3), "load_seconds": round(self.load_seconds, 3),
            "fps": round(self.fps, 3), "videos_per_hour": round(self.videos_per_hour, 1),
            "failed": [video.name for video in self.failed], "export": self.export, "scores": self.scores,
            "notes": self.notes, "videos": [video.to_dict() for video in self.videos],
        }


@dataclass
class _Checked:
    dataset: Dataset
    settings: Any  # the merged ModelSettings
    model: str


def run_batch(options: BatchOptions) -> BatchSummary:
    """Run ``options`` in this process, as one rank of a torchrun job, or over ``options.workers`` local
    ranks; returns the summary (``writer`` is False on ranks other than 0). Raises VostoolError for bad
    input before any model work."""
    world = World.from_env()
    checked = check(options)
    if options.workers > 1 and world.size == 1:
        from vostool.weights import resolve_weights

        resolve_weights(checked.model, options.weights, offline=options.offline)  # download once, not per rank
        return _launch(options)
    return _run_rank(options, checked, world)


def check(options: BatchOptions) -> _Checked:
    """Every check that needs no model: settings, options, the dataset's layout and files, ``--out``."""
    from vostool.io.guard import refuse_overwriting_inputs
    from vostool.models.registry import DEFAULT_MODEL, get_spec

    model = options.model or DEFAULT_MODEL
    settings = get_spec(model).settings_for(options.run)
    if options.workers < 1:
        raise VostoolError(f"--workers {options.workers}: must be at least 1")
    if options.export is not None and options.export not in EXPORT_FORMATS:
        raise VostoolError(f"--export {options.export}: choose one of {', '.join(EXPORT_FORMATS)}")
    dataset = discover(options.source, options.layout, all_frames=options.all_frames, subset=options.subset,
                       year=options.year)
    if options.evaluate and dataset.davis is None:
        raise VostoolError(f"--eval scores DAVIS folders (with ground truth); this is a {dataset.layout} source")
    refuse_overwriting_inputs({"SOURCE": options.source, "--all-frames": options.all_frames}, {},
                              ("--out", options.out))
    plan.check_out_folder(Path(options.out))
    return _Checked(dataset, settings, model)


def _launch(options: BatchOptions) -> BatchSummary:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        results = launch_workers(_worker, (options,), options.workers, options.max_restarts)
    except ChildFailedError as err:
        rank, failure = next(iter(sorted(err.failures.items())))
        raise BatchError(
            f"worker rank {rank} failed (exit code {failure.exitcode}); finished videos are kept, "
            "run the same command again to resume"
        ) from None
    return results[0]


def _worker(options: BatchOptions) -> BatchSummary | None:
    """A ``--workers`` rank (started by the elastic agent, in a new process)."""
    summary = _run_rank(options, check(options), World.from_env())
    return summary if summary.writer else None


def _run_rank(options: BatchOptions, checked: _Checked, world: World) -> BatchSummary:
    import torch

    from vostool.tracker import build_tracker

    out, dataset = Path(options.out), checked.dataset
    device = rank_device(options.run.device, world)
    if options.threads is not None or world.local_size > 1:
        torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    with process_group(world, device):
        weights = _resolve_weights_in_turn(checked.model, options, world)
        key = plan.run_key(checked.model, checked.settings, _sha256(weights))
        work = broadcast(_plan(dataset, out, key, options.force, world) if world.is_writer else None, world)
        if world.local_rank == 0:
            from vostool.io.staging import remove_stale_temps

            remove_stale_temps(out)  # staging folders of this host's dead runs (a killed rank)
        share = [dataset.jobs[index] for index in work["shares"][world.rank]]
        start = time.perf_counter()
        # Nothing to do on this rank (every video complete already): no network to load.
        tracker = build_tracker(checked.model, checked.settings, device, weights, offline=options.offline) if share else None
        load_seconds = time.perf_counter() - start
        reporter = _reporter(options, world, len(share), sum(work["weights"][i] for i in work["shares"][world.rank]),
                             len(work["skipped"]))
        try:
            outcomes = run_share(share, tracker, out, key, rank=world.rank, allow_truncated=options.allow_truncated,
                                 reporter=reporter, tags={"rank": world.rank, "attempt": world.restart})
        finally:
            if reporter is not None:
                reporter.close()
        ran = [outcome for outcomes_of_rank in gather(outcomes, world) for outcome in outcomes_of_rank]
    seconds = time.perf_counter() - start
    by_name = {outcome.name: outcome for outcome in ran}
    for index, frames in work["skipped"].items():
        by_name[dataset.jobs[index].name] = VideoOutcome(dataset.jobs[index].name, "skipped", frames)
    summary = BatchSummary(
        layout=dataset.layout, source=str(options.source), out=str(out), model=checked.model,
        device=str(tracker.device) if tracker is not None else device, settings=key["settings"], weights_sha256=key["weights_sha256"],
        ranks=world.size, videos=[by_name[job.name] for job in dataset.jobs], seconds=seconds,
        load_seconds=load_seconds, notes=list(dataset.notes), writer=world.is_writer,
    )
    if world.is_writer:
        _finish(summary, options, dataset)
    return summary


def _plan(dataset: Dataset, out: Path, key: dict, force: bool, world: World) -> dict:
    """Rank 0's plan for every rank: the videos complete already, and each rank's share of the rest."""
    skipped = {} if force else plan.completed(dataset.jobs, out, key)
    todo = [index for index in range(len(dataset.jobs)) if index not in skipped]
    weights = {index: plan.estimated_frames(dataset.jobs[index]) for index in todo}
    shares = plan.shard([weights[index] for index in todo], world.size)
    return {"skipped": skipped, "weights": weights, "shares": [[todo[i] for i in share] for share in shares]}


def _resolve_weights_in_turn(model: str, options: BatchOptions, world: World) -> Path | None:
    """The weights file; the first rank of each machine fetches it while the others wait (one download)."""
    from vostool.weights import resolve_weights

    def resolve() -> Path | None:
        return resolve_weights(model, options.weights, offline=options.offline, progress=world.is_writer)

    if world.size == 1:
        return resolve()
    import torch.distributed as dist

    path = resolve() if world.local_rank == 0 else None
    dist.barrier()
    return path if world.local_rank == 0 else resolve()


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    from vostool.weights import read_recorded_sha256, sha256_file

    return read_recorded_sha256(path) or sha256_file(path)


def _reporter(options: BatchOptions, world: World, videos: int, frames: int, skipped: int):
    if options.quiet or not videos:
        return None
    from vostool.batch.progress import LineReporter, RichReporter

    if world.size == 1:
        return RichReporter(videos, frames, skipped)
    return LineReporter(world.rank, videos, frames)


def _finish(summary: BatchSummary, options: BatchOptions, dataset: Dataset) -> None:
    """Rank 0: the zip and the scores when every video is done, then the summary file."""
    out = Path(options.out)
    problem: VostoolError | None = None
    try:
        if summary.failed and (options.export or options.evaluate):
            summary.notes.append(f"export and evaluation skipped: {len(summary.failed)} video(s) failed")
        elif options.export:
            from vostool.export import export_results

            frames_list = dataset.frames_list if options.export == "youtube-vos" else None
            summary.export = export_results(out, options.export, frames_list=frames_list).output
        if options.evaluate and not summary.failed:
            from vostool.eval import evaluate_davis

            root, subset, year = dataset.davis
            summary.report = evaluate_davis(root, out, subset=subset, year=year)
            summary.scores = summary.report.to_json()
    except VostoolError as err:  # the videos are done: record them before reporting what went wrong
        summary.notes.append(f"export/evaluation failed: {err}")
        problem = err
    _write_summary(out / plan.SUMMARY_FILE, summary.to_dict())
    if problem is not None:
        raise problem


def _write_summary(path: Path, data: dict) -> None:
    from vostool.io.writers import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
