"""SITVOS (Lan et al., AAAI 2022): the model's spec; network and adapter beside it."""

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import EveryNthFrame
from vostool.models.spec import ModelSpec

# As the official DAVIS loop: native resolution; frames enter un-normalised because the backbone's
# own mean/std buffers normalise them after padding (identity normalisation here); the previous
# prediction is cropped to the frame and padded with zeros again before it is memorised. Memory: the
# annotated frame, every 12th frame (the released eval script's Mem_every) and the previous frame.
OFFICIAL_PREPROCESSING = Preprocessing(
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), short_side=None, stride=16, zero_padded_memory_masks=True
)

SPEC = ModelSpec(
    name="sitvos",
    summary="Siamese ResNet-50 + interactive transformer; no released weights (--weights)",
    paper="SITVOS (AAAI 2022)",
    builder="vostool.models.sitvos.adapter:build",
    layout_fn="vostool.models.sitvos.adapter:checkpoint_layout",
    defaults=ModelSettings(preprocessing=OFFICIAL_PREPROCESSING, memory=EveryNthFrame(every=12, keep_previous=True)),
    unreleased="SITVOS released no checkpoint (the official README gives no weights link); "
    "train one with the official code and pass it with --weights PATH",
)
