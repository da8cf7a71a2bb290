"""STCN parity against the official code's vectors (shared/spec/stcn), loading and checkpoint errors.

The network is loaded with the synthetic weights the vectors were produced with; tolerances are the
ones suggested in shared/spec/stcn/README.md.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.conftest import SPEC, parity_fixtures, require, settings_for
from vostool.engine.aggregate import aggregate
from vostool.engine.memory import EveryNthFrame
from vostool.engine.protocol import MemoryEntry, MemoryView, ObjectStates, VOSNetwork
from vostool.engine.readout import l2_affinity, topk_softmax
from vostool.errors import ModelError
from vostool.models.checkpoint import check_layout, expected_layout, load_checkpoint
from vostool.models.common import fold_batchnorms
from vostool.models.layers import others_masks
from vostool.models.stcn.adapter import STCNAdapter, STCNQuery, load_stcn_state
from vostool.models.stcn.adapter import build as build_stcn
from vostool.models.stcn.network import STCNNet

STCN_SPEC = SPEC / "stcn"


def _case(name: str) -> dict[str, torch.Tensor]:
    with np.load(require(STCN_SPEC / f"{name}.npz")) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


manifest, synth_state, synth_file = parity_fixtures("stcn")


@pytest.fixture(scope="module")
def net(synth_state) -> STCNNet:
    model = STCNNet()
    load_stcn_state(model, synth_state, "synthetic")
    return model.eval()


@pytest.fixture(scope="module")
def adapter(net) -> STCNAdapter:
    return STCNAdapter(net, "cpu")


# ------------------------------------------------------------------------------------ layout


def test_module_layout_equals_the_checkpoint_layout(manifest) -> None:
    layout = {name: tuple(entry["shape"]) for name, entry in manifest["checkpoint_layout"].items()}
    model = STCNNet()
    assert expected_layout(model) == layout
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    for module, count in manifest["num_parameters_per_module"].items():
        assert sum(p.numel() for p in getattr(model, module).parameters()) == count, module


def test_stage0_checkpoint_gets_a_zero_others_channel(synth_state, tmp_path) -> None:
    state = dict(synth_state)
    four = state["value_encoder.conv1.weight"][:, :4].clone()
    state["value_encoder.conv1.weight"] = four
    path = tmp_path / "stcn_s0.pth"
    torch.save(state, path)
    network = build_stcn(path, "cpu")
    # The built network has its BatchNorms folded: compare with the full checkpoint, zero channel
    # added by hand, folded the same way.
    padded = dict(synth_state, **{"value_encoder.conv1.weight": torch.cat([four, torch.zeros_like(four[:, :1])], 1)})
    expected = STCNNet()
    expected.load_state_dict(padded)
    fold_batchnorms(expected.eval())
    loaded = network.net.value_encoder.conv1.weight
    assert loaded.shape == (64, 5, 7, 7)
    assert torch.equal(loaded, expected.value_encoder.conv1.weight)
    assert torch.count_nonzero(loaded[:, 4]) == 0


# ------------------------------------------------------------------------------------ parity


def test_encode_key_matches_official(net) -> None:
    case = _case("case_encode_key")
    with torch.no_grad():
        outputs = net.encode_key(case["frame"])
    for name, actual in zip(("k16", "f16_thin", "f16", "f8", "f4"), outputs):
        _close(actual, case[name], atol=1e-4, rtol=1e-4)


def test_encode_value_matches_official(net) -> None:
    case = _case("case_encode_value")
    _close(others_masks(case["masks"]), case["others"], atol=0.0)
    with torch.no_grad():
        value = net.encode_value(case["frame"], case["kf16"], case["masks"])
        value_k1 = net.encode_value(case["frame"], case["kf16"], case["masks"][:1])
    assert value.shape == (2, 512, 1, 6, 8)
    _close(value, case["value"], atol=1e-4, rtol=1e-4)
    _close(value_k1, case["value_k1"], atol=1e-4, rtol=1e-4)


def test_readout_and_decoder_match_official(net) -> None:
    case = _case("case_segment")
    mem_key = case["mem_k"][0].flatten(start_dim=1)  # (64, T*h*w), frame-major then row-major
    mem_value = case["mem_v"].flatten(start_dim=2)
    affinity = topk_softmax(l2_affinity(mem_key, case["qk16"][0].flatten(start_dim=1)), int(case["top_k"]))
    _close(affinity, case["affinity"][0], atol=1e-5)
    readout = (mem_value @ affinity).view(2, 512, 6, 8)
    _close(readout, case["readout"], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        logits = net.decode_logits(case["readout"], case["qv16"], case["qf8"], case["qf4"])
        prob = net.decode(case["readout"], case["qv16"], case["qf8"], case["qf4"])
    _close(logits, case["logits"], atol=1e-4, rtol=1e-4)
    _close(prob, case["prob_fg"], atol=1e-5)
    _close(aggregate(prob), case["prob_agg"], atol=1e-5)


def _segment_case_memory(case: dict[str, torch.Tensor], rows: list[int]) -> MemoryView:
    objects = (0, 1)
    entries = [
        MemoryEntry(t, case["mem_k"][:, :, t], case["mem_v"][:, :, t], objects) for t in range(3)
    ]
    return MemoryView(entries, tuple(objects[r] for r in rows), [rows] * len(entries))


def _segment_case_query(case: dict[str, torch.Tensor]) -> STCNQuery:
    unused_f16 = torch.empty(0)
    return STCNQuery(case["qk16"], case["qv16"], unused_f16, case["qf8"], case["qf4"])


def test_adapter_segment_matches_official(adapter) -> None:
    case = _case("case_segment")
    query = _segment_case_query(case)
    prob = adapter.segment(query, _segment_case_memory(case, [0, 1]), ObjectStates(2))
    _close(prob, case["prob_fg"], atol=1e-5)
    # A view over a subset of the objects reads only their rows (the affinity is shared).
    prob_second = adapter.segment(query, _segment_case_memory(case, [1]), ObjectStates(2))
    _close(prob_second, case["prob_fg"][1:], atol=1e-5)


def test_adapter_reuses_the_cached_query_features(adapter) -> None:
    case = _case("case_encode_value")
    assert isinstance(adapter, VOSNetwork)
    key_encoder_runs = []
    hook = adapter.net.key_encoder.register_forward_hook(lambda *_: key_encoder_runs.append(1))
    try:
        query = adapter.encode_query(case["frame"])
        value = adapter.encode_value(case["frame"], query, case["masks"], ObjectStates(len(case["masks"])))
    finally:
        hook.remove()
    assert len(key_encoder_runs) == 1
    _close(query.f16, case["kf16"], atol=1e-4, rtol=1e-4)
    assert adapter.memory_key(query) is query.k16
    _close(value, case["value"][:, :, 0], atol=1e-4, rtol=1e-4)


def test_adapter_defaults_follow_the_official_generic_script(adapter) -> None:
    assert adapter.settings.top_k == 20
    assert adapter.settings.preprocessing.short_side == 480 and adapter.settings.preprocessing.stride == 16
    assert adapter.settings.memory == EveryNthFrame(every=5, keep_previous=False, max_frames=None)


# ------------------------------------------------------------------------------------ whole clips


def _run_clip(adapter: STCNAdapter, frames: np.ndarray, first_mask: np.ndarray, short_side: int | None):
    core = pytest.importorskip("vostool.engine.core")
    adapter = STCNAdapter(adapter.net, adapter.device, settings_for("stcn", short_side=short_side))
    return list(core.propagate(adapter, frames, {0: first_mask}, num_frames=len(frames)))


def test_davis_clip_matches_official(adapter) -> None:
    case = _case("case_clip")
    results = _run_clip(adapter, case["frames"].numpy(), case["first_mask"].numpy(), short_side=None)
    left, right, top, bottom = case["pad"].tolist()
    prob_padded = torch.stack([r.prob_padded for r in results], dim=1)
    _close(prob_padded, case["prob_padded"], atol=2e-5)
    height, width = prob_padded.shape[-2:]
    unpadded = prob_padded[:, :, 0, top : height - bottom, left : width - right]
    _close(unpadded, case["prob"], atol=2e-5)
    labels = np.stack([r.labels for r in results])
    decided = case["margin"].numpy() >= 1e-4
    np.testing.assert_array_equal(labels[decided], case["labels"].numpy()[decided])


@pytest.mark.slow
def test_generic_clip_matches_official(synth_file) -> None:
    """The library's defaults (``vostool.load("stcn")``: the generic-video path, short side 480) through a
    session: probabilities at the original size and labels against the official ``eval_generic.py``.
    (The CLI runs this same library path; its own parity test uses the small DAVIS-path clip.)"""
    import vostool
    from vostool.engine.transforms import Geometry

    case = _case("case_clip_generic")
    frames = case["frames"].numpy()
    tracker = vostool.load("stcn", weights=synth_file, device="cpu")
    geometry = Geometry.for_frame(frames.shape[1:3], tracker.settings.preprocessing)
    assert geometry.resized == tuple(case["resized_size"].tolist())
    results = list(tracker.session().track(frames, {0: case["first_mask"].numpy()}))
    prob = torch.stack([r.probabilities for r in results], dim=1)
    error = (prob - case["prob"]).abs()
    assert error.max() <= 2e-2
    assert (error <= 1e-4).float().mean() >= 0.98
    labels = np.stack([r.labels for r in results])
    expected = case["labels"].numpy()
    mismatch = labels != expected
    assert mismatch.mean() <= 0.001
    assert np.all(case["margin"].numpy()[mismatch] < 1e-2)


# ------------------------------------------------------------------------------------ loading errors


def test_mismatching_state_dict_names_the_problem(synth_state, tmp_path) -> None:
    state = {k: v for k, v in synth_state.items() if not k.startswith("key_proj.")}
    state["fc.weight"] = torch.zeros(10, 2048)
    state["decoder.pred.weight"] = torch.zeros(2, 256, 3, 3)
    with pytest.raises(ModelError) as error:
        load_stcn_state(STCNNet(), state, tmp_path / "weights.pth")
    message = str(error.value)
    assert "weights.pth" in message and "not an STCN checkpoint" in message
    assert "2 missing keys (key_proj.key_proj.weight, key_proj.key_proj.bias)" in message
    assert "1 unexpected (fc.weight)" in message
    assert "decoder.pred.weight: (1,256,3,3) expected, got (2,256,3,3)" in message
    assert "\n" not in message


def test_check_layout_lists_a_few_names_and_honours_ignore() -> None:
    expected = {f"layer.{i}": (1,) for i in range(5)}
    with pytest.raises(ModelError, match=r"5 missing keys \(layer.0, layer.1, layer.2, \.\.\.\)"):
        check_layout({}, expected, "toy", "toy.pth")
    check_layout({}, expected, "toy", "toy.pth", ignore=("layer.*",))


def test_build_reports_a_foreign_checkpoint(tmp_path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, path)
    with pytest.raises(ModelError, match=r"resnet\.pth: not an STCN checkpoint: 405 missing keys"):
        build_stcn(path, "cpu")


class _NotATensor:
    pass


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (bytes(range(256)) * 8, "is not a PyTorch checkpoint"),
        (b"", "is not a PyTorch checkpoint"),
        (b"conv1.weight = [0.1, 0.2]\n", "is not a PyTorch checkpoint"),
        (pickle.dumps(_NotATensor(), protocol=2), "is not a PyTorch checkpoint"),
    ],
    ids=["random-bytes", "empty", "text", "plain-pickle"],
)
def test_non_checkpoint_files_are_model_errors(tmp_path, content: bytes, problem: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=problem) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_file_with_python_objects_is_not_a_state_dict(tmp_path, zip_format: bool) -> None:
    path = tmp_path / "full_model.pth"
    torch.save({"model": _NotATensor()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelError, match=r"is not a plain state_dict \(.*_NotATensor\)"):
        load_checkpoint(path)


def test_state_dict_must_hold_only_tensors(tmp_path) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "network": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ModelError, match="is not a plain state_dict: 2 entries are not named tensors"):
        load_checkpoint(path)
    assert load_checkpoint(path, unwrap=("network",)).keys() == {"w"}


def test_missing_weights_file_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="weights file not found"):
        build_stcn(tmp_path / "nope.pth", "cpu")
