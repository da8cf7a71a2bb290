"""Model specs: listing them never imports torch, and a third-party model registered through the
``vostool.models`` entry point group runs through ``segment``, ``bench`` and ``weights`` like a built-in.

Each check runs vostool in a subprocess, because the entry points and ``sys.modules`` of this test
process are already fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT
from vostool.models.registry import MODELS

# The plugin: a torch-free spec, and beside it a real (tiny) network. Its key is a learned 1x1
# projection of the stride-8 mean colour, read from a bundled checkpoint; its readout is the engine's
# L2 top-k. With the shipped weights it tracks flat-coloured objects exactly; with other weights it does not.
TOY_SPEC = '''
from pathlib import Path

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import EveryNthFrame
from vostool.models.spec import PIP_WHEEL, CheckpointSpec, ModelSpec


def weights_file() -> str:
    return str(Path(__file__).with_name("toy.pth"))


SPEC = ModelSpec(
    name="toy",
    summary="colour keys at stride 8, L2 top-k readout",
    paper="none (a test plugin)",
    builder="toyvos.adapter:build",
    layout_fn="toyvos.adapter:checkpoint_layout",
    defaults=ModelSettings(Preprocessing(short_side=None, stride=8), EveryNthFrame(every=1, max_frames=4), top_k=4),
    needs_checkpoint=False,
    checkpoints=(
        CheckpointSpec(
            name="toy-colour",
            filename="toy.pth",
            source=PIP_WHEEL,
            licence="test",
            description="identity colour projection, scaled by 4",
            sha256="{sha256}",
            size_bytes={size},
            default=True,
            locate=weights_file,
        ),
    ),
)
'''

TOY_ADAPTER = '''
import torch
import torch.nn.functional as F
from torch import nn

from vostool.engine.readout import topk_l2_readout
from vostool.models.checkpoint import expected_layout, load_checkpoint, load_exact_state

STRIDE = 8


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.key_proj = nn.Conv2d(3, 3, kernel_size=1)

    def forward(self, image):
        return self.key_proj(F.avg_pool2d(image, STRIDE))[0]


class ToyAdapter:
    def __init__(self, net, device, settings):
        self.net = net.to(device).eval()
        self.settings = settings

    @torch.no_grad()
    def encode_query(self, image):
        return self.net(image)

    def memory_key(self, query):
        return query

    def encode_value(self, image, query, masks, state):
        return F.avg_pool2d(masks, STRIDE)[:, 0]

    @torch.no_grad()
    def segment(self, query, memory, state):
        keys = torch.cat([e.key.flatten(1) for e in memory.entries], dim=1)
        values = torch.cat([memory.values(i).flatten(1) for i in range(len(memory.entries))], dim=1)
        read = topk_l2_readout(keys, values[:, :, None], query.flatten(1), self.settings.top_k)
        read = read.view(len(memory.objects), 1, *query.shape[1:])
        return F.interpolate(read, scale_factor=STRIDE, mode="nearest")


def build(weights, device, settings):
    net = ToyNet()
    if weights is not None:
        load_exact_state(net, load_checkpoint(weights), "toy", weights)
    return ToyAdapter(net, device, settings)


def checkpoint_layout():
    return expected_layout(ToyNet())
'''

LIST_SPECS = '''
import sys
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from vostool.models.registry import MODELS
from vostool.weights import list_checkpoints

print(json.dumps({
    "models": list(MODELS),
    "checkpoints": [c.name for c in list_checkpoints()],
    "papers": {name: spec.paper for name, spec in MODELS.items()},
    "torch_imported": "torch" in sys.modules,
    "warnings": [str(w.message) for w in caught],
}))
'''


def toy_weights() -> dict[str, torch.Tensor]:
    return {"key_proj.weight": 4 * torch.eye(3)[:, :, None, None], "key_proj.bias": torch.zeros(3)}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the ``toyvos`` distribution (its entry point included) and a broken one."""
    site = tmp_path_factory.mktemp("site")
    package = site / "toyvos"
    package.mkdir()
    torch.save(toy_weights(), package / "toy.pth")
    data = (package / "toy.pth").read_bytes()
    spec = TOY_SPEC.replace("{sha256}", hashlib.sha256(data).hexdigest()).replace("{size}", str(len(data)))
    (package / "__init__.py").write_text(spec)
    (package / "adapter.py").write_text(TOY_ADAPTER)
    for dist, entry in [("toyvos", "toy = toyvos:SPEC"), ("brokenvos", "broken = brokenvos_missing:SPEC")]:
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[vostool.models]\n{entry}\n")
    return site


