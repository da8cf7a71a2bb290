"""SITVOS parity against the official code's vectors (shared/spec/sitvos), loading and checkpoint errors.

The network is loaded with the synthetic weights the vectors were produced with ("strict"), or with
the same weights and the ImageNet normalisation buffers ("imnet"); tolerances are the ones given in
shared/spec/sitvos/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import SPEC, parity_fixtures, require, settings_for
from vostool.engine.aggregate import aggregate, aggregate_logits
from vostool.engine.core import propagate
from vostool.engine.memory import EveryNthFrame
from vostool.engine.protocol import MemoryEntry, MemoryView, ObjectStates, VOSNetwork
from vostool.engine.transforms import Geometry, unpad_and_resize
from vostool.errors import ModelError
from vostool.models.checkpoint import load_exact_state
from vostool.models.common import fold_batchnorms
from vostool.models.registry import layout_of
from vostool.models.sitvos.adapter import SITVOSAdapter, checkpoint_layout
from vostool.models.sitvos.adapter import build as build_sitvos
from vostool.models.sitvos.network import IMAGENET_MEAN, IMAGENET_STD, SITVOSNet

SITVOS_SPEC = SPEC / "sitvos"
FRAME_SIZE = (100, 150)  # the parity clip; padded to 112 x 160


@dataclass(frozen=True)
class Tolerance:
    """README tolerances: intermediates relative to max|ref|, probabilities absolute."""

    relative: float
    probability: float


STRICT = Tolerance(relative=3e-4, probability=1e-4)
IMNET = Tolerance(relative=1e-4, probability=2e-5)
LOGIT_ATOL = 1e-3  # out_logit, where |ref| < 15 (pixels on the clamp are quantised in fp32)
LABEL_MARGIN = 2e-4  # labels may differ only where the two largest reference probabilities are this close


def _case(name: str) -> dict[str, torch.Tensor]:
    with np.load(require(SITVOS_SPEC / f"{name}.npz")) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def _assert_relative(name: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    actual = actual.expand_as(expected)  # batch-1 features stand for the official N identical rows
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= tolerance, f"{name}: relative error {error:.3g} > {tolerance:g}"


manifest, synth_state, synth_file = parity_fixtures("sitvos")


def _imagenet_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The "imnet" weights: synthetic, but with the normalisation every real checkpoint holds."""
    return {
        **state,
        "Encoder.mean": torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        "Encoder.std": torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    }


@pytest.fixture(scope="module")
def adapters(synth_state) -> dict[str, SITVOSAdapter]:
    networks = {}
    for variant, state in (("strict", synth_state), ("imnet", _imagenet_buffers(synth_state))):
        net = SITVOSNet()
        load_exact_state(net, state, "SITVOS", f"synthetic ({variant})")
        networks[variant] = SITVOSAdapter(net, "cpu")
    return networks


# ------------------------------------------------------------------------------------ layout


def test_module_layout_equals_the_manifest(manifest) -> None:
    layout = {name: tuple(entry["shape"]) for name, entry in manifest["checkpoint_layout"].items()}
    assert list(checkpoint_layout().items()) == list(layout.items())  # names, order and shapes
    assert layout_of("sitvos") == layout
    model = SITVOSNet()
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["state_dict_numel"]


