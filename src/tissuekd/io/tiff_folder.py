"""Plain folders of multichannel TIFFs `<id>.tif` with instance-label TIFFs beside them, read
file by file when an image is asked for; every pair is checked from the TIFF headers first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tissuekd.errors import InputError
from tissuekd.io.segset import TARGETS, ImageFiles, SegSet, id_problem, shown

TIFF_SUFFIXES = (".tif", ".tiff")


def read_tiff_folder(folder: str | Path, nuclear: int = 0, membrane: int | None = 1,
                     target: str = "whole-cell") -> SegSet:
    """A folder of multichannel TIFFs `<id>.tif` with instance labels `<id>_<target>.tif` beside
    them (`<id>_whole-cell.tif`, `<id>_nuclear.tif`: the sheet's target picks one).

    An image is (H, W) (one channel), (H, W, C) or (C, H, W): the channel axis has at most
    MAX_CHANNELS entries and fewer than either side, the last axis where both ends qualify
    (a 40-plex (40, H, W) reads). Images may differ in size (an evaluation set); labels must
    match their image. Every pair is checked here from the TIFF headers (shapes, channel range;
    label values where the labels are stored signed or as floats, which may hold non-ids), so
    errors name the file before any training starts.

    Parameters
    ----------
    folder : str or Path
        The folder (not searched recursively).
    nuclear, membrane : int
        Channel indices (membrane None: nuclear only).
    target : str
        "whole-cell" or "nuclear": the suffix of the label files.
    """

    folder = Path(folder)
    if target not in TARGETS:
        raise InputError(folder, f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    if not folder.is_dir():
        raise InputError(folder, "is not a folder of TIFF images")
    label_suffixes = tuple(f"_{t}" for t in TARGETS)
    images = sorted(p for p in shown(folder.iterdir()) if p.suffix.lower() in TIFF_SUFFIXES
                    and not p.stem.endswith(label_suffixes))
    if not images:
        raise InputError(folder, "no images: expected <id>.tif with <id>_whole-cell.tif / <id>_nuclear.tif labels")
    labels = []
    for image in images:
        label = image.with_name(f"{image.stem}_{target}{image.suffix}")
        if not label.exists():
            raise InputError(image, f"has no {target} labels: expected {label.name} beside it")
        labels.append(label)
    channels = (nuclear,) if membrane is None else (nuclear, membrane)

    def check_channels(path: Path, n_channels: int) -> None:
        bad = [c for c in channels if not 0 <= c < n_channels]
        if bad:
            raise InputError(path, f"channel index {bad[0]} out of range: the image has {n_channels} channels"
                                   f"{_other_series(path)}")

    def read_image(path: Path) -> np.ndarray:
        image = read_tiff(path)
        (_, _, n_channels), channels_first = _layout(image.shape, path)
        check_channels(path, n_channels)
        image = np.moveaxis(image, 0, -1) if channels_first else image.reshape(*image.shape[:2], -1)
        image = image[..., list(channels)].astype(np.float32)
        if not np.isfinite(image).all():
            raise InputError(path, f"{(~np.isfinite(image)).sum()} NaN or infinite pixels (of the channels the "
                                   "sheet names)")
        return image

    def read_labels(path: Path) -> np.ndarray:
        labels = read_tiff(path)
        _check_labels(path, labels.shape, labels)
        return labels.astype(np.int32)

    shapes = []
    for image, label in zip(images, labels):
        (height, width, n_channels), _ = _layout(tiff_shape(image)[0], image)
        check_channels(image, n_channels)
        label_shape, dtype = tiff_shape(label)
        _check_labels(label, label_shape, None if np.issubdtype(dtype, np.unsignedinteger) else read_tiff(label))
        if label_shape != (height, width):
            raise InputError(label, f"labels are {label_shape}, their image {(height, width)}")
        shapes.append((height, width))
    ids = [p.stem for p in images]
    names = ("nuclear",) if membrane is None else ("nuclear", "membrane")
    return SegSet(ImageFiles(images, read_image, shapes), ImageFiles(labels, read_labels, shapes), ids,
                  [folder.name] * len(ids), ["tiff"] * len(ids), names)


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's pixels, squeezed; a truncated or broken file named."""
    import tifffile

    try:
        return np.squeeze(tifffile.imread(path))
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as err:
        raise InputError(path, f"unreadable TIFF ({err})") from None


def tiff_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """A TIFF's squeezed shape and dtype from its header (no pixels read)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(d for d in series.shape if d != 1), series.dtype
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as err:
        raise InputError(path, f"unreadable TIFF ({err})") from None


def _other_series(path: Path) -> str:
    """A hint where a TIFF holds several series (e.g. one per channel, each written as its own
    image): only the first is read."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        n = len(tif.series)
    return f" (the file holds {n} image series and only the first is read: store the channels as one " \
           "(H, W, C) or (C, H, W) image)" if n > 1 else ""


MAX_CHANNELS = 64  # multiplexed panels (CODEX, CyCIF) reach ~60 markers


def _layout(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, int, int], bool]:
    """(H, W, C) of a squeezed image shape, and whether its channels come first."""
    if len(shape) == 2:
        return (*shape, 1), False
    if len(shape) != 3:
        raise InputError(path, f"expected a (H, W), (H, W, C) or (C, H, W) image; got shape {shape}")
    if shape[-1] <= MAX_CHANNELS and shape[-1] < min(shape[:2]):
        return shape, False
    if shape[0] <= MAX_CHANNELS and shape[0] < min(shape[1:]):
        return (*shape[1:], shape[0]), True
    raise InputError(path, f"no channel axis in shape {shape}: expected (H, W, C) or (C, H, W) with at most "
                           f"{MAX_CHANNELS} channels, fewer than the image's pixels a side")


def _check_labels(path: Path, shape: tuple[int, ...], values: np.ndarray | None) -> None:
    """One (H, W) image of instance ids; `values` (when given) must be whole, finite, not negative."""
    if len(shape) != 2:
        raise InputError(path, f"labels must be one (H, W) image of instance ids; got shape {shape}")
    problem = id_problem(values.reshape(1, -1)) if values is not None and values.dtype != bool else None
    if problem:
        raise InputError(path, f"labels are not instance ids ({values.dtype} with {problem[1]})")
