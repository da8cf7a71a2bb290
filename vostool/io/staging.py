"""Run-level atomic outputs: temporary names a later run can recognise, staged folders, and one commit.

Every output of a run is first written under a hidden temporary name beside its target: a file as
``.tmp-vostool-file-<host>-<pid>-<token>-<name>``, a folder of results as a whole folder
``.tmp-vostool-stage-...-<name>``. Only when every output is complete are they moved onto their
targets, together (:func:`commit_together`): each old output is first renamed aside
(``.tmp-vostool-old-...-<name>``), then each new one is renamed in, then the old ones are removed. A
failure or an interrupt (any ``BaseException``) at any point before the end moves everything back, so
the old outputs are exactly as they were and nothing new is left.

``<host>`` (a hash of the host name) and ``<pid>`` say which process wrote an entry: when that process
is gone, :func:`remove_stale_temps` removes it (after a crash or ``kill -9``), and puts back an old
output that a run killed in the middle of its commit had moved aside. Nothing else is ever removed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from vostool.errors import OutputError

__all__ = [
    "MASK_FOLDER",
    "RESULTS_FOLDER",
    "VIDEO_FOLDER",
    "FolderLayout",
    "StagedFolder",
    "commit_together",
    "finish_despite_interrupts",
    "make_folders",
    "path_inside",
    "remove_created_folders",
    "remove_stale_temps",
    "temp_name",
]

TEMP_PREFIX = ".tmp-vostool-"
ROLES = ("file", "stage", "old")  # a file being written, a folder being written, an old output moved aside
_TEMP_NAME = re.compile(
    r"\.tmp-vostool-(?P<role>file|stage|old)-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{12}-(?P<name>.+)\Z",
    re.DOTALL,
)
# Temporary files of vostool versions before the names above (no writer pid): only ever removed along
# with a whole output folder that holds them, never on their own.
_LEGACY_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{12}-.+\Z", re.DOTALL)
# Files that file managers drop into any folder they show; an output folder holding them is still ours.
_FILE_MANAGER_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


# ------------------------------------------------------------------------------------------ names


@functools.cache
def host_tag() -> str:
    """8 hex digits naming this machine: pids are only compared with those of processes on it."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_name(role: str, name: str) -> str:
    """A hidden temporary name for ``name`` written by this process (``role``: one of :data:`ROLES`)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return f"{TEMP_PREFIX}{role}-{host_tag()}-{os.getpid()}-{secrets.token_hex(6)}-{name}"


def is_vostool_temp(name: str) -> bool:
    """Whether ``name`` is a temporary entry of vostool (of this or an older version)."""
    return _TEMP_NAME.match(name) is not None or _LEGACY_TEMP_NAME.match(name) is not None


def pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists on this machine; True when unsure."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists but is not ours (EPERM), or cannot be asked
    return True


def remove_stale_temps(folder: str | Path) -> None:
    """Clean up after vostool runs in ``folder`` whose process is gone (same machine only).

    An old output moved aside by a run killed during its commit is put back when its target is
    missing (the commit had not finished), and removed otherwise; other temporary entries (files and
    staging folders being written) are removed. Errors are ignored: this is housekeeping.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    stale = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["host"] != host_tag() or pid_alive(int(match["pid"])):
            continue
        if entry.is_symlink():
            continue  # vostool never makes links; this is not one of its entries
        stale.append((match["role"], match["name"], Path(entry.path)))
    # Old outputs first, so one is put back before the staged folder beside it is removed.
    for role, name, path in sorted(stale, key=lambda item: item[0] != "old"):
        target = folder / name
        if role == "old" and not os.path.lexists(target):
            _rename_quietly(path, target)
        else:
            _remove(path)


