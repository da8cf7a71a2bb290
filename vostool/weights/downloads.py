"""Downloading checkpoints into the cache: HTTPS with resume, retries and Google Drive's confirm step.

A download goes to ``<file>.<url-hash>.part`` in the cache folder. An interrupted transfer (a dropped
connection, a killed process) is resumed from that file with an HTTP Range request; a server that
ignores the range sends the whole file again and the part file is restarted. Once complete, the part
file is verified (registry size/hash, the hash the user gave, the exact layout), its sha256 is
recorded, and only then is it renamed to its final name, so a cached file is always a verified one.

Offline mode (``offline=True`` or ``VOSTOOL_OFFLINE=1``, decided by :func:`offline_requested` alone)
never touches the network: a cached checkpoint is returned, an uncached one is an error at once.

Only the standard library is used for HTTP. Google Drive answers a large file's download URL with an
HTML "can't scan this file for viruses" page; both of its forms are handled: the old one (a
``download_warning`` cookie or a ``confirm=`` link) and the current one (a ``download-form`` whose
hidden inputs must be sent to its action URL).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit
from urllib.request import HTTPCookieProcessor, OpenerDirector, Request, build_opener

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vostool import __version__
from vostool.errors import InputError, ModelError, OutputError
from vostool.weights.cache import cache_file, is_sha256, read_recorded_sha256, record_sha256
from vostool.weights.registry import Checkpoint
from vostool.weights.verify import LayoutProvider, check_hashes, default_layout_of, layout_for, verify

DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 1.0
"""Wait before the first retry; doubled before each further one."""
DEFAULT_TIMEOUT_S = 60.0
OFFLINE_ENV = "VOSTOOL_OFFLINE"
_TRUE = {"1", "true", "yes", "on"}

_CHUNK = 1 << 20
_MAX_HTML_BYTES = 1 << 20
_MAX_CONFIRM_HOPS = 3
# Statuses worth retrying: the server is overloaded, rate limiting, or timed out.
_TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}
_DRIVE_HOSTS = {"drive.google.com", "docs.google.com"}
_DRIVE_ID = re.compile(r"/file/d/([\w-]+)")


class DownloadError(ModelError):
    """A checkpoint could not be downloaded; the message names the URL and the reason."""


class _RetryableError(Exception):
    """A failure that another attempt (resuming the part file) may get past."""


def offline_requested(flag: bool = False) -> bool:
    """True when the ``--offline`` flag is set or ``VOSTOOL_OFFLINE`` is 1/true/yes/on."""
    return flag or os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def offline_message(ckpt: Checkpoint) -> str:
    """Why an uncached checkpoint cannot be used offline, and the two ways to get it."""
    return (
        f"{ckpt.model}: the {ckpt.name} checkpoint is not in the cache ({cache_file(ckpt)}) and "
        f"downloads are off (--offline or {OFFLINE_ENV}=1); run `vostool weights download "
        f"{ckpt.name}` while online, or download {ckpt.urls[0]} and pass it with --weights PATH"
    )


def download(
    ckpt: Checkpoint,
    *,
    progress: bool = True,
    force: bool = False,
    offline: bool = False,
    expected_sha256: str | None = None,
    layout_of: LayoutProvider | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Make sure ``ckpt`` is in the cache, verified, and return its path.

    A cached copy is checked against its recorded hash and returned; ``force`` downloads it again.
    Each URL of the checkpoint (mirrors) is tried in turn. Offline (``offline`` or
    ``VOSTOOL_OFFLINE``), nothing is downloaded: an uncached checkpoint, or ``force``, raises
    :class:`DownloadError` at once. Raises :class:`DownloadError` naming the URLs when none works,
    :class:`ModelError` when the file is not a checkpoint of its model.
    """
    if expected_sha256 is not None and not is_sha256(expected_sha256.strip()):
        raise InputError(f"{expected_sha256!r} is not a sha256 (64 hex digits)")
    if ckpt.bundled:
        return checked_cache_file(ckpt, expected_sha256=expected_sha256, layout_of=layout_of)
    target = cache_file(ckpt)
    if target.is_file() and not force:
        return checked_cache_file(ckpt, expected_sha256=expected_sha256, layout_of=layout_of)
    if offline_requested(offline):
        if force:
            raise DownloadError(f"{ckpt.name}: cannot download it again (--force) while downloads are "
                                f"off (--offline or {OFFLINE_ENV}=1)")
        raise DownloadError(offline_message(ckpt))
    try:  # refuse before any network access when there is no network to check the file against
        layout_for(ckpt.model, layout_of or default_layout_of)
    except ModelError as exc:
        raise ModelError(f"{ckpt.name}: {exc} (the file is at {ckpt.urls[0]})") from None
    _make_folder(target.parent)
    failures = []
    for url in ckpt.urls:
        part = part_file(target, url)
        if force:
            part.unlink(missing_ok=True)
        try:
            fetch(url, part, label=ckpt.name, progress=progress, retries=retries,
                  backoff_s=backoff_s, timeout_s=timeout_s)
        except DownloadError as exc:
            failures.append(str(exc))  # the part file stays: a later run resumes it
            continue
        try:
            result = verify(part, ckpt.model, expected_sha256, layout_of, checkpoint=ckpt)
        except ModelError as exc:
            # A complete file that is not the checkpoint: drop it, and try the next mirror.
            part.unlink(missing_ok=True)
            failures.append(f"{url} served a file that failed verification: "
                            + str(exc).removeprefix(f"{part}: "))
            continue
        record_sha256(target, result.sha256)
        os.replace(part, target)
        _remove_part_files(target)
        return target
    raise DownloadError(f"could not download {ckpt.name}: " + "; ".join(failures))


