"""SITVOS (Lan et al., AAAI 2022): the model's spec; network and adapter beside it."""

from vostool.models.spec import ModelSpec

SPEC = ModelSpec(
    name="sitvos",
    summary="Siamese ResNet-50 + interactive transformer; no released weights (--weights)",
    paper="SITVOS (AAAI 2022)",
    builder="vostool.models.sitvos.adapter:build",
    layout_fn="vostool.models.sitvos.adapter:checkpoint_layout",
    unreleased="SITVOS released no checkpoint (the official README gives no weights link); "
    "train one with the official code and pass it with --weights PATH",
)