def run_vostool(site: Path | None, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(site, tmp_path, ["-m", "vostool.cli", *args])


def _run(site: Path | None, tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    paths = [str(site)] if site is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPO_ROOT)]),
           "VOSTOOL_HOME": str(tmp_path / "home"), "VOSTOOL_OFFLINE": "1"}
    return subprocess.run([sys.executable, *argv], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)


def list_specs(site: Path | None, tmp_path: Path) -> dict:
    result = _run(site, tmp_path, ["-c", "import json\n" + LIST_SPECS])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_listing_models_and_checkpoints_does_not_import_torch(tmp_path):
    listed = list_specs(None, tmp_path)
    assert listed["models"] == list(MODELS) and "stcn-s012" in listed["checkpoints"]
    assert not listed["torch_imported"] and not listed["warnings"]
    assert listed["papers"]["simvos-b"] == "SimVOS (ICCV 2023)"


def test_an_entry_point_adds_a_model_and_a_broken_one_is_skipped(plugin_site, tmp_path):
    listed = list_specs(plugin_site, tmp_path)
    assert listed["models"][-1] == "toy" and "toy-colour" in listed["checkpoints"]
    assert not listed["torch_imported"]  # the plugin's spec is read, its network is not imported
    assert len(listed["warnings"]) == 1 and "brokenvos_missing:SPEC" in listed["warnings"][0]


def write_clip(folder: Path, frames: int) -> tuple[Path, list[np.ndarray]]:
    """Two flat-coloured squares (ids 7 and 3), the red one moving: PNG frames in ``folder/frames`` and
    the first frame's mask; returns the frame folder and the true label maps."""
    (folder / "frames").mkdir()
    truth = []
    for t in range(frames):
        image = np.full((48, 64, 3), 40, np.uint8)
        labels = np.zeros((48, 64), np.uint8)
        x = 8 + 8 * (t % 3)
        image[8:24, x : x + 16], labels[8:24, x : x + 16] = (250, 20, 20), 7
        image[32:40, 40:56], labels[32:40, 40:56] = (20, 250, 20), 3
        Image.fromarray(image).save(folder / "frames" / f"{t:05d}.png")
        truth.append(labels)
    Image.fromarray(truth[0]).save(folder / "mask.png")
    return folder / "frames", truth


def segment_toy(site: Path, tmp_path: Path, frames: Path, *options: str) -> subprocess.CompletedProcess:
    return run_vostool(site, tmp_path, "segment", str(frames), "--mask", str(tmp_path / "mask.png"), "--model",
                       "toy", "--device", "cpu", "--out", str(tmp_path / "out"), *options)


def test_a_plugin_model_segments_benches_and_lists_its_weights(plugin_site, tmp_path):
    frames, truth = write_clip(tmp_path, 5)
    result = segment_toy(plugin_site, tmp_path, frames, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["objects"] == [3, 7]
    for t, expected in enumerate(truth):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out" / f"{t:05d}.png")), expected)

    result = run_vostool(plugin_site, tmp_path, "bench", "--model", "toy", "--device", "cpu", "--frames", "2",
                         "--repeats", "1", "--warmup", "0", "--no-growth", "--size", "32", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    (bench,) = json.loads(result.stdout)["results"]
    assert bench["model"] == "toy" and bench["weights"] == "bundled" and bench["model_only"]["fps"] > 0

    result = run_vostool(plugin_site, tmp_path, "weights", "list", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout) if r["model"] == "toy"]
    shipped = plugin_site / "toyvos" / "toy.pth"
    assert row["checkpoint"] == "toy-colour" and row["default"] and row["cached"] == str(shipped)

    result = run_vostool(plugin_site, tmp_path, "weights", "verify", str(shipped))
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())  # Rich may wrap the line
    assert "(toy, 2 tensors" in printed and "matches: registry" in printed


def test_a_changed_bundled_file_is_refused_before_segmenting(plugin_site, tmp_path):
    """The bundled default is checked against its registered sha256 (propagate-lite0's wheel file too)."""
    site = tmp_path / "site"
    shutil.copytree(plugin_site, site)
    data = bytearray((site / "toyvos" / "toy.pth").read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes
    (site / "toyvos" / "toy.pth").write_bytes(bytes(data))
    frames, _ = write_clip(tmp_path, 2)
    result = segment_toy(site, tmp_path, frames)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "toy.pth" in result.stderr and "sha256" in result.stderr
    assert not (tmp_path / "out").exists()