def checked_cache_file(
    ckpt: Checkpoint, *, expected_sha256: str | None = None, layout_of: LayoutProvider | None = None
) -> Path:
    """The cached (or bundled) file of ``ckpt``, after checking it has not changed.

    A file with a recorded sha256 (or a published one) only needs its hash compared. A file without
    any (copied into the cache by hand) is verified in full, layout included, and its hash recorded.
    A file whose hash changed raises :class:`ModelError` and is never used.
    """
    path = cache_file(ckpt)
    if not path.is_file():
        raise ModelError(f"{ckpt.name} is not in the cache", path)
    if ckpt.sha256 is not None or read_recorded_sha256(path) is not None:
        check_hashes(path, expected_sha256, ckpt)
        return path
    result = verify(path, ckpt.model, expected_sha256, layout_of, checkpoint=ckpt)
    record_sha256(path, result.sha256)
    return path


def part_file(target: Path, url: str) -> Path:
    """The partial-download file of ``target`` from ``url``.

    One per URL, so a resume never appends bytes from one mirror to bytes from another.
    """
    tag = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return target.with_name(f"{target.name}.{tag}.part")


def _remove_part_files(target: Path) -> None:
    for leftover in target.parent.glob(f"{target.name}.*.part"):
        leftover.unlink(missing_ok=True)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the weights cache ({exc.strerror or exc})", folder) from exc


# --------------------------------------------------------------------------------------------
# Transport


