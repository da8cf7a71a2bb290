"""Refusing outputs that would overwrite a run's own inputs, before any work is done.

A masks folder is replaced as a whole when a run commits (see ``vostool.io.staging``), so it must not be,
or contain, anything the run reads; an output file must not be an input file or another output (one inside
the masks folder is written into its staging folder and committed with it). Paths are compared after resolving symlinks, and existing files with
``os.path.samefile``, so links and hard links count as the same file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vostool.errors import OutputError
from vostool.io.staging import path_inside

PathLike = str | Path


def refuse_overwriting_inputs(
    inputs: Mapping[str, PathLike | None],
    output_files: Mapping[str, PathLike | None],
    output_folder: tuple[str, PathLike | None] = ("--out", None),
    *,
    folders: Mapping[str, PathLike | None] | None = None,
) -> None:
    """Raise OutputError when an output would overwrite an input or another output.

    ``inputs`` and ``output_files`` map a name for the user (``--mask``, ``--rle``) to a path or None;
    ``output_folder`` is the (name, path) of a folder the run replaces as a whole, ``folders`` more of
    them. Files may lie inside ``--out`` (they are written into its staging folder), not inside another
    folder output; folder outputs must not overlap.
    """
    # A missing input cannot be overwritten; its reader reports it, in the user's terms.
    given_inputs = {name: Path(path) for name, path in inputs.items() if path is not None and Path(path).exists()}
    files = {name: Path(path) for name, path in output_files.items() if path is not None}
    replaced = {name: Path(path) for name, path in ({output_folder[0]: output_folder[1]} | dict(folders or {})).items()
                if path is not None}  # fmt: skip
    for name, path in files.items():
        for input_name, input_path in given_inputs.items():
            if _same(path, input_path):
                raise OutputError(f"{name} would overwrite the {input_name} input; choose another file", path)
        for other_name, other in files.items():
            if other_name < name and _same(path, other):
                raise OutputError(f"{name} and {other_name} name the same file", path)
    for folder_name, folder in replaced.items():
        _refuse_replacing(folder_name, folder, given_inputs, files, replaced)


def _refuse_replacing(
    folder_name: str, folder: Path, inputs: Mapping[str, Path], files: Mapping[str, Path], folders: Mapping[str, Path]
) -> None:
    for input_name, input_path in inputs.items():
        if _same(folder, input_path) or path_inside(input_path, folder) is not None:
            raise OutputError(
                f"{folder_name} would replace the {input_name} input (the folder is replaced whole); "
                "choose another folder",
                folder,
            )
    for file_name, file in files.items():
        if _same(folder, file) or (folder_name != "--out" and path_inside(file, folder) is not None):
            raise OutputError(f"{file_name} lies in {folder_name}, which is replaced whole; write it elsewhere", file)
    for other_name, other in folders.items():
        if other_name != folder_name and (_same(folder, other) or path_inside(other, folder) is not None):
            raise OutputError(f"{other_name} and {folder_name} overlap; each is replaced whole, give separate folders", other)


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return a.resolve() == b.resolve()
