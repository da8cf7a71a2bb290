"""SimVOS (Wu et al., ICCV 2023): the specs of its three released variants; network and adapter beside them.

Every URL and number here is copied from ``shared/spec/simvos/SPEC.md``, which quotes the official
repository (jimmy-dq/SimVOS). The publisher states no file sizes or hashes.
"""

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import FirstAndPrevious
from vostool.models.spec import GOOGLE_DRIVE, CheckpointSpec, ModelSpec

_LICENCE = "not stated for the weights; code at https://github.com/jimmy-dq/SimVOS"
_PAPER = "SimVOS (ICCV 2023)"
_ADAPTER = "vostool.models.simvos.adapter"
# Every variant: memory = the annotated frame (pinned) + the previous frame. The official DAVIS
# evaluation runs on 480p frames as stored, and its YouTube-VOS loader resizes the short side to 480:
# short side 480 is a no-op on 480p input and gives other videos the token grid (about 30 x 54) the
# released checkpoints were evaluated at. Patches are 16 pixels.
DEFAULTS = ModelSettings(preprocessing=Preprocessing(short_side=480, stride=16), memory=FirstAndPrevious())


def _drive_file(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=drive_link"


SPECS = (
    ModelSpec(
        name="simvos-b",
        summary="one ViT-B for joint feature extraction and matching",
        paper=_PAPER,
        builder=f"{_ADAPTER}:build_simvos_b",
        layout_fn=f"{_ADAPTER}:layout_simvos_b",
        defaults=DEFAULTS,
        checkpoints=(
            CheckpointSpec(
                name="simvos-b",
                filename="simvos_b.pth",
                source=GOOGLE_DRIVE,
                licence=_LICENCE,
                description="ViT-B, no within-frame layers, no token refinement",
                # The README's link for this file is malformed; the spec resolves it to this id.
                urls=(_drive_file("1uSobYg2JQzpR-Lwb81YsUoyjEr1jaTwJ"),),
                headline=(
                    ("DAVIS 2016 val J&F", 92.9),
                    ("DAVIS 2017 val J&F", 88.0),
                    ("DAVIS 2017 test-dev J&F", 80.4),
                    ("YouTubeVOS 2019 val G", 84.2),
                ),
                default=True,
            ),
        ),
    ),
    ModelSpec(
        name="simvos-l",
        summary="as SimVOS-B with a ViT-L",
        paper=_PAPER,
        builder=f"{_ADAPTER}:build_simvos_l",
        layout_fn=f"{_ADAPTER}:layout_simvos_l",
        defaults=DEFAULTS,
        checkpoints=(
            CheckpointSpec(
                name="simvos-l",
                filename="simvos_l.pth",
                source=GOOGLE_DRIVE,
                licence=_LICENCE,
                description="ViT-L, no within-frame layers, no token refinement",
                urls=(_drive_file("1bh2FyaoRlTdupvCHRiJc9O9vnRhSkcE8"),),
                headline=(
                    ("DAVIS 2016 val J&F", 93.6),
                    ("DAVIS 2017 val J&F", 88.5),
                    ("DAVIS 2017 test-dev J&F", 82.3),
                ),
                default=True,
            ),
        ),
    ),
    ModelSpec(
        name="simvos-bs",
        summary="ViT-B, within-frame attention + token refinement (faster)",
        paper=_PAPER,
        builder=f"{_ADAPTER}:build_simvos_bs",
        layout_fn=f"{_ADAPTER}:layout_simvos_bs",
        defaults=DEFAULTS,
        checkpoints=(
            CheckpointSpec(
                name="simvos-bs",
                filename="simvos_bs.pth",
                source=GOOGLE_DRIVE,
                licence=_LICENCE,
                description="ViT-B, 4 within-frame layers, token refinement 384/384",
                urls=(_drive_file("1v1FdDc5oFFUOBZ_Oc2yhPxDZpbHpTYsY"),),
                headline=(
                    ("DAVIS 2016 val J&F", 91.5),
                    ("DAVIS 2017 val J&F", 87.1),
                    ("DAVIS 2017 test-dev J&F", 79.3),
                ),
                default=True,
            ),
        ),
    ),
)
