"""Reading object masks: indexed or greyscale PNGs and COCO run-length-encoded (RLE) JSON.

Every reader returns a :class:`LabelMap`, an (H, W) array of integer object ids with 0 as background.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_api

from vostool.errors import InputError
from vostool.io.frames import natural_key
from vostool.io.palette import normalize_palette

MASK_SUFFIXES = frozenset({".png", ".json"})
RLE_VIDEO_FORMAT = "vostool-rle-v1"
_LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
VOID_8BIT = 255  # DAVIS convention: "void" (unlabelled) pixels, ignored like background
VOID_16BIT = 65535  # the same rule at 16 bits


@dataclass
class LabelMap:
    """Object ids of one frame.

    Attributes:
        labels: (H, W) integer ids, 0 = background; uint8 when every id is below 256, else int32.
        palette: the 768-byte RGB palette of the PNG it came from, when that was an indexed PNG.
    """

    labels: np.ndarray
    palette: bytes | None = None

    @property
    def object_ids(self) -> list[int]:
        """The ids present, ascending, background excluded."""
        return [int(value) for value in np.unique(self.labels) if value != 0]

    @property
    def max_id(self) -> int:
        """The highest object id present (0 when there is none): above 255, a palette PNG cannot hold it."""
        return int(self.labels.max()) if self.labels.size else 0


def label_dtype(max_id: int) -> type[np.integer]:
    """uint8 when every id fits in a byte (the common case and what PNGs store), else int32."""
    return np.uint8 if max_id < 256 else np.int32


def read_mask(
    path: str | Path, size: tuple[int, int] | None = None, *, allow_empty: bool = False
) -> LabelMap:
    """Read the object ids of one frame from a PNG or a COCO RLE JSON file.

    PNG rules:
      * indexed (palette) PNG: pixel indices are the object ids; the palette is kept.
      * greyscale PNG: pixel values are the object ids (8 or 16 bits; 16-bit ids above 255 are
        returned as they are, in an int32 map).
      * void: 255 (65535 in a 16-bit PNG) marks void pixels, as in DAVIS; they are read as 0
        (background), so {1, 2, 255} gives objects 1 and 2 and a mask of only void has no object.
        The exception is a binary mask, exactly {0, 255} (or {0, 65535}): it is read as object 1,
        being a single-object mask as image editors save it. In a palette PNG whose object moves
        from 255 to 1 this way, palette entry 1 takes entry 255's colour.
      * RGB(A) PNG: accepted only when R == G == B everywhere (then read as greyscale); colour masks
        are rejected because the mapping from colours to object ids would be a guess.
      * lossy images (JPEG by name or content, lossy WebP, JPEG-compressed TIFF) are rejected:
        compression noise around edges would become objects.

    JSON rules (``.json``), in any of these layouts:
      * a COCO annotation file ``{"annotations": [{"segmentation": {...}, ...}], "images": [...]}``
        for one image (polygon segmentations are rasterised at the image's height/width);
      * a list of RLE objects ``[{"counts": ..., "size": [H, W]}, ...]``;
      * a list ``[{"segmentation": {...}, "object_id" or "id": n}, ...]``;
      * a single one of those objects, or a one-frame ``vostool-rle-v1`` file (see RleWriter).
    ``counts`` may be a compressed COCO string or an uncompressed list of run lengths.

    Object ids in JSON: objects are numbered 1..N in file order, unless every object carries an
    explicit positive integer id: ``object_id``, or in list layouts also ``id``. In COCO annotation
    files ``id`` is the annotation's own id (often a large number) and is ignored. ``category_id``
    is ignored. Where objects overlap, later objects overwrite earlier ones.

    ``size`` (H, W), when given, must equal the mask's size. Raises InputError naming the file when the
    file is missing, unreadable, lossy or malformed, has the wrong size, or contains no object (unless
    ``allow_empty``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such mask file" if not path.exists() else "mask is not a file", path)
    if path.suffix.lower() in _LOSSY_SUFFIXES:
        _refuse_lossy("JPEG", path)
    if path.suffix.lower() == ".json":
        label_map = _read_rle_mask(path, size, allow_empty)
    else:
        label_map = _read_image_mask(path)
    _check_size(path, label_map.labels.shape, size)
    if not allow_empty and not label_map.labels.any():
        raise InputError("mask contains no object (every pixel is background or void)", path)
    return label_map


def read_masks_dir(
    folder: str | Path, frame_names: Sequence[str] | None, size: tuple[int, int] | None = None
) -> dict[int, LabelMap]:
    """Read the masks in ``folder`` and key them by the index of the frame they belong to.

    ``frame_names`` None: frames of a stream whose length is unknown (standard input), named by number
    from 0, so a mask's stem must be a frame number ("12.png" or "00012.png" for frame 12).

    A mask belongs to the frame whose name equals its stem ("00012.png" or "00012.json" for frame
    "00012"); failing an exact match, a numeric stem matches the one frame with the same number
    ("12.png" for frame "00012"). Masks may be given for any frames, not only the first, because
    objects may appear later. Masks without any object are skipped. Files other than .png/.json
    (and hidden files) are ignored.

    Raises InputError when the folder is missing, a mask matches no frame, two masks match one
    frame, a mask is a JPEG (lossy, so ids would be corrupted), or no mask with an object remains.
    """
    return {index: label_map for index, (_, label_map) in _read_masks(folder, frame_names, size).items()}


def mask_files_dir(
    folder: str | Path, frame_names: Sequence[str], size: tuple[int, int] | None = None
) -> dict[int, Path]:
    """The files :func:`read_masks_dir` reads, keyed like it (frames with an object only), after the same
    checks: for callers that read each mask again when they need it (``vostool train``)."""
    return {index: path for index, (path, _) in _read_masks(folder, frame_names, size).items()}


def _read_masks(
    folder: str | Path, frame_names: Sequence[str] | None, size: tuple[int, int] | None
) -> dict[int, tuple[Path, LabelMap]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such mask folder" if not folder.exists() else "masks must be a folder", folder)
    frame_index = _FrameIndex(frame_names)
    found: dict[int, Path] = {}
    for file in sorted(_mask_files(folder), key=lambda file: natural_key(file.name)):
        index = frame_index.lookup(file.stem)
        if index is None:
            frames = frame_index.describe()
            raise InputError(f"mask {file.stem!r} matches no frame name (frames are {frames})", file)
        if index in found:
            raise InputError(f"mask and {found[index].name} are both for frame {frame_index.name(index)!r}", file)
        found[index] = file
    masks = {}
    for index in sorted(found):
        label_map = read_mask(found[index], size, allow_empty=True)
        if label_map.labels.any():
            masks[index] = found[index], label_map
    if not masks:
        raise InputError("folder contains no mask with an object (.png or .json named like a frame)", folder)
    return masks


def _mask_files(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise InputError(f"cannot list folder ({err.strerror or err})", folder) from err
    files = []
    for entry in entries:
        suffix = entry.suffix.lower()
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if suffix in _LOSSY_SUFFIXES:
            _refuse_lossy("JPEG", entry)
        if suffix in MASK_SUFFIXES:
            files.append(entry)
    return files


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


class _FrameIndex:
    """Finds the frame a mask stem belongs to: exact name first, then equal number."""

    def __init__(self, frame_names: Sequence[str] | None) -> None:
        self.numbered = frame_names is None  # a stream: frame n is named by its number
        self.names = list(frame_names or [])
        self.by_name = {name: index for index, name in enumerate(self.names)}
        by_number: dict[int, list[int]] = {}
        for index, name in enumerate(self.names):
            if _is_number(name):
                by_number.setdefault(int(name), []).append(index)
        self.by_number = {number: indices[0] for number, indices in by_number.items() if len(indices) == 1}

    def lookup(self, stem: str) -> int | None:
        if self.numbered:
            return int(stem) if _is_number(stem) else None
        if stem in self.by_name:
            return self.by_name[stem]
        return self.by_number.get(int(stem)) if _is_number(stem) else None

    def name(self, index: int) -> str:
        return str(index) if self.numbered else self.names[index]

    def describe(self) -> str:
        if self.numbered:
            return "numbered from 0, as standard input is read"
        if not self.names:
            return "none"
        if len(self.names) == 1:
            return repr(self.names[0])
        return f"{self.names[0]!r} ... {self.names[-1]!r}"


def _check_size(path: Path, shape: tuple[int, ...], size: tuple[int, int] | None) -> None:
    if size is not None and tuple(shape) != tuple(size):
        raise InputError(
            f"mask is {shape[0]}x{shape[1]} but frames are {size[0]}x{size[1]} (height x width)", path
        )


# ---------------------------------------------------------------------------------------------- PNG


def _refuse_lossy(kind: str, path: Path) -> None:
    raise InputError(f"{kind} masks are not supported (lossy compression alters ids); use PNG", path)


def _read_image_mask(path: Path) -> LabelMap:
    try:
        with Image.open(path) as image:
            if (lossy := _lossy_kind(path, image)) is not None:
                _refuse_lossy(lossy, path)
            image.load()
            return _labels_from_image(path, image)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise InputError(f"not a readable mask image ({err})", path) from err


def _lossy_kind(path: Path, image: Image.Image) -> str | None:
    """The name of the lossy format ``image`` is stored in (whatever the file is called), else None."""
    if image.format in ("JPEG", "MPO", "JPEG2000"):
        return "JPEG"
    if image.format == "TIFF" and str(image.info.get("compression", "")).endswith("jpeg"):
        return "JPEG-compressed TIFF"
    if image.format == "WEBP" and _is_lossy_webp(path.read_bytes()):
        return "lossy WebP"
    return None


def _is_lossy_webp(data: bytes) -> bool:
    """Whether a WebP file holds VP8 (lossy) image data: a "VP8 " chunk, where lossless is "VP8L"."""
    position = 12  # after "RIFF", the size and "WEBP"
    while position + 8 <= len(data):
        kind = data[position : position + 4]
        if kind == b"VP8 ":
            return True
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        # An extended file (VP8X) holds its image in later chunks, animation frames (ANMF) a header
        # of 16 bytes before their own chunks.
        position += 8 + (16 if kind == b"ANMF" else size + size % 2)
    return False


def _labels_from_image(path: Path, image: Image.Image) -> LabelMap:
    mode = image.mode
    if mode in ("P", "PA"):
        indices = np.array(image.getchannel(0))
        palette = image.getpalette("RGB")
        labels = _ids_with_void(indices, VOID_8BIT, path)
        palette = normalize_palette(palette) if palette else None
        if palette is not None and _is_binary(indices, VOID_8BIT):
            # The object was drawn in colour 255 and is now id 1: keep the colour the user sees.
            palette = palette[:3] + palette[3 * VOID_8BIT : 3 * VOID_8BIT + 3] + palette[6:]
        return LabelMap(labels, palette)
    if mode == "1":
        return LabelMap(np.array(image).astype(np.uint8))
    if mode in ("L", "LA"):
        return LabelMap(_ids_with_void(np.array(image.getchannel(0)), VOID_8BIT, path))
    if mode.startswith("I;16") or mode == "I":
        return LabelMap(_ids_with_void(np.array(image), VOID_16BIT, path))
    if mode in ("RGB", "RGBA"):
        rgb = np.array(image.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError(
                "colour (RGB) mask: object ids are ambiguous; save it as an indexed (palette) "
                "or greyscale PNG",
                path,
            )
        return LabelMap(_ids_with_void(rgb[..., 0], VOID_8BIT, path))
    raise InputError(f"unsupported mask image mode {mode!r}; use an indexed or greyscale PNG", path)


def _is_binary(values: np.ndarray, void: int) -> bool:
    """Exactly the values {0, void}: a single-object mask as image editors save it."""
    present = np.unique(values)
    return len(present) == 2 and present[0] == 0 and present[1] == void


def _ids_with_void(values: np.ndarray, void: int, path: Path) -> np.ndarray:
    """Pixel values as ids with ``void`` read as background, except the binary {0, void} case: object 1."""
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError("mask has negative values", path)
    if _is_binary(values, void):
        return (values == void).astype(np.uint8)
    values[values == void] = 0
    return values.astype(label_dtype(int(values.max()) if values.size else 0))


# --------------------------------------------------------------------------------------------- JSON


@dataclass
class _RleObject:
    """One object of a JSON mask: its explicit id (if any) and its segmentation."""

    explicit_id: Any
    segmentation: Any


def _read_rle_mask(path: Path, size: tuple[int, int] | None, allow_empty: bool) -> LabelMap:
    data = _load_json(path)
    objects, image_size = _rle_objects(path, data)
    if image_size is None:
        image_size = size
    if not objects:
        if allow_empty and image_size is not None:
            return LabelMap(np.zeros(image_size, dtype=np.uint8))
        raise InputError("mask contains no object (the JSON lists no segmentation)", path)
    return LabelMap(_objects_to_labels(path, objects, image_size))


def _objects_to_labels(
    path: Path, objects: list[_RleObject], image_size: tuple[int, int] | None, where: str = ""
) -> np.ndarray:
    """Paint the decoded objects into one label map; later objects overwrite earlier ones."""
    ids = _assign_ids(path, [obj.explicit_id for obj in objects])
    binaries = [
        _decode_segmentation(path, obj.segmentation, image_size, number)
        for number, obj in enumerate(objects, 1)
    ]
    shape = binaries[0].shape
    for number, binary in enumerate(binaries[1:], 2):
        if binary.shape != shape:
            raise InputError(
                f"{where}RLE size mismatch: object {number} is {binary.shape[0]}x{binary.shape[1]} "
                f"but object 1 is {shape[0]}x{shape[1]}",
                path,
            )
    labels = np.zeros(shape, dtype=label_dtype(max(ids)))
    for object_id, binary in zip(ids, binaries):
        labels[binary] = object_id
    return labels


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError as err:
        raise InputError("not a JSON file (not UTF-8 text)", path) from err
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise InputError(f"malformed JSON ({err.msg} at {where})", path) from err
    except OSError as err:
        raise InputError(f"cannot read file ({err.strerror or err})", path) from err


def _rle_objects(path: Path, data: Any) -> tuple[list[_RleObject], tuple[int, int] | None]:
    """Normalise the accepted JSON layouts to a list of objects (plus the image size when stated)."""
    if isinstance(data, dict) and "annotations" in data:
        return _coco_objects(path, data)
    if isinstance(data, dict) and data.get("format") == RLE_VIDEO_FORMAT:
        return _single_frame_of_video(path, data)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError("JSON mask must be a COCO annotation file, an RLE object or a list of them", path)
    return [_list_item(path, item, number) for number, item in enumerate(data, 1)], None


def _list_item(path: Path, item: Any, number: int) -> _RleObject:
    if not isinstance(item, dict):
        raise InputError(f"object {number} is not a JSON object", path)
    explicit_id = item.get("object_id", item.get("id"))
    if "segmentation" in item:
        return _RleObject(explicit_id, item["segmentation"])
    if "counts" in item:
        return _RleObject(explicit_id, item)
    raise InputError(f"object {number} has neither 'segmentation' nor 'counts'", path)


def _coco_objects(path: Path, data: dict) -> tuple[list[_RleObject], tuple[int, int] | None]:
    annotations = data["annotations"]
    if not isinstance(annotations, list) or not all(isinstance(ann, dict) for ann in annotations):
        raise InputError("'annotations' must be a list of objects", path)
    image_ids = {ann.get("image_id") for ann in annotations}
    if len(image_ids) > 1:
        raise InputError(
            f"COCO file has annotations for {len(image_ids)} images; give one file per frame", path
        )
    objects = []
    for number, ann in enumerate(annotations, 1):
        if "segmentation" not in ann:
            raise InputError(f"annotation {number} has no 'segmentation'", path)
        objects.append(_RleObject(ann.get("object_id"), ann["segmentation"]))
    return objects, _coco_image_size(data, next(iter(image_ids), None))


def _coco_image_size(data: dict, image_id: Any) -> tuple[int, int] | None:
    images = data.get("images")
    if not isinstance(images, list):
        return None
    entries = [image for image in images if isinstance(image, dict)]
    matching = [image for image in entries if image.get("id") == image_id]
    if not matching and len(entries) == 1:
        matching = entries  # annotations without image_id next to the file's only image
    if len(matching) != 1:
        return None
    height, width = matching[0].get("height"), matching[0].get("width")
    if _is_count(height) and _is_count(width) and height > 0 and width > 0:
        return height, width
    return None


def _single_frame_of_video(path: Path, data: dict) -> tuple[list[_RleObject], tuple[int, int] | None]:
    frames = data.get("frames")
    if not isinstance(frames, list) or len(frames) != 1 or not isinstance(frames[0], dict):
        count = len(frames) if isinstance(frames, list) else 0
        raise InputError(f"{RLE_VIDEO_FORMAT} file holds {count} frames; a mask file must hold one", path)
    frame = frames[0]
    objects = frame.get("objects")
    if not isinstance(objects, list):
        raise InputError("frame has no 'objects' list", path)
    size = frame.get("size")
    image_size = (size[0], size[1]) if _is_size(size) else None
    return [_list_item(path, item, number) for number, item in enumerate(objects, 1)], image_size


def _assign_ids(path: Path, explicit: list[Any]) -> list[int]:
    """Ids 1..N in file order, unless every object names its own id."""
    if all(value is None for value in explicit):
        return list(range(1, len(explicit) + 1))
    for number, value in enumerate(explicit, 1):
        if value is None:
            raise InputError(
                f"object {number} has no id while others do; give every object an id or none", path
            )
        if not _is_count(value) or value < 1:
            raise InputError(f"object {number} has id {value!r}; ids must be positive integers", path)
    return list(explicit)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(size: Any) -> bool:
    return isinstance(size, list | tuple) and len(size) == 2 and all(_is_count(v) and v > 0 for v in size)


def _decode_segmentation(
    path: Path, segmentation: Any, image_size: tuple[int, int] | None, number: int
) -> np.ndarray:
    """Decode one object's RLE (or COCO polygons) to a boolean (H, W) mask."""
    if isinstance(segmentation, list):
        return _decode_polygons(path, segmentation, image_size, number)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise InputError(f"object {number}: segmentation needs 'counts' and 'size'", path)
    size, counts = segmentation["size"], segmentation["counts"]
    if not _is_size(size):
        raise InputError(f"object {number}: 'size' must be [height, width], got {size!r}", path)
    height, width = size
    if isinstance(counts, str):
        runs = _compressed_runs(path, counts, number)
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    elif isinstance(counts, list) and all(_is_count(run) and run >= 0 for run in counts):
        runs = counts
        rle = mask_api.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        raise InputError(
            f"object {number}: 'counts' must be a string or a list of non-negative integers", path
        )
    # pycocotools leaves pixels uninitialised when runs cover less than the image, so check first.
    if sum(runs) != height * width:
        raise InputError(
            f"object {number}: RLE size mismatch: runs cover {sum(runs)} pixels but size "
            f"{height}x{width} has {height * width}",
            path,
        )
    try:
        return _decode_rle(rle)
    except ValueError as err:
        raise InputError(f"object {number}: invalid RLE ({err})", path) from err


def _decode_polygons(
    path: Path, polygons: list, image_size: tuple[int, int] | None, number: int
) -> np.ndarray:
    if image_size is None:
        raise InputError(f"object {number}: polygon segmentation needs the image height and width", path)
    valid = all(
        isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly)
        for poly in polygons
    )
    if not polygons or not valid:
        raise InputError(
            f"object {number}: polygons must be lists of x, y coordinates (3 points or more)", path
        )
    height, width = image_size
    rles = mask_api.frPyObjects(polygons, height, width)
    return _decode_rle(mask_api.merge(rles))


def _decode_rle(rle: dict) -> np.ndarray:
    with warnings.catch_warnings():
        # pycocotools' decode trips a numpy 2 DeprecationWarning about __array__(copy=...) on every
        # call; it is about pycocotools' own internals and says nothing to our users.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_api.decode(rle).astype(bool)


def _compressed_runs(path: Path, text: str, number: int) -> list[int]:
    """Run lengths of a compressed COCO RLE string (used to validate it before decoding).

    Each run is a little-endian sequence of 5-bit groups stored as chr(48 + group), bit 0x20 meaning
    "more groups follow" and bit 0x10 of the last group the sign; from the third run on, the value
    is a difference to the run two places earlier.
    """
    runs: list[int] = []
    position = 0
    while position < len(text):
        value = shift = 0
        while True:
            code = ord(text[position]) - 48 if position < len(text) else -1
            if not 0 <= code < 64:
                raise InputError(f"object {number}: 'counts' is not a valid compressed RLE string", path)
            position += 1
            value |= (code & 0x1F) << shift
            shift += 5
            if not code & 0x20:
                if code & 0x10:
                    value -= 1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise InputError(f"object {number}: 'counts' decodes to a negative run length", path)
        runs.append(value)
    return runs


# ------------------------------------------------------------------------------------ RLE video file


def read_rle_video(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(frame name, labels)`` for every frame of a ``vostool-rle-v1`` file (see RleWriter).

    The file is validated before the first frame is yielded; raises InputError naming the file when it
    is missing, malformed, or not in that format.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such RLE file" if not path.exists() else "RLE path is not a file", path)
    data = _load_json(path)
    is_video = isinstance(data, dict) and data.get("format") == RLE_VIDEO_FORMAT
    if not is_video or not isinstance(data.get("frames"), list):
        raise InputError(f"not a {RLE_VIDEO_FORMAT} file (expected {{'format': ..., 'frames': [...]}})", path)
    frames = data["frames"]
    for number, frame in enumerate(frames, 1):
        named = isinstance(frame, dict) and isinstance(frame.get("name"), str)
        if not named or not isinstance(frame.get("objects"), list):
            raise InputError(f"frame {number} needs a 'name' and an 'objects' list", path)
    return _rle_video_frames(path, frames)


def _rle_video_frames(path: Path, frames: list[dict]) -> Iterator[tuple[str, np.ndarray]]:
    for number, frame in enumerate(frames, 1):
        objects = [_list_item(path, item, index) for index, item in enumerate(frame["objects"], 1)]
        size = (frame["size"][0], frame["size"][1]) if _is_size(frame.get("size")) else None
        if not objects:
            if size is None:
                raise InputError(f"frame {number} has no objects and no 'size'", path)
            yield frame["name"], np.zeros(size, dtype=np.uint8)
            continue
        labels = _objects_to_labels(path, objects, size, where=f"frame {number}: ")
        if size is not None and labels.shape != size:
            raise InputError(
                f"frame {number}: RLE size mismatch: frame is {size[0]}x{size[1]} but its objects "
                f"are {labels.shape[0]}x{labels.shape[1]}",
                path,
            )
        yield frame["name"], labels
