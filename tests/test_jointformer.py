"""JointFormer parity against the official code's vectors (shared/spec/jointformer), loading and errors.

The network holds the synthetic weights the vectors were produced with; the tolerances are the ones
suggested in shared/spec/jointformer/README.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import SPEC, parity_fixtures, require, settings_for
from vostool.engine.aggregate import aggregate
from vostool.engine.core import propagate
from vostool.engine.memory import MemoryBank
from vostool.engine.memory import WorkingMemory, Write
from vostool.engine.protocol import MemoryEntry, MemoryView, ObjectStates, VOSNetwork
from vostool.errors import ModelError
from vostool.models.jointformer.adapter import (
    MEMORY_INPUT,
    JointFormerAdapter,
    checkpoint_layout,
    load_jointformer_state,
)
from vostool.models.jointformer.adapter import build as build_jointformer

JOINTFORMER_SPEC = SPEC / "jointformer"
INTERMEDIATE_SCALE = 1e-4  # max|ours - ref| <= 1e-4 * max|ref|
STEP_PROBABILITIES = 2e-5
CLIP_PROBABILITIES = 5e-4
LOW_MARGIN = 1e-3  # pixels whose two largest reference probabilities differ by less may change label
PAD = (5, 5, 6, 6)  # left, right, top, bottom: 100x150 -> 112x160


def _case(name: str) -> dict[str, np.ndarray]:
    with np.load(require(JOINTFORMER_SPEC / f"{name}.npz")) as data:
        return {key: data[key] for key in data.files}


def _tensors(case: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in case.items() if v.dtype.kind != "U"}


manifest, synth_state, synth_file = parity_fixtures("jointformer")


@pytest.fixture(scope="module")
def jointformer(synth_file) -> JointFormerAdapter:
    return build_jointformer(synth_file, "cpu")


def _assert_scaled_close(ours: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    error = (ours.reshape(ref.shape) - ref).abs().max() / ref.abs().max()
    assert error <= INTERMEDIATE_SCALE, f"{name}: scale-relative error {error:.2e}"


def _assert_labels_match(labels: np.ndarray, ref_labels: np.ndarray, ref_probs: np.ndarray) -> None:
    top2 = np.sort(ref_probs, axis=1)[:, -2:]
    settled = top2[:, 1] - top2[:, 0] >= LOW_MARGIN
    assert np.array_equal(labels[settled], ref_labels[settled])


# ------------------------------------------------------------------------------------ layout and loading


def test_layout_is_the_manifest_layout(manifest) -> None:
    expected = {k: tuple(v["shape"]) for k, v in manifest["checkpoint_layout"].items()}
    assert checkpoint_layout() == expected
    assert manifest["eval_network_layout"] == manifest["checkpoint_layout"]
    assert sum(np.prod(s) for s in expected.values()) == manifest["params"]


def test_single_object_layout_differs_only_in_the_memory_stem() -> None:
    multi, single = checkpoint_layout(), checkpoint_layout(single_object=True)
    assert multi.keys() == single.keys()
    assert {k for k in multi if multi[k] != single[k]} == {MEMORY_INPUT}
    assert single[MEMORY_INPUT] == (256, 4, 4, 4)


def test_builder_loads_a_checkpoint_file_strictly(jointformer, synth_state) -> None:
    assert isinstance(jointformer, VOSNetwork)
    loaded = jointformer.net.state_dict()
    assert loaded.keys() == synth_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in synth_state.items())


def test_single_object_checkpoint_gets_a_zero_fifth_channel(synth_state) -> None:
    state = dict(synth_state)
    state[MEMORY_INPUT] = synth_state[MEMORY_INPUT][:, :4].clone()
    net = load_jointformer_state(state, "jointformer_s0.pth", torch.device("cpu"))
    weight = net.state_dict()[MEMORY_INPUT]
    assert torch.equal(weight[:, :4], state[MEMORY_INPUT]) and not weight[:, 4].any()


def test_block_depths_are_read_from_the_checkpoint(synth_state) -> None:
    state = {k: v for k, v in synth_state.items() if not k.startswith("convmae.blocks4.1.")}
    net = load_jointformer_state(state, "one_update_block.pth", torch.device("cpu"))
    assert len(net.convmae.blocks4) == 1 and len(net.convmae.blocks5) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decoder.pred.weight"), "1 missing keys (decoder.pred.weight)"),
        (lambda s: s.update({"module.extra": torch.zeros(1)}), "1 unexpected (module.extra)"),
        (
            lambda s: s.update({"convmae.cls_token": torch.zeros(1, 1, 1024)}),
            "convmae.cls_token: (1,1,768) expected, got (1,1,1024)",
        ),
    ],
)
def test_mismatched_state_raises_a_clear_model_error(synth_state, tmp_path, change, message) -> None:
    state = dict(synth_state)
    change(state)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match="not a JointFormer checkpoint") as error:
        build_jointformer(path, "cpu")
    assert message in str(error.value) and str(path) in str(error.value)


def test_foreign_files_raise_model_errors(tmp_path) -> None:
    stcn_like = tmp_path / "stcn.pth"
    torch.save({"key_proj.key_proj.weight": torch.zeros(64, 1024, 3, 3)}, stcn_like)
    with pytest.raises(ModelError, match="288 missing keys"):
        build_jointformer(stcn_like, "cpu")
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        build_jointformer(not_torch, "cpu")
    with pytest.raises(ModelError, match="not found"):
        build_jointformer(tmp_path / "missing.pth", "cpu")


# ------------------------------------------------------------------------------------ case_forward


@pytest.fixture(scope="module")
def forward_case() -> dict[str, torch.Tensor]:
    return _tensors(_case("case_forward"))


@pytest.fixture(scope="module")
def forward_steps(jointformer, forward_case) -> dict[str, torch.Tensor]:
    """Frame 0 memorised with its soft ground truth, frame 1 read, enhanced and decoded."""
    net = jointformer.net
    images = F.pad(forward_case["in_rgb_normalized"], PAD)
    masks = forward_case["mem0_frames_with_masks"][0, :, 3:4]
    with torch.no_grad():
        query0 = jointformer.encode_query(images[:1])
        reference = jointformer.encode_value(images[:1], query0, masks, ObjectStates(len(masks)))
        frame1 = jointformer.encode_query(images[1:]).frame
        positions = jointformer.positions(frame1.grid)
        f16 = net.readout(frame1, [reference], jointformer.settings.top_k)
        enhanced = net.enhance(f16, reference.memory_tokens, positions)
        logits, fusion = net.decoder(f16, enhanced, frame1.f8, frame1.f4)
        updated = net.update_memory_token(fusion, reference.memory_tokens, positions)
    return {
        "images": images,
        "mem0_f8": net.convmae.stem(net.convmae.patch_embed1_memory, _memory_input(images[:1], masks), positions).f8,
        "mem0_block_value0": reference.block_inputs[0],
        "mem0_block_value5": reference.block_inputs[5],
        "mem0_block_value10": reference.block_inputs[10],
        "cls_after_mem0": reference.memory_tokens,
        "q1_obj0_f16": f16[:1],
        "q1_obj1_f16": f16[1:],
        "q1_obj0_f8": frame1.f8,
        "q1_obj0_f4": frame1.f4,
        "q1_enhanced_f16": enhanced,
        "q1_fusion_feature": fusion,
        "cls_after_decoder_update": updated,
        "fg": torch.sigmoid(logits),
    }


def _memory_input(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    from vostool.models.layers import others_masks

    return torch.cat([image.expand(len(masks), -1, -1, -1), masks, others_masks(masks)], dim=1)


def test_first_frame_masks_are_the_aggregated_ground_truth(forward_case) -> None:
    labels = F.pad(torch.from_numpy(_case("case_clip")["first_mask"]).long(), PAD)
    binary = torch.stack([(labels == i).float() for i in (1, 2)]).unsqueeze(1)
    soft = aggregate(binary)[1:]
    memory_input = _memory_input(F.pad(forward_case["in_rgb_normalized"][:1], PAD), soft)
    torch.testing.assert_close(memory_input, forward_case["mem0_frames_with_masks"][0], atol=0, rtol=0)


@pytest.mark.parametrize(
    "name",
    [
        "mem0_f8",
        "mem0_block_value0",
        "mem0_block_value5",
        "mem0_block_value10",
        "cls_after_mem0",
        "q1_obj0_f16",
        "q1_obj1_f16",
        "q1_obj0_f8",
        "q1_obj0_f4",
        "q1_enhanced_f16",
        "q1_fusion_feature",
        "cls_after_decoder_update",
    ],
)
def test_case_forward_intermediates(forward_steps, forward_case, name) -> None:
    _assert_scaled_close(forward_steps[name], forward_case[name], name)


def test_case_forward_probabilities(forward_steps, forward_case) -> None:
    prob = aggregate(forward_steps["fg"])[:, 0]
    assert (prob - forward_case["q1_prob_with_bg"][0]).abs().max() <= STEP_PROBABILITIES
    q = torch.cat([torch.prod(1 - forward_steps["fg"], dim=0), forward_steps["fg"][:, 0]]).clamp(1e-7, 1 - 1e-7)
    _assert_scaled_close(torch.log(q / (1 - q)), forward_case["q1_agg_logits"][0], "q1_agg_logits")
    assert forward_case["cls_token_param"].shape == (1, 1, 768)


def test_case_forward_steps_through_the_engine(jointformer) -> None:
    case = _case("case_forward")
    frames = _case("case_clip")["frames"][:2]
    first = _case("case_clip")["first_mask"]
    native = _with_settings(jointformer, settings_for("jointformer", short_side=None))  # made without resizing (size -1)
    results = list(propagate(native, list(frames), {0: first}, num_frames=2))
    prob = torch.stack([_unpadded(r.prob_padded) for r in results])
    assert (prob - torch.from_numpy(case["step_prob"])).abs().max() <= STEP_PROBABILITIES
    labels = np.stack([r.labels for r in results])
    _assert_labels_match(labels, case["step_label"].astype(np.uint8), case["step_prob"])


def _unpadded(prob_padded: torch.Tensor) -> torch.Tensor:
    left, right, top, bottom = PAD
    return prob_padded[:, 0, top : prob_padded.shape[-2] - bottom, left : prob_padded.shape[-1] - right]


# ------------------------------------------------------------------------------------ clips


def _with_settings(adapter: JointFormerAdapter, settings) -> JointFormerAdapter:
    return JointFormerAdapter(adapter.net, adapter.device, settings)


def _clip_settings(settings: dict):
    assert settings["size"] == -1 and settings["include_last"]  # native size; the XMem store keeps the previous frame
    memory = WorkingMemory(every=settings["mem_every"], max_frames=settings["max_memory_frames"])
    return settings_for("jointformer", short_side=None, memory=memory)


@pytest.mark.parametrize(
    "name, memory_frames",
    [
        ("case_clip", [[0], [0, 1], [0, 2], [0, 3], [0, 4]]),
        ("case_clip_mem2", [[0], [0, 1], [0, 2, 1], [0, 2, 3], [0, 4, 3]]),
    ],
)
def test_case_clip_through_the_engine(jointformer, monkeypatch, name, memory_frames) -> None:
    read: list[list[int]] = []
    segment = JointFormerAdapter.segment

    def recording_segment(self, query, memory, state):
        read.append([e.frame_index for e in memory.entries])
        return segment(self, query, memory, state)

    monkeypatch.setattr(JointFormerAdapter, "segment", recording_segment)
    case = _case(name)
    settings = json.loads(str(case["settings_json"]))
    assert settings["topk_num"] == jointformer.settings.top_k
    frames = list(case["frames"])
    adapter = _with_settings(jointformer, _clip_settings(settings))
    results = list(propagate(adapter, frames, {0: case["first_mask"]}, num_frames=len(frames)))
    assert read == memory_frames
    prob = torch.stack([_unpadded(r.prob_padded) for r in results])
    assert (prob - torch.from_numpy(case["probs"])).abs().max() <= CLIP_PROBABILITIES
    labels = np.stack([r.labels for r in results])
    assert np.array_equal(labels[0], case["first_mask"])
    _assert_labels_match(labels, case["labels_out"], case["probs"])


# ------------------------------------------------------------------------------------ engine glue


def _entry(t: int, pinned: bool = False) -> MemoryEntry:
    return MemoryEntry(t, None, None, (0,), pinned=pinned)


def test_keep_temporary_store_follows_the_official_memory_store() -> None:
    """max 1: memory frames only replace the previous-frame slot; max 2: FIFO from index 1, and the
    temporary slot survives permanent writes (SPEC §8)."""
    one = MemoryBank(WorkingMemory(every=5, max_frames=1))
    one.add(_entry(0, pinned=True), Write.PERMANENT)
    for t in range(1, 7):
        one.add(_entry(t), one.due(t))
    assert [e.frame_index for e in one.entries] == [0, 6] and one.last_written == 5
    two = MemoryBank(WorkingMemory(every=5, max_frames=2))
    two.add(_entry(0, pinned=True), Write.PERMANENT)
    for t in range(1, 11):
        two.add(_entry(t), two.due(t))
        if t == 5:
            assert [e.frame_index for e in two.entries] == [0, 5, 4]
    assert [e.frame_index for e in two.entries] == [0, 10, 9]


def test_rows_select_objects_and_the_newest_entry_gives_the_memory_token(jointformer) -> None:
    image = torch.randn(1, 3, 32, 48)
    masks = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        query = jointformer.encode_query(image)
        state = ObjectStates(2)
        reference = jointformer.encode_value(image, query, masks, state)
    view = MemoryView([MemoryEntry(0, None, reference, (0, 1))], (1,), [[1]])
    assert torch.equal(view.values(0).memory_tokens, reference.memory_tokens[1:])
    fg = jointformer.segment(jointformer.encode_query(image), view, state)
    assert fg.shape == (1, 1, 32, 48) and torch.isfinite(fg).all()


def test_objects_appearing_later_start_from_the_initial_token(jointformer) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(3)]
    first, later = np.zeros((32, 48), np.uint8), np.zeros((32, 48), np.uint8)
    first[4:20, 4:20] = 1
    later[20:30, 30:44] = 2
    native = _with_settings(jointformer, settings_for("jointformer", short_side=None))
    results = list(propagate(native, frames, {0: first, 1: later}, num_frames=3))
    assert [r.object_ids for r in results] == [(1,), (1, 2), (1, 2)]
    assert torch.isfinite(results[-1].prob_padded).all()


def test_engine_defaults() -> None:
    adapter = JointFormerAdapter(_meta_net(), "meta")
    prep = adapter.settings.preprocessing
    assert prep.short_side == 480 and prep.resize_mode == "bilinear"
    assert adapter.settings.memory == WorkingMemory(every=5, max_frames=1)
    assert adapter.settings.top_k == 60


def _meta_net():
    from vostool.models.jointformer.network import JointFormerNet

    with torch.device("meta"):
        return JointFormerNet()
