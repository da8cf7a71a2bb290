"""The GPU check of the throughput issue, in one go: CUDA tests, then `vostool bench` for every model.

Usage (from the repository root, on a machine with a GPU):

    python scripts/gpu_check.py                         # writes docs/gpu-check.json and the GPU table in docs/benchmarks.md
    python scripts/gpu_check.py --device cpu --frames 4 --models stcn propagate-lite0   # dry run on CPU, prints only

It runs, in this order, and stops adding work once ``--budget`` seconds are spent (what was measured is kept):

1. the CUDA-marked tests (``pytest -m cuda``);
2. ``vostool bench`` (the library's ``run_bench``) for every model at ``--size`` (480) with 1 and 3 objects, in
   fp32 and bf16, model-only and end to end (models without released weights run on synthetic weights of the
   checkpoint's exact layout: speed only);
3. the memory figures at 1,000 and 10,000 frames with ``--max-memory-frames`` (STCN, small frames).

One JSON file (every bench report, as ``vostool bench --json`` writes it) and one markdown table come out.
With ``--device cuda`` (the default) the table replaces the part of docs/benchmarks.md between the
``gpu-check`` markers; any other device only prints it, so a dry run never overwrites GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
PRECISIONS = ("fp32", "bf16")
OBJECTS = (1, 3)


def parse_args() -> argparse.Namespace:
    from vostool.models.registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--frames", type=int, default=40, help="frames per bench run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--growth", type=int, nargs=2, default=(1000, 10000), metavar=("SHORT", "LONG"))
    parser.add_argument("--growth-memory-frames", type=int, default=5, help="--max-memory-frames of the growth runs")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds after which no new run starts")
    parser.add_argument("--skip-tests", action="store_true")
    return parser.parse_args()


def run_cuda_tests() -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    tail = [line for line in done.stdout.splitlines() if line.strip()][-1:] or [done.stderr.strip()[-200:]]
    return {"returncode": done.returncode, "summary": tail[0], "seconds": round(time.perf_counter() - start, 1)}


def bench_all(args: argparse.Namespace, deadline: float, log) -> tuple[list[dict], list[str]]:
    from vostool.bench import BenchSettings, run_bench

    reports, skipped = [], []
    base = BenchSettings(device=args.device, size=args.size, frames=args.frames, repeats=args.repeats,
                         warmup=args.warmup, growth_frames=())
    for model in args.models:
        for precision in PRECISIONS:
            for objects in OBJECTS:
                label = f"{model} {precision} {objects} object(s)"
                if time.monotonic() > deadline:
                    skipped.append(label)
                    continue
                log(f"bench {label}")
                settings = replace(base, models=(model,), precision=precision, objects=objects)
                reports.append(run_bench(settings).to_dict())
    return reports, skipped


def bench_growth(args: argparse.Namespace, deadline: float, log) -> dict | None:
    from vostool.bench import BenchSettings, run_bench

    if time.monotonic() > deadline:
        return None
    log(f"memory growth: stcn, {args.growth[0]} vs {args.growth[1]} frames")
    settings = BenchSettings(models=("stcn",), device=args.device, size=64, frames=2, repeats=1, warmup=0,
                             max_memory_frames=args.growth_memory_frames, growth_frames=tuple(args.growth),
                             growth_size=64)
    return run_bench(settings).to_dict()


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"Measured by `python scripts/gpu_check.py` on {machine.get('device_name')} ({results['device']}), torch "
        f"{machine.get('torch')}, vostool {results['commit']}, 1-minute load average {machine.get('load_average_1min')}.",
        f"CUDA tests: {results['cuda_tests']['summary'] if results.get('cuda_tests') else 'not run'}.",
        "",
        "| model | precision | objects | weights | model-only fps | end-to-end fps | e2e / model-only | peak GPU memory |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for report in results["bench"]:
        settings = report["settings"]
        for r in report["results"]:
            model_only, e2e = r["model_only"]["fps"], r["end_to_end"]["fps"]
            peak = r["memory"]["end_to_end"]["peak_gpu_bytes"]
            lines.append(
                f"| {r['model']} | {settings['precision']} | {settings['objects']} | {r['weights']} | "
                f"{model_only:.2f} | {e2e:.2f} | {e2e / model_only:.2f} | "
                f"{'-' if peak is None else f'{peak / 2**20:,.0f} MiB'} |"
            )
    growth = results.get("growth")
    if growth:
        points = growth["results"][0]["growth"]
        peaks = [p["memory"]["peak_gpu_bytes"] or p["memory"]["peak_rss_bytes"] for p in points]
        lines += ["", f"Memory growth (stcn, --max-memory-frames {growth['settings']['max_memory_frames']}, "
                      f"{points[0]['frame_size'][1]}x{points[0]['frame_size'][0]} frames):", ""]
        lines += [f"- {p['frames']} frames: {p['memory_frames']} memory frames, bank {p['memory_bank_bytes'] / 2**20:.1f} MiB, "
                  f"peak {peak / 2**20:,.0f} MiB" for p, peak in zip(points, peaks)]
        lines.append(f"- peak at {points[-1]['frames']} / peak at {points[0]['frames']}: {peaks[-1] / peaks[0]:.3f}")
    if results["skipped"]:
        lines += ["", f"Not run (time budget spent): {', '.join(results['skipped'])}."]
    return "\n".join(lines) + "\n"


def write_docs(results: dict, table: str) -> None:
    (DOCS / "gpu-check.json").write_text(json.dumps(results, indent=1) + "\n")
    text = (DOCS / "benchmarks.md").read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + table + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{table}{END}\n"
    (DOCS / "benchmarks.md").write_text(text)


def main() -> None:
    args = parse_args()
    deadline = time.monotonic() + args.budget

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    cuda_tests = None if args.skip_tests else run_cuda_tests()
    if cuda_tests is not None:
        log(f"CUDA tests: {cuda_tests['summary']}")
    reports, skipped = bench_all(args, deadline, log)
    growth = bench_growth(args, deadline, log)
    machine = reports[0]["machine"] if reports else {}
    results = {"schema": "vostool-gpu-check-v1", "commit": commit, "device": args.device, "machine": machine,
               "cuda_tests": cuda_tests, "bench": reports, "growth": growth,
               "skipped": skipped + ([] if growth else ["memory growth"])}
    table = markdown(results)
    print(table)
    if args.device.startswith("cuda"):
        write_docs(results, table)
        log("wrote docs/gpu-check.json and the GPU table in docs/benchmarks.md")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
