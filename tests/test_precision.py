"""--precision: bf16 labels agree with fp32 on every model's parity clip, the label-deciding steps stay in
float32 under autocast, and TF32 is off for fp32 and on for tf32 on CUDA.

The per-model agreement figures (whole clips, against our own fp32 run) are written to docs/benchmarks.md
by scripts/precision_agreement.py, whose clips and measurement this test reuses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, load_script, require
from tests.helpers import gradient_frames
from vostool.engine.core import propagate
from vostool.engine.precision import tf32_matmul
from vostool.engine.readout import l2_affinity, topk_l2_readout, topk_softmax
from vostool.settings import RunSettings, SettingsError

AGREEMENT = 0.995
CLIP_FRAMES = 3  # frame 0 (given) and two propagated frames: one and two memory frames
MAX_PROBABILITY_CHANGE = 0.1  # measured <= 0.07 on every clip; a broken island or a NaN is far above


@pytest.fixture(scope="module")
def precision_script():
    return load_script(require(REPO_ROOT / "scripts" / "precision_agreement.py"))


# Every model with a parity clip (simvos-l has none: scripts/precision_agreement.py measures it on its
# engine-test clip, reported in docs/benchmarks.md).
MODELS = ("stcn", "simvos-b", "simvos-bs", "sitvos", "jointformer", "propagate-lite0")


@pytest.mark.parametrize("model", MODELS)
def test_bf16_labels_agree_with_fp32(model, synthweights, precision_script) -> None:
    """Against the official fp32 output stored with the parity vectors (our fp32 run equals it within the
    parity tolerances) where there is one, else against an fp32 run. Pixels the synthetic weights leave
    undecided (fp32 top-2 margin below 0.01) flip by chance in any reduced precision and are not counted;
    the real-weights default model must agree on all pixels."""
    assert set(MODELS) == set(precision_script.MODELS) - {"simvos-l"}
    row = precision_script.measure(model, "bf16", synthweights, frames=CLIP_FRAMES, official=True)
    assert row.decided_agreement >= AGREEMENT, row
    assert row.decided_share >= 0.5, row  # the figure covers most of the clip
    assert row.max_probability_change <= MAX_PROBABILITY_CHANGE, row
    if model == "propagate-lite0":
        assert row.agreement >= AGREEMENT, row


def _keys(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Keys of the size real ones have: the two terms of the L2 affinity are large and nearly cancel.
    return 8 * torch.randn(64, 300, generator=generator), 8 * torch.randn(64, 40, generator=generator)


def test_affinity_and_top_k_softmax_are_float32_under_autocast() -> None:
    mem_key, query_key = _keys(0)
    expected = topk_softmax(l2_affinity(mem_key, query_key), 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        affinity = l2_affinity(mem_key.bfloat16(), query_key.bfloat16())
        weights = topk_softmax(affinity, 20)
        values = torch.randn(2, 300, 16).bfloat16()  # value rows (K, N, Cv)
        readout = topk_l2_readout(mem_key.bfloat16(), values, query_key.bfloat16(), 20)
    assert affinity.dtype == weights.dtype == readout.dtype == torch.float32
    # Only the keys' own rounding to bf16 remains: the weights' columns still sum to one exactly-ish
    # and pick nearly the same memory positions as fp32.
    torch.testing.assert_close(weights.sum(0), torch.ones(40), atol=1e-6, rtol=0)
    assert ((weights > 0) == (expected > 0)).float().mean() > 0.99
    assert readout.shape == (2, 16, 40) and torch.isfinite(readout).all()


def test_fp32_islands_change_nothing_in_fp32() -> None:
    """The casts are no-ops for float32 input: bit-identical to the plain formulas (parity untouched)."""
    mem_key, query_key = _keys(1)
    plain = (2 * (mem_key.T @ query_key) - mem_key.pow(2).sum(0).unsqueeze(1)) / 8
    assert torch.equal(l2_affinity(mem_key, query_key), plain)


def test_decoders_return_float32_probabilities_under_autocast() -> None:
    from vostool.models.stcn.network import STCNNet

    net = STCNNet().eval()
    readout, qv16 = torch.randn(2, 512, 2, 3), torch.randn(1, 512, 2, 3)
    qf8, qf4 = torch.randn(1, 512, 4, 6), torch.randn(1, 256, 8, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        prob = net.decode(readout, qv16, qf8, qf4)
    assert prob.dtype == torch.float32


@pytest.fixture
def user_tf32():
    """The user's own TF32 flags (both on), restored after the test."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = True
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = before


@pytest.mark.parametrize(("precision", "inside"), [("fp32", False), ("bf16", False), ("tf32", True)])
def test_tf32_is_on_only_for_tf32_on_cuda_and_the_users_flags_come_back(user_tf32, precision, inside) -> None:
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    with tf32_matmul(precision, torch.device("cuda")):  # only flags are set: no GPU needed
        assert flags() == (inside, inside)
    assert flags() == (True, True)
    with tf32_matmul("fp32", torch.device("cpu")):  # the CPU has no TF32: nothing is touched
        assert flags() == (True, True)


def _two_objects() -> np.ndarray:
    labels = np.zeros((48, 64), np.uint8)
    labels[8:24, 8:30] = 1
    labels[20:40, 34:60] = 2
    return labels


def test_tf32_on_the_cpu_is_fp32() -> None:
    from tests.conftest import settings_for
    from vostool.models.propagate_lite0.adapter import PropagateLite0Adapter
    from vostool.models.propagate_lite0.adapter import build as build_lite0

    frames = gradient_frames(3, 48, 64)
    first = _two_objects()
    net = build_lite0().net
    results = {}
    for precision in ("fp32", "tf32"):
        adapter = PropagateLite0Adapter(net, "cpu", settings_for("propagate-lite0", short_side=64, precision=precision))
        results[precision] = [r.probabilities for r in propagate(adapter, frames, {0: first}, num_frames=3)]
    assert all(torch.equal(a, b) for a, b in zip(results["fp32"], results["tf32"]))


def test_tf32_is_a_precision_and_the_error_names_it() -> None:
    assert RunSettings(precision="tf32").precision == "tf32"
    with pytest.raises(SettingsError, match=r"precision='fp64': choose one of fp32, tf32, fp16, bf16"):
        RunSettings(precision="fp64")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp32_steps_run_without_tf32_on_cuda(user_tf32) -> None:
    from tests.conftest import settings_for
    from vostool.models.propagate_lite0.adapter import PropagateLite0Adapter
    from vostool.models.propagate_lite0.adapter import build as build_lite0

    seen = []
    for precision in ("fp32", "tf32"):
        adapter = PropagateLite0Adapter(build_lite0(device="cuda").net, "cuda",
                                        settings_for("propagate-lite0", short_side=64, precision=precision))
        encode = adapter.encode_query
        adapter.encode_query = lambda image: (seen.append(torch.backends.cudnn.allow_tf32), encode(image))[1]
        frames = gradient_frames(2, 48, 64)
        first = _two_objects()
        list(propagate(adapter, frames, {0: first}, num_frames=2, device="cuda"))
    assert seen == [False, False, True, True]
    assert torch.backends.cudnn.allow_tf32  # the user's setting is back
