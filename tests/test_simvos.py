"""SimVOS parity against the official code's vectors (shared/spec/simvos), loading and checkpoint errors.

The networks hold the synthetic weights the vectors were produced with (SimVOS-B and -BS share one
layout, so one file serves both). Tolerances are the ones suggested in shared/spec/simvos/README.md.
There are no SimVOS-L vectors: -L is covered by its layout, a strict load and a run on a tiny clip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import SPEC, parity_fixtures, require, settings_for
from vostool.engine.aggregate import aggregate
from vostool.engine.core import propagate
from vostool.engine.memory import FirstAndPrevious
from vostool.engine.protocol import MemoryEntry, MemoryView, ObjectStates, VOSNetwork
from vostool.errors import ModelError
from vostool.models.checkpoint import expected_layout
from vostool.models.simvos.adapter import (
    SimVOSAdapter,
    build_simvos,
    load_weights,
    network_from_state,
    rebuilt_position_table,
)
from vostool.models.simvos.network import VARIANTS, build_network, guidance_weights, unused_keys

SIMVOS_SPEC = SPEC / "simvos"
FEATURES = dict(atol=5e-5, rtol=1e-4)  # tokens, m16/m8/m4, logits
PROBABILITIES = dict(atol=1e-5, rtol=0.0)
POSITIONS = dict(atol=1e-6, rtol=0.0)
LOW_MARGIN = 1e-4  # clip pixels whose stored top-2 probability margin is below this may change label


def _case(name: str) -> dict[str, torch.Tensor]:
    with np.load(require(SIMVOS_SPEC / f"{name}.npz")) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files if data[key].dtype.kind != "U"}


def _layout(manifest: dict, variant: str) -> dict:
    return manifest["variants"][variant]["checkpoint_layout"]


manifest, synth_b, synth_file = parity_fixtures("simvos", variant="simvos-b", layout="checkpoint_layout", state="synth_b")


@pytest.fixture(scope="module")
def simvos_b(synth_file) -> SimVOSAdapter:
    # Native resolution: the parity clips are 100x120, the official eval does not resize them.
    return build_simvos("simvos-b", synth_file, "cpu", settings_for("simvos-b", short_side=None))


@pytest.fixture(scope="module")
def simvos_bs(synth_file) -> SimVOSAdapter:
    return build_simvos("simvos-bs", synth_file, "cpu", settings_for("simvos-bs", short_side=None))


synth_l = parity_fixtures(
    "simvos", variant="simvos-l", layout="checkpoint_layout", manifest="_manifest_l", state="synth_l", file="synth_l_file"
).state


@pytest.fixture(scope="module")
def simvos_l(synth_l) -> SimVOSAdapter:
    return SimVOSAdapter(network_from_state("simvos-l", synth_l, "synthetic"), torch.device("cpu"), settings_for("simvos-l", short_side=None))


def _unused_by_b(key: str) -> bool:
    """SPEC §6: keys of a released file that SimVOS-B/-L never read."""
    prefixes = ("head.", "fc_norm.", "tlearner.", "tlearner_back.")
    return key in ("cls_token", "pos_embed") or key.startswith(prefixes)


def _meta_network(variant: str):
    with torch.device("meta"):
        return build_network(variant)


def _entry(net: SimVOSAdapter, t: int, image: torch.Tensor, masks: torch.Tensor) -> MemoryEntry:
    query = net.encode_query(image)
    values = net.encode_value(image, query, masks, ObjectStates(len(masks)))
    return MemoryEntry(t, net.memory_key(query), values, tuple(range(len(masks))))


def _view(entries: list[MemoryEntry]) -> MemoryView:
    objects = entries[0].objects
    return MemoryView(entries, objects, [list(range(len(objects)))] * len(entries))


# ------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_module_layout_is_the_checkpoint_layout_minus_unused_keys(manifest, variant) -> None:
    net = _meta_network(variant)
    layout = {k: tuple(v["shape"]) for k, v in _layout(manifest, variant).items()}
    ignored = {k for k in layout if k not in expected_layout(net)}
    assert expected_layout(net) == {k: s for k, s in layout.items() if k not in ignored}
    # Exactly the keys SPEC §6 calls unused are left out: B/L also skip the token-refinement modules.
    expected_unused = {"cls_token", "pos_embed", "head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    if variant != "simvos-bs":
        expected_unused |= {k for k in layout if k.startswith(("tlearner.", "tlearner_back."))}
    assert ignored == expected_unused
    assert sum(np.prod(s) for s in layout.values()) == manifest["variants"][variant]["params"]


def test_builder_loads_a_checkpoint_file_strictly(simvos_b, simvos_bs, synth_b) -> None:
    assert isinstance(simvos_b, VOSNetwork) and isinstance(simvos_bs, VOSNetwork)
    for adapter in (simvos_b, simvos_bs):
        state = adapter.net.state_dict()
        assert all(torch.equal(tensor, synth_b[key]) for key, tensor in state.items())
    assert "tlearner.norm.weight" in simvos_bs.net.state_dict()
    assert "tlearner.norm.weight" not in simvos_b.net.state_dict()


def test_simvos_l_loads_strictly(simvos_l, synth_l) -> None:
    state = simvos_l.net.state_dict()
    assert set(state) == {k for k in synth_l if not _unused_by_b(k)}
    assert all(torch.equal(tensor, synth_l[key]) for key, tensor in state.items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("blocks.3.attn.qkv.weight"), "1 missing keys (blocks.3.attn.qkv.weight)"),
        (lambda s: s.update({"blocks.12.norm1.weight": torch.ones(768)}), "1 unexpected (blocks.12.norm1.w"),
        (lambda s: s.update({"norm.bias": torch.zeros(1024)}), "norm.bias: (768) expected, got (1024)"),
    ],
)
def test_mismatched_state_raises_a_clear_model_error(synth_b, change, message) -> None:
    state = dict(synth_b)
    change(state)
    with pytest.raises(ModelError, match="simvos-b.pth: not a simvos-b checkpoint") as info:
        load_weights(_meta_network("simvos-b"), state, "simvos-b", "simvos-b.pth")
    assert message in str(info.value)


def test_simvos_l_file_is_not_a_simvos_b_checkpoint(manifest) -> None:
    state = {k: torch.empty(v["shape"], device="meta") for k, v in _layout(manifest, "simvos-l").items()}
    with pytest.raises(ModelError, match=r"with the wrong shape \(pos_embed_new: \(1,577,768\) expected"):
        load_weights(_meta_network("simvos-b"), state, "simvos-b", "simvos-l.pth")


def test_known_unused_keys_are_ignored_but_bs_needs_token_refinement(synth_b) -> None:
    bare = {k: v for k, v in synth_b.items() if not _unused_by_b(k)}
    net = network_from_state("simvos-b", bare, "bare.pth")  # no error
    assert torch.equal(net.stcn_decoder.pred.weight, synth_b["stcn_decoder.pred.weight"])
    assert set(unused_keys(VARIANTS["simvos-bs"])) == {"cls_token", "pos_embed", "head.*", "fc_norm.*"}
    with pytest.raises(ModelError, match=r"missing keys \(tlearner"):
        load_weights(_meta_network("simvos-bs"), bare, "simvos-bs", "bare.pth")


def test_missing_pos_embed_new_is_rebuilt_from_pos_embed(synth_b) -> None:
    state = {k: v for k, v in synth_b.items() if k != "pos_embed_new"}
    net = network_from_state("simvos-b", state, "old.pth")
    assert torch.equal(net.pos_embed_new, rebuilt_position_table(synth_b["pos_embed"]))


def _bicubic_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(out, in) weights of PyTorch's bicubic resize: Keys kernel A = -0.75, align_corners=False,
    taps clamped to the edge."""

    def kernel(x: float) -> float:
        a, x = -0.75, abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for o in range(size_out):
        source = (o + 0.5) * size_in / size_out - 0.5
        base = int(np.floor(source))
        for tap in range(base - 1, base + 3):
            weights[o, min(max(tap, 0), size_in - 1)] += kernel(source - tap)
    return weights


