"""``vostool train``: fine-tune (or train from scratch) a trainable model on annotated clips.

    from vostool.train import train, TrainSettings
    report = train("my_clips/", "my.pth", model="lite0-stcn", settings=TrainSettings(steps=200))

then ``vostool segment clip.mp4 --mask f0.png --model lite0-stcn --weights my.pth``.
"""

from vostool.train.data import SamplerSettings, TrainClip, TripletSampler, find_clips
from vostool.train.loop import TrainReport, TrainSettings, curve_path, state_path, train, trainable_models

__all__ = [
    "SamplerSettings", "TrainClip", "TrainReport", "TrainSettings", "TripletSampler", "curve_path", "find_clips",
    "state_path", "train", "trainable_models",
]
