"""JointFormer (Zhang et al., TPAMI 2025): the model's spec; network and adapter beside it.

Every URL and number here is copied from ``shared/spec/jointformer/SPEC.md``, which quotes the official
repository (MCG-NJU/JointFormer). The publisher states no file sizes or hashes.
"""

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import WorkingMemory
from vostool.models.spec import GITHUB_RELEASE, CheckpointSpec, ModelSpec

_LICENCE = "not stated for the weights; code at https://github.com/MCG-NJU/JointFormer"
_RELEASE = "https://github.com/MCG-NJU/JointFormer/releases/download/v0.1/"

# (stages, what they were trained on, headline numbers); the paper reports numbers for s2/s02/s012.
# s0 and s01 are pretraining stages (s0 even has a single-object layout) and are not registered.
_FILES: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...] = (
    (
        "s2",
        "DAVIS 2017 + YouTubeVOS 2019 from the ConvMAE initialisation (paper: Ours)",
        (
            ("DAVIS 2017 val J&F", 89.1),
            ("DAVIS 2017 test-dev J&F", 87.0),
            ("YouTubeVOS 2018 val G", 86.0),
            ("YouTubeVOS 2019 val G", 86.2),
        ),
    ),
    (
        "s02",
        "static images, then DAVIS + YouTubeVOS (paper: Ours*)",
        (
            ("DAVIS 2016 val J&F", 92.1),
            ("DAVIS 2017 val J&F", 89.7),
            ("DAVIS 2017 test-dev J&F", 87.6),
            ("YouTubeVOS 2018 val G", 87.0),
            ("YouTubeVOS 2019 val G", 87.0),
        ),
    ),
    (
        "s012",
        "static images, then BL30K, then DAVIS + YouTubeVOS (paper: Ours*†)",
        (
            ("DAVIS 2016 val J&F", 92.4),
            ("DAVIS 2017 val J&F", 90.1),
            ("DAVIS 2017 test-dev J&F", 88.1),
            ("YouTubeVOS 2018 val G", 87.6),
            ("YouTubeVOS 2019 val G", 87.4),
        ),
    ),
    ("s24", "fine-tuned on VOST", ()),
    ("s024", "fine-tuned on VOST", ()),
    ("s5", "fine-tuned on MOSE", ()),
    ("s05", "fine-tuned on MOSE", ()),
    ("s015", "fine-tuned on MOSE", ()),
    ("s026", "fine-tuned on LVOS", ()),
    ("s0126", "fine-tuned on LVOS", ()),
    ("s7", "fine-tuned on VISOR", ()),
    ("s07", "fine-tuned on VISOR", ()),
)

SPEC = ModelSpec(
    name="jointformer",
    summary="one ConvMAE for features, matching and a compressed-memory token",
    paper="JointFormer (TPAMI 2025)",
    builder="vostool.models.jointformer.adapter:build",
    layout_fn="vostool.models.jointformer.adapter:checkpoint_layout",
    # eval.sh "DAVIS 2017 val" settings (SPEC §9): memory {frame 0, previous frame}, a memory frame
    # every 5th frame, top-60 reference tokens; the official VideoReader resizes the short side to
    # 480 with a bilinear resize of the normalised frame. YouTube-VOS used max_frames=3 and top_k=120.
    defaults=ModelSettings(
        preprocessing=Preprocessing(short_side=480, stride=16, resize_mode="bilinear"),
        memory=WorkingMemory(every=5, max_frames=1),
        top_k=60,
    ),
    checkpoints=tuple(
        CheckpointSpec(
            name=f"jointformer-{stages}",
            filename=f"jointformer_{stages}.pth",
            source=GITHUB_RELEASE,
            licence=_LICENCE,
            description=what,
            urls=(f"{_RELEASE}jointformer_{stages}.pth",),
            headline=headline,
            # The best DAVIS/YouTubeVOS model, as STCN's default is its BL30K-pretrained s012.
            default=stages == "s012",
        )
        for stages, what, headline in _FILES
    ),
)
