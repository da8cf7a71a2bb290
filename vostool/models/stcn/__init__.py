"""STCN (Cheng, Tai, Tang, NeurIPS 2021): the model's spec; network and adapter beside it.

Every URL and number here is copied from ``shared/spec/stcn/SPEC.md``, which quotes the official
repository (hkchengrex/STCN). The publisher states no file sizes or hashes: the first verified download
records its own hash (see :mod:`vostool.weights.cache`).
"""

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import EveryNthFrame
from vostool.models.spec import GOOGLE_DRIVE, CheckpointSpec, ModelSpec

_LICENCE = "not stated for the weights; code at https://github.com/hkchengrex/STCN"
_ONEDRIVE = "https://uillinoisedu-my.sharepoint.com/:u:/g/personal/hokeikc2_illinois_edu/"

SPEC = ModelSpec(
    name="stcn",
    summary="space-time correspondence, L2 affinity, top-k memory readout",
    paper="STCN (NeurIPS 2021)",
    builder="vostool.models.stcn.adapter:build",
    layout_fn="vostool.models.stcn.adapter:checkpoint_layout",
    # The official generic-video script: short side 480, a memory frame every 5th frame, top-k 20.
    # DAVIS evaluation runs at native resolution (size -1).
    defaults=ModelSettings(
        preprocessing=Preprocessing(short_side=480, stride=16), memory=EveryNthFrame(every=5), top_k=20
    ),
    checkpoints=(
        CheckpointSpec(
            name="stcn-s012",
            filename="stcn.pth",
            source=GOOGLE_DRIVE,
            licence=_LICENCE,
            description="static images, then BL30K, then DAVIS + YouTubeVOS (the better model)",
            urls=(
                "https://drive.google.com/uc?id=1mRrE0uCI2ktdWlUgapJI_KmgeIiF2eOm",
                _ONEDRIVE + "Eav35v3GZIZFiq6dv9BM8n0BHtR1hD7QU9tcxH7hylG3dA?e=NXJpTu",
            ),
            headline=(
                ("DAVIS 2016 val J&F", 91.7),
                ("DAVIS 2017 val J&F", 85.3),
                ("DAVIS 2017 test-dev J&F", 79.9),
                ("YouTubeVOS 2018 val G", 84.3),
                ("YouTubeVOS 2019 val G", 84.2),
                ("DAVIS 2017 val FPS (RTX 2080 Ti, fp32)", 20.2),
            ),
            default=True,
        ),
        CheckpointSpec(
            name="stcn-s03",
            filename="stcn_s03.pth",
            source=GOOGLE_DRIVE,
            licence=_LICENCE,
            description="static images, then DAVIS + YouTubeVOS, without BL30K",
            urls=(
                "https://drive.google.com/file/d/1JllXPJZola0G-g1aUQfXe9nLMBioj-aH/view?usp=sharing",
                _ONEDRIVE + "EdhurrdqNTFIoK43NsboxOgBPTsMlJBoKOirflGUn-JqBA?e=8NATDz",
            ),
            headline=(
                ("DAVIS 2016 val J&F", 91.6),
                ("DAVIS 2017 val J&F", 85.4),
                ("DAVIS 2017 test-dev J&F", 76.1),
                ("YouTubeVOS 2018 val G", 83.0),
                ("YouTubeVOS 2019 val G", 82.7),
            ),
        ),
    ),
)