def test_rebuilt_position_table_is_a_bicubic_14_to_24_resize() -> None:
    pos_embed = torch.randn(1, 197, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = rebuilt_position_table(pos_embed)
    assert table.shape == (1, 577, 3) and torch.equal(table[:, 0], pos_embed[:, 0])  # cls slot kept
    resize = _bicubic_matrix(14, 24)
    grid14 = pos_embed[0, 1:].reshape(14, 14, 3).permute(2, 0, 1)
    expected = (resize @ grid14 @ resize.T).permute(1, 2, 0).reshape(576, 3)  # rows, then columns
    torch.testing.assert_close(table[0, 1:], expected, atol=1e-12, rtol=0)


def test_unknown_variant_and_missing_file_raise_model_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="unknown SimVOS variant 'simvos-x'"):
        build_simvos("simvos-x", tmp_path / "none.pth", "cpu")
    with pytest.raises(ModelError, match="weights file not found"):
        build_simvos("simvos-b", tmp_path / "none.pth", "cpu")


# ------------------------------------------------------------------------------------ parity


def test_position_table_resize_and_cache(simvos_b) -> None:
    for name, grid in (("case_backbone", (8, 10)), ("case_forward", (7, 9))):
        expected = _case(name)["pos_embed_interp"]
        table = simvos_b.positions(grid)
        torch.testing.assert_close(table, expected[0, 1:], **POSITIONS)
        assert simvos_b.positions(grid) is table  # resized once, then reused
    assert torch.equal(simvos_b.net.position_table((24, 24)), simvos_b.net.pos_embed_new[0, 1:])