def test_normalisation_buffers_default_to_imagenet() -> None:
    encoder = SITVOSNet().Encoder
    assert torch.equal(encoder.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(encoder.std.flatten(), torch.tensor(IMAGENET_STD))


def test_adapter_follows_the_released_eval_script(adapters) -> None:
    adapter = adapters["imnet"]
    assert isinstance(adapter, VOSNetwork)
    prep = adapter.settings.preprocessing
    # Native size, zero padding of the [0,1] image (the backbone normalises), re-padded memory masks.
    assert (prep.short_side, prep.stride, prep.mean, prep.std) == (None, 16, (0.0,) * 3, (1.0,) * 3)
    assert prep.zero_padded_memory_masks
    assert adapter.settings.memory == EveryNthFrame(every=12, keep_previous=True, max_frames=None)


# ------------------------------------------------------------------------------------ one memorise + segment

# Hooked module -> reference array; "[N]" marks the memorise call's output, the rest the segment call's.
_HOOKED = {
    "Encoder_mask": "mem_maskfeat",
    "W_mask": "mem_val",
    "W_Q": "q_key",
    "Memory.self_atten_T": "T_self",
    "Memory.self_atten_C": "C_self",
    "Memory.cross_atten1": "T_cross",
    "Memory.cross_atten2": "C_cross",
    "Memory.cross_atten3": "final_cross",
    "Memory": "memory_out",
    "Decoder": "decoder_logits",
}


def _record_outputs(net: SITVOSNet) -> tuple[dict[str, torch.Tensor], list]:
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for module_name, array in _HOOKED.items():
        def keep(_module, _inputs, output, array=array):
            captured[array] = output

        handles.append(net.get_submodule(module_name).register_forward_hook(keep))
    return captured, handles


def _forward_case(adapter: SITVOSAdapter, case: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official case through the adapter: memorise frame 0 with its one-hot, segment frame 1."""
    geometry = Geometry.for_frame(FRAME_SIZE, adapter.settings.preprocessing)
    frame0, frame1 = (F.pad(case[name], geometry.pad) for name in ("in_frame0", "in_frame1"))
    masks = F.pad(case["in_mask0_onehot"], geometry.pad)[0, 1:3].unsqueeze(1)  # objects 1 and 2
    captured, handles = _record_outputs(adapter.net)
    try:
        memory_query = adapter.encode_query(frame0)
        key = adapter.memory_key(memory_query)
        value = adapter.encode_value(frame0, memory_query, masks, ObjectStates(len(masks)))
        query = adapter.encode_query(frame1)
        entry = MemoryEntry(0, key, value, (0, 1), pinned=True)
        foreground = adapter.segment(query, MemoryView([entry], (0, 1), [[0, 1]]), ObjectStates(2))
    finally:
        for handle in handles:
            handle.remove()
    top, left = geometry.pad[2], geometry.pad[0]
    crop = (slice(None), 0, slice(top, top + FRAME_SIZE[0]), slice(left, left + FRAME_SIZE[1]))
    return {
        **captured,
        "mem_r4": memory_query.r4,
        "mem_key": key,
        "q_r4": query.r4,
        "q_r3": query.r3,
        "q_r2": query.r2,
        "mem_value_rows": value,
        "out_logit": aggregate_logits(foreground)[crop],
        "out_prob": aggregate(foreground)[crop],
    }


@pytest.mark.parametrize(("variant", "tolerance"), [("strict", STRICT), ("imnet", IMNET)])
def test_memorise_and_segment_match_official(adapters, variant: str, tolerance: Tolerance) -> None:
    case = _case("case_forward" if variant == "strict" else "case_forward_imnet")
    assert int(case["num_objects"][0]) == 2
    ours = _forward_case(adapters[variant], case)
    for name in ("mem_r4", "mem_maskfeat", "mem_key", "mem_val", "q_r4", "q_r3", "q_r2", "q_key",
                 "T_self", "C_self", "T_cross", "C_cross", "final_cross", "memory_out", "decoder_logits"):
        _assert_relative(name, ours[name], case[name], tolerance.relative)
    _assert_relative("out_r4e", ours["q_r4"], case["out_r4e"], tolerance.relative)
    # The official memory tensors hold object o in slot o (slot 0 and slots > N stay zero).
    _assert_relative("keys", ours["mem_key"], case["keys"][0, 1:3, :, 0], tolerance.relative)
    _assert_relative("values", ours["mem_value_rows"], case["values"][0, 1:3, :, 0], tolerance.relative)
    assert torch.count_nonzero(case["values"][0, 3:]) == 0 and torch.count_nonzero(case["values"][0, 0]) == 0
    _assert_probabilities(ours["out_prob"], case["out_prob"][0], tolerance.probability)
    reference_logit = case["out_logit"][0, :3]
    unsaturated = reference_logit.abs() < 15
    logit_error = (ours["out_logit"] - reference_logit)[unsaturated].abs().max()
    assert logit_error <= LOGIT_ATOL


def _assert_probabilities(ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    """``ours`` has the background and N object channels; the official K=11 channels beyond them hold
    the empty slots, compared against zero (they are ~1e-7 at most)."""
    padded = torch.zeros_like(reference)
    padded[: ours.shape[0]] = ours
    error = float((padded - reference).abs().max())
    assert error <= tolerance, f"probabilities: max abs error {error:.3g} > {tolerance:g}"


# ------------------------------------------------------------------------------------ whole clips


@pytest.mark.parametrize(
    ("name", "variant", "tolerance"),
    [("case_clip", "strict", STRICT), ("case_clip_imnet", "imnet", IMNET), ("case_clip_mem2", "strict", STRICT)],
)
def test_run_video_matches_official(adapters, name: str, variant: str, tolerance: Tolerance) -> None:
    case = _case(name)
    adapter = adapters[variant]
    frames, first_mask = case["frames"].numpy(), case["first_mask"].numpy()
    memory = adapter.settings.memory.with_overrides(int(case["mem_every"][0]), None)
    adapter = SITVOSAdapter(adapter.net, adapter.device, settings_for("sitvos", memory=memory))
    results = list(propagate(adapter, frames, {0: first_mask}, num_frames=len(frames)))
    geometry = Geometry.for_frame(frames.shape[1:3], adapter.settings.preprocessing)
    for result, reference in zip(results[1:], case["probs"]):
        _assert_probabilities(unpad_and_resize(result.prob_padded, geometry), reference, tolerance.probability)
    labels = np.stack([r.labels for r in results])
    np.testing.assert_array_equal(labels[0], case["labels_out"][0].numpy())
    top_two = np.sort(case["probs"].numpy(), axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] >= LABEL_MARGIN
    np.testing.assert_array_equal(labels[1:][decided], case["labels_out"][1:].numpy()[decided])


# ------------------------------------------------------------------------------------ loading errors


def test_wrong_file_names_the_problem_on_one_line(synth_state, tmp_path) -> None:
    state = {k: v for k, v in synth_state.items() if not k.startswith("W_Q.")}
    state["fc.weight"] = torch.zeros(10, 2048)
    state["Decoder.pred2.weight"] = torch.zeros(1, 256, 3, 3)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as error:
        build_sitvos(path, "cpu")
    assert str(error.value).endswith(
        "weights.pth: not a SITVOS checkpoint: 2 missing keys (W_Q.weight, W_Q.bias), 1 unexpected (fc.weight), "
        "1 with the wrong shape (Decoder.pred2.weight: (2,256,3,3) expected, got (1,256,3,3))"
    )


def test_build_reports_a_foreign_checkpoint(tmp_path) -> None:
    path = tmp_path / "stm.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, path)
    with pytest.raises(ModelError, match=r"stm\.pth: not a SITVOS checkpoint: 404 missing keys"):
        build_sitvos(path, "cpu")


def test_build_loads_a_saved_state_dict(synth_state, tmp_path) -> None:
    path = tmp_path / "sitvos.pth"
    torch.save(synth_state, path)
    loaded = build_sitvos(path, "cpu").net.state_dict()
    # The built network has its BatchNorms folded; the checkpoint loaded by hand and folded must match.
    expected = SITVOSNet()
    expected.load_state_dict(synth_state)
    fold_batchnorms(expected.eval())
    assert list(loaded) == list(expected.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in expected.state_dict().items())


def test_missing_weights_file_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="weights file not found"):
        build_sitvos(tmp_path / "nope.pth", "cpu")


def test_without_weights_the_user_is_told_to_pass_a_file() -> None:
    from vostool.api import load_network

    with pytest.raises(ModelError) as error:
        load_network("sitvos", None, torch.device("cpu"), offline=True)
    message = str(error.value)
    assert message.startswith("sitvos: SITVOS released no checkpoint") and "--weights PATH" in message
    assert "\n" not in message


def test_cli_without_weights_prints_one_line(tmp_path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from vostool.cli import app

    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(2):
        Image.fromarray(np.full((32, 48, 3), 40 * t, np.uint8)).save(frames / f"{t:05d}.png")
    labels = np.zeros((32, 48), np.uint8)
    labels[8:20, 10:30] = 1
    Image.fromarray(labels).save(tmp_path / "mask.png")
    args = ["segment", str(frames), "-m", str(tmp_path / "mask.png"), "-o", str(tmp_path / "out"),
            "--model", "sitvos", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "SITVOS released no checkpoint" in lines[0] and "--weights PATH" in lines[0]