def fetch(
    url: str,
    dest: Path,
    *,
    label: str | None = None,
    progress: bool = True,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Download ``url`` into ``dest``, resuming from whatever ``dest`` already holds.

    Transient failures (dropped connections, timeouts, 5xx, 429) are retried ``retries`` times with
    exponential backoff, each retry resuming where the last one stopped. Raises
    :class:`DownloadError` naming the URL on a permanent failure or when the retries run out.
    """
    opener = build_opener(HTTPCookieProcessor(CookieJar()))
    request_url = direct_download_url(url)
    with _progress_bar(label or dest.name, enabled=progress) as bar:
        last_error: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                _transfer(opener, request_url, dest, bar, timeout_s)
                return
            except HTTPError as exc:
                if exc.code not in _TRANSIENT_STATUSES:
                    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
                last_error = exc
            except (_RetryableError, URLError, OSError, http.client.HTTPException) as exc:
                last_error = exc
        raise DownloadError(f"{url}: failed after {retries + 1} attempts ({_describe(last_error)})")


def _describe(exc: Exception | None) -> str:
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def direct_download_url(url: str) -> str:
    """The URL that serves the file itself for a share link (Google Drive, OneDrive), else ``url``."""
    parts = urlsplit(url)
    if parts.hostname in _DRIVE_HOSTS:
        query = dict(parse_qsl(parts.query))
        match = _DRIVE_ID.search(parts.path)
        file_id = match.group(1) if match else query.get("id")
        if file_id:
            return f"https://drive.google.com/uc?export=download&id={file_id}"
    if parts.hostname and parts.hostname.endswith(".sharepoint.com"):
        # An anonymous OneDrive share link serves the file instead of a viewer with download=1.
        return _with_query(url, {"download": "1"})
    return url


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(extra)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _transfer(opener: OpenerDirector, url: str, dest: Path, bar: _Bar, timeout_s: float) -> None:
    """One attempt: request the missing bytes of ``dest`` and append them."""
    offset = dest.stat().st_size if dest.exists() else 0
    try:
        response = _open_file(opener, url, offset, timeout_s)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            _range_not_satisfiable(exc, dest, offset)
            return
        raise
    with response:
        start, total = _content_range(response, offset)
        if start == 0 and offset:
            offset = 0  # the server ignored the Range header and sends the whole file
        bar.start(total, offset)
        with _open_for_writing(dest, append=bool(offset)) as handle:
            # Reading errors (network) propagate for a retry; writing errors are the disk's.
            while chunk := response.read(_CHUNK):
                _write(handle, chunk, dest)
                bar.advance(len(chunk))
    received = dest.stat().st_size
    if total is not None and received != total:
        # http.client returns a short body silently when the connection drops: resume next attempt.
        raise _RetryableError(f"connection closed after {received} of {total} bytes")


def _open_for_writing(dest: Path, append: bool) -> BinaryIO:
    try:
        return open(dest, "ab" if append else "wb")
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", dest) from exc


def _write(handle: BinaryIO, chunk: bytes, dest: Path) -> None:
    try:
        handle.write(chunk)
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", dest) from exc


def _range_not_satisfiable(exc: HTTPError, dest: Path, offset: int) -> None:
    # 416 with "bytes */N": the part file already holds N bytes (done) or more (restart).
    match = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else "")
    if match and int(match.group(1)) == offset:
        return
    dest.unlink(missing_ok=True)
    raise _RetryableError(f"the server refused to resume at byte {offset}; restarting")


def _content_range(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(first byte of the body, total file size if known) of a 200 or 206 response."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise _RetryableError(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
        total = None if match.group(2) == "*" else int(match.group(2))
        return offset, total
    return 0, int(length) if length and length.isdigit() else None


def _open_file(
    opener: OpenerDirector, url: str, offset: int, timeout_s: float
) -> http.client.HTTPResponse:
    """Open ``url`` for the bytes from ``offset`` on, going through Drive's confirmation pages."""
    data: bytes | None = None
    for _ in range(_MAX_CONFIRM_HOPS + 1):
        headers = {"User-Agent": f"vostool/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = opener.open(Request(url, data=data, headers=headers), timeout=timeout_s)
        if response.headers.get_content_type() != "text/html":
            return response
        with response:
            html = response.read(_MAX_HTML_BYTES).decode("utf-8", errors="replace")
            cookies = response.headers.get_all("Set-Cookie") or []
        next_step = drive_confirmation(response.geturl(), html, cookies)
        if next_step is None:
            raise DownloadError(f"{url}: served an HTML page instead of the file ({_page_title(html)})")
        url, data = next_step
    raise DownloadError(f"{url}: still an HTML page after {_MAX_CONFIRM_HOPS} confirmation steps")


def drive_confirmation(
    page_url: str, html: str, set_cookies: list[str]
) -> tuple[str, bytes | None] | None:
    """The request that confirms a Drive "large file" download: (URL, POST body or None).

    Returns None when the page is not a confirmation page (quota exceeded, not shared, a login page).
    """
    page = _PageParser()
    page.feed(html)
    for form in page.forms:
        if form["id"] in ("download-form", "downloadForm") and form["action"]:
            action = urljoin(page_url, form["action"])
            if form["method"] == "post":
                return action, urlencode(form["inputs"]).encode("ascii")
            return _with_query(action, form["inputs"]), None
    for href in page.links:
        if "confirm=" in href:
            return urljoin(page_url, href), None
    token = _download_warning_token(set_cookies)
    if token is not None:
        return _with_query(page_url, {"confirm": token}), None
    return None


def _download_warning_token(set_cookies: list[str]) -> str | None:
    for header in set_cookies:
        name, _, rest = header.partition("=")
        if name.strip().startswith("download_warning"):
            return rest.split(";", 1)[0].strip()
    return None


def _page_title(html: str) -> str:
    page = _PageParser()
    page.feed(html)
    title = " ".join(page.title.split())
    return f"page title: {title!r}" if title else "no title"


class _PageParser(HTMLParser):
    """Collects the forms (with hidden inputs), links and title of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False
        self._form: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = {
                "id": attr.get("id", ""),
                "action": attr.get("action", ""),
                "method": attr.get("method", "get").lower(),
                "inputs": {},
            }
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attr.get("type") == "hidden":
            self._form["inputs"][attr.get("name", "")] = attr.get("value", "")
        elif tag == "a" and attr.get("href"):
            self.links.append(attr["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


# --------------------------------------------------------------------------------------------
# Progress


class _Bar:
    """A rich progress bar on stderr, or nothing when disabled."""

    def __init__(self, progress: Progress | None, label: str) -> None:
        self._progress = progress
        self._task = None if progress is None else progress.add_task(label, total=None)

    def start(self, total: int | None, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)


@contextmanager
def _progress_bar(label: str, enabled: bool) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, label)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Bar(progress, label)