@torch.no_grad()
def test_case_backbone(simvos_b) -> None:
    case = _case("case_backbone")
    net = simvos_b.net
    entries = [
        _entry(simvos_b, i, case["memory_frames"][:, i], case["mask_frames"][:, i]) for i in range(2)
    ]
    query = simvos_b.encode_query(case["query_frame"])
    x = simvos_b.input_tokens(query, _view(entries))
    torch.testing.assert_close(x, case["tokens_in"], **FEATURES)
    x = net.run_blocks(x, 0)
    torch.testing.assert_close(net.norm(x), case["tokens_out"], **FEATURES)
    m16 = net.query_map(x, query.grid)
    m8, m4 = net.pyramid(m16)
    for name, actual in (("m16", m16), ("m8", m8), ("m4", m4)):
        torch.testing.assert_close(actual, case[name], **FEATURES, msg=name)


@torch.no_grad()
def test_case_forward_one_reference(simvos_b) -> None:
    case = _case("case_forward")
    entry = _entry(simvos_b, 0, case["t1_memory_frames"][:, 0], case["t1_mask_frames"][:, 0])
    query = simvos_b.encode_query(case["t1_query_frame"])
    x = simvos_b.net.run_blocks(simvos_b.input_tokens(query, _view([entry])), 0)
    logits = simvos_b.net.logits(simvos_b.net.query_map(x, query.grid))
    torch.testing.assert_close(logits, case["t1_logits"], **FEATURES)
    torch.testing.assert_close(simvos_b.segment(query, _view([entry]), ObjectStates(1)), case["t1_prob"], **PROBABILITIES)


@torch.no_grad()
def test_case_forward_two_objects_batched(simvos_b) -> None:
    case = _case("case_forward")
    frames, masks = case["t2_memory_frames"], case["t2_mask_frames"]  # masks (object, time, 1, H, W)
    entries = [_entry(simvos_b, i, frames[:, i], masks[:, i]) for i in range(2)]
    query = simvos_b.encode_query(case["t2_query_frame"])
    x = simvos_b.net.run_blocks(simvos_b.input_tokens(query, _view(entries)), 0)
    logits = simvos_b.net.logits(simvos_b.net.query_map(x, query.grid))
    torch.testing.assert_close(logits, case["t2_logits"], **FEATURES)
    prob = simvos_b.segment(query, _view(entries), ObjectStates(2))
    torch.testing.assert_close(prob, case["t2_prob"], **PROBABILITIES)
    torch.testing.assert_close(aggregate(prob), case["t2_prob_aggregated"], **PROBABILITIES)


def test_memory_view_rows_select_and_order_objects(simvos_b) -> None:
    case = _case("case_forward")
    frames, masks = case["t2_memory_frames"], case["t2_mask_frames"]
    entries = [_entry(simvos_b, i, frames[:, i], masks[:, i]) for i in range(2)]
    query = simvos_b.encode_query(case["t2_query_frame"])
    swapped = simvos_b.segment(query, MemoryView(entries, (1, 0), [[1, 0], [1, 0]]), ObjectStates(2))
    single = simvos_b.segment(query, MemoryView(entries, (1,), [[1], [1]]), ObjectStates(2))
    torch.testing.assert_close(swapped, case["t2_prob"].flip(0), **PROBABILITIES)
    torch.testing.assert_close(single, case["t2_prob"][1:], **PROBABILITIES)