def _remove(path: Path) -> None:
    """Remove a file or a folder tree (never following a link), as far as possible; never raises OSError."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass  # missing already, or cannot be removed: what is being handled matters more


def _rename_quietly(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError:
        pass  # left for a later run's clean-up: the old output stays under its aside name, not lost


def path_inside(path: str | Path, folder: str | Path) -> str | None:
    """``path`` relative to ``folder`` (POSIX form) when it lies strictly inside it (links resolved), else None."""
    real_path, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    try:
        relative = real_path.relative_to(real_folder)
    except ValueError:
        return None
    return relative.as_posix() if relative.parts else None


# ------------------------------------------------------------------------------------ interrupts


def finish_despite_interrupts(steps: Iterable[Callable[[], None]]) -> None:
    """Run every clean-up step even if an interrupt (Ctrl-C, SIGTERM) arrives during one of them.

    Each step must be safe to repeat and handle its own OSErrors; one that is interrupted is run again
    (up to three times). The first interrupt is re-raised once every step has run.
    """
    pending: BaseException | None = None
    for step in steps:
        for _ in range(3):
            try:
                step()
                break
            except BaseException as err:  # noqa: BLE001 - re-raised below, after the clean-up
                pending = pending or err
    if pending is not None:
        raise pending


# ---------------------------------------------------------------------------------------- commit


class Pending(Protocol):
    """A complete output at ``temp`` (a file or a folder) waiting to be moved onto ``final``."""

    temp: Path
    final: Path


class _Swap:
    """Moving one pending output into place; every step can be undone, judged from the file system."""

    def __init__(self, pending: Pending) -> None:
        self.temp = pending.temp
        self.final = pending.final
        self.aside = self.final.with_name(temp_name("old", self.final.name))

    def move_old_aside(self) -> None:
        if os.path.lexists(self.final):
            self._rename(self.final, self.aside)

    def move_new_in(self) -> None:
        if self.temp.is_dir() and self.aside.is_dir():
            # A replaced folder keeps its permissions (a group-shared results folder stays shared).
            try:
                os.chmod(self.temp, stat.S_IMODE(self.aside.stat().st_mode))
            except OSError:
                pass  # the default permissions are fine too
        self._rename(self.temp, self.final)

    def roll_back(self) -> None:
        """Put the old output back (whichever steps had run); the new one goes back to ``temp``."""
        if not os.path.lexists(self.temp) and os.path.lexists(self.final):
            _rename_quietly(self.final, self.temp)
        if os.path.lexists(self.aside):
            _rename_quietly(self.aside, self.final)

    def remove_old(self) -> None:
        _remove(self.aside)

    def _rename(self, source: Path, target: Path) -> None:
        try:
            os.rename(source, target)
        except OSError as err:
            raise OutputError(f"cannot move the new output into place ({err.strerror or err})", self.final) from err


def commit_together(outputs: Sequence[Pending]) -> None:
    """Move every output from its ``temp`` onto its ``final`` path: all of them, or none.

    Old outputs are renamed aside first and removed only when every new one is in place; on an error
    or an interrupt before that, everything is moved back (the new outputs to their ``temp`` paths,
    which the caller then discards) and the error is re-raised.
    """
    swaps = [_Swap(output) for output in outputs]
    try:
        for swap in swaps:
            swap.move_old_aside()
        for swap in swaps:
            swap.move_new_in()
    except BaseException:
        finish_despite_interrupts([swap.roll_back for swap in reversed(swaps)])
        raise
    finish_despite_interrupts([swap.remove_old for swap in swaps])


# ---------------------------------------------------------------------------------- staged folder


@dataclass(frozen=True)
class FolderLayout:
    """What an output folder holds: files with these suffixes, in sub-folders up to ``depth`` deep."""

    suffixes: frozenset[str]
    depth: int = 0
    noun: str = "mask"

    def describe(self) -> str:
        """What an entry should have been, for messages: "a PNG mask (or a folder of them)"."""
        kinds = "/".join(sorted(s.lstrip(".").upper() for s in self.suffixes))
        return f"a {kinds} {self.noun}" + (" or a sequence folder of them" if self.depth else "")


MASK_FOLDER = FolderLayout(frozenset({".png"}))  # vostool segment --out
RESULTS_FOLDER = FolderLayout(frozenset({".png"}), depth=1)  # <seq>/<frame>.png (eval --model, import)
VIDEO_FOLDER = FolderLayout(frozenset({".mp4"}), noun="video")  # export --format overlay-mp4 of several


class StagedFolder:
    """A new version of the folder ``target``, written in a hidden folder beside it, swapped in at the end.

    Construct it early (it checks, and clears what dead runs left beside it), then use it as a context
    manager: entering creates the staging folder :attr:`temp` (write the outputs there), leaving
    without an error swaps it in (:meth:`commit`), leaving through an exception removes it
    (:meth:`discard`). The old folder is replaced as a whole; so that no user file can be lost with
    it, an existing ``target`` may only hold what ``layout`` describes (plus ``extra``: paths inside
    it that the same run also writes), anything else is an :class:`OutputError` naming the first one.
    """

    def __init__(self, target: str | Path, layout: FolderLayout = MASK_FOLDER, extra: Iterable[str] = ()) -> None:
        self.target = Path(target)  # as the user gave it, for messages
        # Operate on the real folder: a symlink to it keeps pointing at the new version.
        self.final = Path(os.path.realpath(self.target))
        self.layout = layout
        self.extra = frozenset(Path(p).as_posix() for p in extra)
        self.temp = self.final.with_name(temp_name("stage", self.final.name or "output"))
        self._created: list[Path] = []  # missing parent folders this run made, removed again on failure
        # First, so that an old folder a killed run had moved aside is back before it is checked.
        remove_stale_temps(self.final.parent)
        self._check_target()

    def _check_target(self) -> None:
        final, parent = self.final, self.final.parent
        if not final.name:
            raise OutputError("cannot replace the root folder; give a sub-folder", self.target)
        if os.path.lexists(final):
            if not final.is_dir():
                raise OutputError("output folder is a file", self.target)
            if not os.access(final, os.W_OK | os.X_OK):
                raise OutputError("output folder is not writable", self.target)
            if os.path.ismount(final) or final.stat().st_dev != parent.stat().st_dev:
                raise OutputError(
                    "output folder is a mount point, which cannot be replaced as a whole; give a folder inside it",
                    self.target,
                )
            self._check_contents(final, 0)
        existing = _nearest_existing(parent)
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write the new output folder beside it ({existing} is not writable)", self.target)

    def _check_contents(self, folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise OutputError(f"cannot list output folder ({err.strerror or err})", self.target) from err
        for entry in entries:
            relative = Path(entry.path).relative_to(self.final).as_posix()
            if self._expected(entry, relative, depth):
                continue
            shown = relative + ("/" if entry.is_dir(follow_symlinks=False) else "")
            raise OutputError(
                f"output folder holds {shown}, which is not {self.layout.describe()}; vostool replaces the "
                f"folder as a whole, so give a new or empty folder (or move {shown} out)",
                self.target,
            )

    def _expected(self, entry: os.DirEntry, relative: str, depth: int) -> bool:
        if is_vostool_temp(entry.name) or entry.name in _FILE_MANAGER_FILES:
            return True
        if entry.is_symlink():
            return False  # replacing the folder would drop the link: the user made it
        if entry.is_dir():
            planned_inside = any(p.startswith(relative + "/") for p in self.extra)
            if depth < self.layout.depth or planned_inside:
                self._check_contents(Path(entry.path), depth + 1)
                return True
            return False
        if relative in self.extra:
            return True
        suffix = Path(entry.name).suffix.lower()
        return depth <= self.layout.depth and not entry.name.startswith(".") and suffix in self.layout.suffixes

    def __enter__(self) -> StagedFolder:
        self.create()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise

    def create(self) -> Path:
        """Create the (empty) staging folder beside the target and return it."""
        try:
            make_folders(self.final.parent, self._created)
            self.temp.mkdir()
        except BaseException as err:
            self.discard()
            if isinstance(err, OSError):
                raise OutputError(f"cannot create output folder ({err.strerror or err})", self.target) from err
            raise
        return self.temp

    def commit(self) -> None:
        """Swap the staging folder in for the target (the old folder, if any, is removed)."""
        commit_together([self])
        self._created = []

    def discard(self) -> None:
        """Remove the staging folder and any parent folders this run created; the target is untouched."""
        finish_despite_interrupts([lambda: _remove(self.temp), lambda: remove_created_folders(self._created)])


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def make_folders(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, appending each folder it creates to ``created`` (outermost first)."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to remove
        created.append(path)


def remove_created_folders(created: list[Path]) -> None:
    """Remove the folders :func:`make_folders` created, deepest first, as long as they are empty."""
    while created:
        try:
            created[-1].rmdir()  # only succeeds when empty: never removes anything else
        except FileNotFoundError:
            pass
        except OSError:
            return  # something was put there: keep it and the folders above it
        created.pop()
