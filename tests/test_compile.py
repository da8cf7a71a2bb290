"""--compile: torch.compile (inductor on the CPU) gives eager's labels, and compiles once per resolution.

Compiling is slow on the CPU (tens of seconds), so one test compiles for real, with the smallest model
at a tiny size; the recompile accounting of a model with per-object encoders and decoders (STCN) runs
through dynamo's guards with the ``eager`` backend, which traces exactly as inductor does but generates
no code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import vostool
from tests.conftest import settings_for
from tests.helpers import gradient_frames
from vostool.engine.compile import compile_counters, compile_network, compiled_units
from vostool.settings import RunSettings, SettingsError

HEIGHT, WIDTH = 48, 64


def _masks() -> dict[int, np.ndarray]:
    """Two objects on frame 0 and a third one added on frame 2."""
    first = np.zeros((HEIGHT, WIDTH), np.uint8)
    first[8:24, 8:30] = 1
    first[20:40, 34:60] = 2
    later = np.zeros_like(first)
    later[30:46, 2:20] = 3
    return {0: first, 2: later}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()  # compiled code of this test does not stay attached to later ones


def _track(tracker, frames, masks) -> tuple[list[np.ndarray], list[dict[str, int]]]:
    """Labels of every frame, and dynamo's counters after each."""
    labels, seen = [], []
    for result in tracker.session(num_frames=len(frames)).track(frames, masks):
        labels.append(result.labels)
        seen.append(compile_counters())
    return labels, seen


def test_compiled_default_model_gives_eager_labels_and_compiles_once(fresh_dynamo) -> None:
    frames = gradient_frames(5, HEIGHT, WIDTH)
    eager, _ = _track(vostool.load("propagate-lite0", device="cpu", size=64), frames, _masks())
    compiled = vostool.load("propagate-lite0", device="cpu", size=64, compile=True)
    assert compiled.settings.compile
    labels, seen = _track(compiled, frames, _masks())
    assert all(np.array_equal(a, b) for a, b in zip(eager, labels))
    # Its one compiled unit (the Lite0 key encoder) is traced on frame 0 and never again: not for the
    # memory writes of every frame nor for the object added on frame 2 (the readout stays eager).
    assert seen == [{"graphs": 1, "traced": 1}] * len(frames)
    # Another video at the same resolution reuses the graph.
    _, again = _track(compiled, frames[:2], {0: _masks()[0]})
    assert again[-1] == {"graphs": 1, "traced": 1}


def test_stcn_recompiles_only_when_the_object_batch_changes(fresh_dynamo) -> None:
    from vostool.models.stcn.adapter import build as build_stcn

    # A memory frame on every frame: the (eager) readout grows, the compiled units never see it.
    network = build_stcn(None, "cpu", settings_for("stcn", short_side=None, memory=settings_for("stcn").memory
                                                    .with_overrides(1, None)))
    units = compile_network(network, backend="eager")
    assert units == ("key_encoder", "value_encoder", "key_proj", "decoder")  # key_comp is a plain Conv2d
    tracker = vostool.Tracker(network, "stcn", torch.device("cpu"))
    _, seen = _track(tracker, gradient_frames(6, HEIGHT, WIDTH), _masks())
    traced = [s["traced"] for s in seen]
    # frame 0: key encoder, key projection and the value encoder (2 objects); frame 1: only the decoder,
    # although memory grew. Frame 2 adds object 3: the value encoder's batch changes (compiled again, the
    # object axis now dynamic), and from frame 3 the new object, in fewer memory frames than the others,
    # is decoded in a group of its own (batch 1, a size dynamo always specialises). Then nothing more.
    assert traced[:2] == [3, 4]
    assert traced[-3] == traced[-2] == traced[-1] <= len(units) + 2


def test_lite0_stcn_decoder_is_traced_once_although_its_crops_change(fresh_dynamo) -> None:
    from vostool.models.lite0_stcn.adapter import build as build_lite0_stcn

    frames = gradient_frames(6, HEIGHT, WIDTH)
    eager, _ = _track(vostool.Tracker(build_lite0_stcn(None, "cpu"), "lite0-stcn", torch.device("cpu")), frames,
                      {0: _masks()[0]})
    network = build_lite0_stcn(None, "cpu")
    units = compile_network(network, backend="eager")
    assert units == ("backbone", "heads.key", "heads.value", "heads.decoder")
    labels, seen = _track(vostool.Tracker(network, "lite0-stcn", torch.device("cpu")), frames, {0: _masks()[0]})
    # Eager, the decoder works on each object's own crop, whose size changes from frame to frame (and
    # choosing it breaks a graph); compiled, it decodes the whole frame: each unit is one graph, traced once
    # (the decoder on frame 1, the first one decoded), and no later frame traces anything.
    assert seen[1:] == [{"graphs": len(units), "traced": len(units)}] * (len(frames) - 1)
    assert all(np.array_equal(a, b) for a, b in zip(eager, labels))


def test_units_are_the_outermost_modules_with_a_forward() -> None:
    from vostool.models.jointformer.network import JointFormerNet
    from vostool.models.propagate_lite0.network import PropagateLite0Net

    assert [name for name, _ in compiled_units(PropagateLite0Net())] == ["<network>"]
    with torch.device("meta"):
        names = [name for name, _ in compiled_units(JointFormerNet())]
    assert "decoder" in names and "convmae.patch_embed1_query" in names and "convmae.blocks3.0" in names
    assert "convmae" not in names and "convmae.blocks3" not in names  # no forward of their own


def test_compile_is_a_validated_setting() -> None:
    assert RunSettings(compile=True).compile
    with pytest.raises(SettingsError, match=r"compile='yes': must be True or False"):
        RunSettings(compile="yes")
    with pytest.raises(SettingsError, match="compile=1"):
        vostool.load("propagate-lite0", device="cpu", compile=1)


@pytest.mark.parametrize("command", ["segment", "eval", "bench"])
def test_compile_and_tf32_are_in_the_help(command) -> None:
    from typer.testing import CliRunner

    from vostool.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--compile" in result.output and "tf32" in result.output


def test_bench_reports_the_compile_time(monkeypatch, fresh_dynamo) -> None:
    import vostool.bench as bench

    # The wiring, through dynamo's eager backend (inductor's own time is the real test's above).
    monkeypatch.setattr(bench, "compile_network", lambda network: compile_network(network, backend="eager"))
    settings = bench.BenchSettings(models=("propagate-lite0",), device="cpu", size=64, objects=2, frames=3,
                                   repeats=1, warmup=0, growth_frames=(), compile=True)  # one graph
    report = bench.run_bench(settings)
    result = report.results[0]
    assert result.compile_seconds is not None and result.compile_seconds >= 0
    assert report.to_dict()["results"][0]["compile_seconds"] == result.compile_seconds
    assert report.to_dict()["settings"]["compile"] is True
    assert compile_counters()["graphs"] == 1
    from rich.console import Console

    from vostool.cli import _bench_table

    console = Console(width=200, record=True)
    console.print(_bench_table(report))
    assert "compile (s)" in console.export_text()