@pytest.mark.parametrize("variant", ["simvos-b", "simvos-bs"])
def test_frame0_soft_masks_equal_binary_masks(request, variant) -> None:
    """The engine stores frame 0 with aggregate(one-hot) (~1e-14 off 0/1), the official code with the
    binary masks: the stored values are bit-identical, also for BS's exact `background == 1` test."""
    adapter = request.getfixturevalue("simvos_b" if variant == "simvos-b" else "simvos_bs")
    case = _case("case_clip")
    left, right, top, bottom = case["pad"].tolist()
    labels = F.pad(case["first_mask"].long(), (left, right, top, bottom))
    binary = torch.stack([(labels == i).float() for i in (1, 2)]).unsqueeze(1)
    soft = aggregate(binary)[1:]
    assert 0 < (soft - binary).abs().max() < 1e-13
    image = case["images_padded"][:1]
    query = adapter.encode_query(image)
    states = ObjectStates(len(soft))
    assert torch.equal(adapter.encode_value(image, query, soft, states), adapter.encode_value(image, query, binary, states))
    if variant == "simvos-bs":
        for a, b in zip(guidance_weights(soft, query.grid), guidance_weights(binary, query.grid)):
            assert torch.equal(a, b)


def _run_clip(adapter: SimVOSAdapter, case: dict[str, torch.Tensor]) -> list:
    frames = [frame.numpy() for frame in case["frames"]]
    first = case["first_mask"].numpy()
    return list(propagate(adapter, frames, {0: first}, num_frames=len(frames), device="cpu"))


def _check_clip(results: list, case: dict[str, torch.Tensor]) -> None:
    assert [r.object_ids for r in results] == [(1, 2)] * len(results)
    prob = torch.stack([r.prob_padded[:, 0] for r in results])
    torch.testing.assert_close(prob, case["prob_padded"], **PROBABILITIES)
    labels = np.stack([r.labels for r in results])
    top2 = case["probs"].topk(2, dim=1).values
    settled = (top2[:, 0] - top2[:, 1] >= LOW_MARGIN).numpy()
    assert np.array_equal(labels[settled], case["labels"].numpy()[settled])
    assert np.array_equal(labels[0], case["first_mask"].numpy())


def test_case_clip_through_the_engine(simvos_b, monkeypatch) -> None:
    memory_frames: list[list[int]] = []
    segment = SimVOSAdapter.segment

    def recording_segment(self, query, memory, state):
        memory_frames.append([e.frame_index for e in memory.entries])
        return segment(self, query, memory, state)

    monkeypatch.setattr(SimVOSAdapter, "segment", recording_segment)
    case = _case("case_clip")
    _check_clip(_run_clip(simvos_b, case), case)
    # Memory = the annotated frame, plus the previous frame from frame 2 on (frame 1's is frame 0).
    assert memory_frames == [[0], [0, 1], [0, 2], [0, 3], [0, 4]]


def test_case_clip_bs_through_the_engine(simvos_bs) -> None:
    case = _case("case_clip_bs")
    _check_clip(_run_clip(simvos_bs, case), case)


# ------------------------------------------------------------------------------------ SimVOS-L, engine glue


def test_simvos_l_runs_through_the_engine(simvos_l) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    first = np.zeros((40, 56), np.uint8)
    first[8:24, 10:30] = 3
    results = list(propagate(simvos_l, frames, {0: first}, num_frames=3))
    assert results[-1].prob_padded.shape == (2, 1, 48, 64)  # padded to multiples of 16
    assert all(r.labels.shape == (40, 56) and set(np.unique(r.labels)) <= {0, 3} for r in results)
    assert torch.isfinite(results[-1].prob_padded).all()


def test_engine_defaults() -> None:
    adapter = SimVOSAdapter(_meta_network("simvos-b"), torch.device("meta"))
    assert adapter.settings.preprocessing.short_side == 480 and adapter.settings.preprocessing.stride == 16
    assert adapter.settings.memory == FirstAndPrevious() and adapter.settings.memory.max_frames is None
    assert adapter.settings.top_k is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_case_forward_on_cuda(synth_file) -> None:
    """Fused attention (and TF32 convolutions where enabled) on GPU: a sanity bound, not parity."""
    adapter = build_simvos("simvos-b", synth_file, "cuda", settings_for("simvos-b", short_side=None))
    case = _case("case_forward")
    frames, masks = case["t2_memory_frames"], case["t2_mask_frames"]
    entries = [_entry(adapter, i, frames[:, i].cuda(), masks[:, i].cuda()) for i in range(2)]
    query = adapter.encode_query(case["t2_query_frame"].cuda())
    with torch.inference_mode():
        x = adapter.net.run_blocks(adapter.input_tokens(query, _view(entries)), 0)
        logits = adapter.net.logits(adapter.net.query_map(x, query.grid))
    torch.testing.assert_close(logits.cpu(), case["t2_logits"], atol=1e-2, rtol=0)
    assert adapter.segment(query, _view(entries), ObjectStates(2)).device.type == "cuda"
