"""`vostool train` and lite0-stcn: data discovery and sampling, the training loop (determinism, resume,
interrupts, the loss curve), the mechanism of fine-tuning, and the CLI's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import assert_one_line_error, save_palette_png, write_frames
from vostool.cli import app
from vostool.errors import InputError, ModelError
from vostool.train import SamplerSettings, TrainSettings, TripletSampler, find_clips, state_path, train
from vostool.train.loop import build_trainable
from vostool.train.loss import bootstrapped_cross_entropy, hard_pixel_fraction

runner = CliRunner()
TINY = TrainSettings(steps=2, batch_size=2, crop=96, checkpoint_every=1, device="cpu")


def moving_disc_clip(count: int = 8, size: tuple[int, int] = (112, 144), seed: int = 0):
    """Frames of a textured disc moving over a textured background, and its label maps (object 1)."""
    rng = np.random.default_rng(seed)
    h, w = size
    background = rng.integers(0, 120, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    ys, xs = np.mgrid[0:h, 0:w]
    frames, labels = [], []
    for t in range(count):
        cy, cx = h / 2 + 10 * np.sin(t / 3), 30 + 9 * t
        inside = (ys - cy) ** 2 + (xs - cx) ** 2 < 20**2
        frame = background.copy()
        frame[inside] = (220, 200 - 10 * (t % 3), 40)
        frames.append(frame)
        labels.append(inside.astype(np.uint8))
    return frames, labels


def write_clip(root, name="disc", annotated=None, **kwargs):
    """The clip as DAVIS layout under ``root`` (PNG frames, palette masks for ``annotated`` frames)."""
    frames, labels = moving_disc_clip(**kwargs)
    write_frames(root / "JPEGImages" / "480p" / name, frames)
    for t in annotated if annotated is not None else range(len(frames)):
        save_palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels[t])
    return root


# ------------------------------------------------------------------------------------------ data


def test_find_clips_reads_davis_layouts_and_single_clips(tmp_path):
    write_clip(tmp_path / "davis", annotated=[0, 3, 5])
    (clip,) = find_clips(tmp_path / "davis")
    assert clip.name == "disc" and len(clip.frames) == 8 and clip.annotated == [0, 3, 5]
    (single,) = find_clips(tmp_path / "davis" / "JPEGImages" / "480p" / "disc",
                           masks=tmp_path / "davis" / "Annotations" / "480p" / "disc")
    assert single.annotated == [0, 3, 5]


def test_find_clips_names_a_folder_it_cannot_use(tmp_path):
    with pytest.raises(InputError, match="not a DAVIS-layout folder"):
        find_clips(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        find_clips(tmp_path / "missing")


def test_sampler_is_reproducible_and_keeps_masks_on_their_frames(tmp_path):
    clips = find_clips(write_clip(tmp_path))
    settings = SamplerSettings(size=64, max_skip=3)
    first = [TripletSampler(clips, settings, torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.manual_seed(1)
    a = first[0].sample()
    torch.manual_seed(1)
    b = first[1].sample()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    frames, masks = a
    assert frames.shape == (3, 3, 64, 64) and masks.shape == (3, 1, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and masks[0].sum() >= 100
    # the disc is the only yellow thing: the mask covers it, wherever the augmentation moved it
    yellow = (frames[:, 0] > 0.5) & (frames[:, 2] < -0.3)
    assert (yellow & (masks[:, 0] > 0)).sum() >= 0.8 * yellow.sum()


def test_triplets_are_ordered_and_within_max_skip(tmp_path):
    clips = find_clips(write_clip(tmp_path, count=30))
    sampler = TripletSampler(clips, SamplerSettings(size=64, max_skip=4), torch.Generator().manual_seed(0))
    for _ in range(50):
        frames = sampler._ordered_frames(list(range(30)))
        steps = np.diff(frames if frames[0] < frames[-1] else frames[::-1])
        assert len(frames) == 3 and (steps >= 1).all() and (steps <= 4).all()


def test_pasted_distractors_are_background(tmp_path):
    from vostool.train.data import _paste

    frame, mask = torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(8, 8, dtype=torch.bool)
    patch, shape = torch.full((3, 4, 4), 200, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.bool)
    shape[1:, 1:] = True
    _paste(frame, mask, patch, shape, -2, 6)  # clipped at the top and on the right
    assert frame[0].nonzero().tolist() == [[0, 7], [1, 7]] and (~mask).nonzero().tolist() == [[0, 7], [1, 7]]
    clips = find_clips(write_clip(tmp_path))
    settings = SamplerSettings(size=64, static_fraction=0.0, distractor_fraction=1.0)
    torch.manual_seed(0)
    frames, masks = TripletSampler(clips, settings, torch.Generator().manual_seed(0)).sample()
    yellow = (frames[:, 0] > 0.5) & (frames[:, 2] < -0.3)
    assert (yellow & (masks[:, 0] == 0)).any()  # a pasted disc, not in the target mask


def test_one_annotated_frame_gives_synthetic_sequences(tmp_path):
    clips = find_clips(write_clip(tmp_path, annotated=[2]))
    frames, masks = TripletSampler(clips, SamplerSettings(size=64), torch.Generator().manual_seed(0)).sample()
    assert not torch.equal(masks[0], masks[1])  # three different warps of the one frame


def test_shape_in_front_hides_the_target_and_textures_move_with_their_shapes():
    from vostool.train.shapes import MovingShape, compose

    size = 32
    square = torch.zeros(size, size, dtype=torch.bool)
    square[12:20, 12:20] = True  # an 8x8 square at the centre of its own coordinates
    ramp = torch.arange(size, dtype=torch.float32).expand(3, size, size)  # texture that shows displacement
    still = lambda texture: MovingShape(torch.cat([texture, square[None].float()]), torch.zeros(2),
                                        torch.zeros(2), 0.0, 0.0, 1.0)
    moving = MovingShape(torch.cat([ramp, square[None].float()]), torch.zeros(2), torch.tensor([0.25, 0.0]),
                         0.0, 0.0, 1.0)  # 0.25 of half the frame: 4 pixels right per frame
    background = torch.zeros(3, size, size)
    frame, behind = compose(background, [moving, still(torch.full((3, size, size), 255.0))], 0, 0)
    assert not behind.any() and (frame[:, square] == 255).all()  # fully hidden at t=0
    frame, behind = compose(background, [moving, still(torch.full((3, size, size), 255.0))], 0, 1)
    assert behind.sum() == 4 * 8 and behind[12:20, 20:24].all()  # comes out on the right
    frame, alone = compose(background, [moving], 0, 2)
    assert alone[12:20, 20:28].all() and alone.sum() == 64
    assert torch.allclose(frame[0, 12:20, 20:28], ramp[0, 12:20, 12:20], atol=1e-3)  # its texture moved along


def test_shape_sequences_are_reproducible_and_show_their_target(tmp_path):
    clips = find_clips(write_clip(tmp_path))
    settings = SamplerSettings(size=64, shapes_fraction=1.0)

    def draw(seed):
        torch.manual_seed(seed)
        sampler = TripletSampler(clips, settings, torch.Generator().manual_seed(seed))
        return [sampler.sample() for _ in range(8)]

    first, again = draw(3), draw(3)
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(first, again) for a, b in zip(pair_a, pair_b))
    for frames, masks in first:
        assert frames.shape == (3, 3, 64, 64) and frames.min() >= -1 and frames.max() <= 1
        assert set(masks.unique().tolist()) <= {0.0, 1.0} and masks[0].sum() >= 100
    assert any(not torch.equal(masks[0], masks[2]) for _, masks in first)  # the shapes move


# ------------------------------------------------------------------------------------------ loss


def test_bootstrapped_cross_entropy_keeps_the_hardest_pixels():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[5.0, -5.0], [0.0, 0.0]])
    target = torch.ones(1, 2, 2, dtype=torch.long)
    pixels = torch.nn.functional.cross_entropy(logits, target, reduction="none").flatten()
    assert torch.isclose(bootstrapped_cross_entropy(logits, target, 1.0), pixels.mean())
    assert torch.isclose(bootstrapped_cross_entropy(logits, target, 0.25), pixels.max())
    assert hard_pixel_fraction(0, 100) == 1.0 and hard_pixel_fraction(90, 100) == 0.15
    assert 0.15 < hard_pixel_fraction(45, 100) < 1.0


# ------------------------------------------------------------------------------------------ loop


def test_same_seed_same_weights_and_resume_continues_exactly(tmp_path):
    data = write_clip(tmp_path / "data")
    straight = train(data, tmp_path / "a.pth", model="lite0-stcn", from_scratch=True, settings=TINY)
    assert straight.steps == 2 and not state_path(tmp_path / "a.pth").exists()
    again = train(data, tmp_path / "b.pth", model="lite0-stcn", from_scratch=True, settings=TINY)
    assert straight.weights.read_bytes() == again.weights.read_bytes()  # same bytes, same sha256
    a, b = (torch.load(r.weights, weights_only=True) for r in (straight, again))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["decoder.out.weight"].dtype == torch.float16 and a["decoder.out.weight"].abs().sum() > 0

    class Stop(KeyboardInterrupt):
        pass

    def stop_after_first(step, total, loss):
        if step == 1:
            raise Stop

    out = tmp_path / "c.pth"
    out.with_suffix(".loss.png").write_bytes(b"an earlier run's curve")
    with pytest.raises(Stop):
        train(data, out, model="lite0-stcn", from_scratch=True, settings=TINY, on_step=stop_after_first)
    # interrupted: the step-1 state and its curve, no weights, the earlier curve untouched
    assert not out.exists() and state_path(out).is_file() and out.with_name("c.pth.state.png").is_file()
    assert out.with_suffix(".loss.png").read_bytes() == b"an earlier run's curve"
    resumed = train(data, out, model="lite0-stcn", from_scratch=True, settings=TINY, resume=True)
    assert resumed.resumed_from == 1
    c = torch.load(out, weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.")) == ["c.loss.png", "c.pth"]
    with Image.open(resumed.loss_curve) as curve:
        assert curve.size == (800, 400)


def test_resume_refuses_other_settings(tmp_path):
    data = write_clip(tmp_path / "data")
    out = tmp_path / "w.pth"

    def stop_at_second(step, total, loss):
        if step == 2:
            raise KeyboardInterrupt

    settings = TrainSettings(steps=3, batch_size=2, crop=96, checkpoint_every=1, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(data, out, model="lite0-stcn", from_scratch=True, settings=settings, on_step=stop_at_second)
    assert state_path(out).is_file() and not out.exists()
    other = TrainSettings(steps=3, batch_size=2, crop=96, checkpoint_every=1, device="cpu", learning_rate=1e-2)
    with pytest.raises(InputError, match="learning_rate"):
        train(data, out, model="lite0-stcn", from_scratch=True, settings=other, resume=True)


def test_only_trainable_models_train(tmp_path):
    with pytest.raises(ModelError, match="cannot be trained"):
        build_trainable("stcn", None, torch.device("cpu"))


def fixed_batches(data, count=3, seed=123):
    sampler = TripletSampler(find_clips(data), SamplerSettings(size=96, max_skip=3), torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    return [[sampler.sample() for _ in range(2)] for _ in range(count)]


def clip_loss(weights, batches) -> float:
    trainable = build_trainable("lite0-stcn", weights, torch.device("cpu"))
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            frames = torch.stack([f for f, _ in batch])
            masks = torch.stack([m for _, m in batch])
            outputs = trainable.forward(frames, masks)
            total += sum(torch.nn.functional.cross_entropy(o, masks[:, t + 1, 0].long()) for t, o in enumerate(outputs))
    return float(total) / len(batches)


def test_fine_tuning_on_a_clip_lowers_its_loss_and_changes_its_masks(tmp_path):
    from vostool.api import segment

    data = write_clip(tmp_path / "data", count=10)
    batches = fixed_batches(data)
    settings = TrainSettings(steps=12, batch_size=2, crop=96, max_skip=3, learning_rate=2e-3, device="cpu")
    report = train(data, tmp_path / "tuned.pth", model="lite0-stcn", settings=settings)
    from vostool.models.lite0_stcn import shipped_checkpoint_path

    assert clip_loss(report.weights, batches) < clip_loss(shipped_checkpoint_path(), batches)
    frames = data / "JPEGImages" / "480p" / "disc"
    first = data / "Annotations" / "480p" / "disc" / "00000.png"
    for name, weights in (("shipped", None), ("tuned", report.weights)):
        segment(frames, first, model="lite0-stcn", weights=weights, out_dir=tmp_path / name, device="cpu")
    shipped, tuned = (np.stack([np.array(Image.open(p)) for p in sorted((tmp_path / n).glob("*.png"))])
                      for n in ("shipped", "tuned"))
    assert shipped.shape == tuned.shape == (10, 112, 144) and (shipped != tuned).any()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_trains_and_reports(tmp_path):
    data = write_clip(tmp_path / "data")
    out = tmp_path / "w.pth"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--steps", "2", "--batch-size", "1",
                                 "--crop", "64", "--device", "cpu", "--from-scratch"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and out.is_file() and out.with_suffix(".loss.png").is_file()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["{data}", "--out", "{tmp}/w.txt"], ("w.txt", "must end in .pth")),
        (["{data}", "--out", "{data}/w.pth"], ("inside the training data",)),
        (["{tmp}/nope", "--out", "{tmp}/w.pth"], ("nope", "no such folder")),
        (["{data}", "--out", "{tmp}/w.pth", "--crop", "100"], ("--crop", "multiple of 16")),
        (["{data}", "--out", "{tmp}/w.pth", "--init", "stcn"], ("cannot be trained",)),
        (["{data}", "--out", "{tmp}/w.pth", "--init", "nosuch"], ("unknown model",)),
        (["{data}", "--out", "{tmp}/w.pth", "--steps", "0"], ("--steps", "at least 1")),
        (["{data}", "--out", "{tmp}/w.pth", "--shapes", "1.5"], ("--shapes", "between 0 and 1")),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, fragments):
    data = write_clip(tmp_path / "data", count=4)
    argv = ["train"] + [a.format(data=data, tmp=tmp_path) for a in args] + ["--device", "cpu"]
    assert_one_line_error(runner.invoke(app, argv), *fragments)
    assert not list(tmp_path.glob("*.pth"))
