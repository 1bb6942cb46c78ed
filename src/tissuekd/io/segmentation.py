"""Segmentation data sets in their published layouts, read by the sheet's `format`: TissueNet v1.1
npz (`io.tissuenet`), BBBC038 folders (`io.bbbc038`), and plain folders of multichannel TIFFs
with label TIFFs beside them (`io.tiff_folder`).

All are read into the same `SegSet` (`io.segset`): images (N, H, W, C) with the sheet's channel
order, one instance-label image per image (0 = background), and per-image ids, tissues and
platforms. TissueNet's npz members are memory-mapped where the archive stores them uncompressed
(as the published files are), so a 2,580-image training split is never read whole; BBBC038
folders and TIFF folders are read file by file when an image is asked for (`ImageFiles`), so
they are never held whole either (BBBC038's images also differ in size).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError
from tissuekd.io.bbbc038 import png_shape, read_bbbc038
from tissuekd.io.npz import npz_compressed
from tissuekd.io.segset import SegSet, shown
from tissuekd.io.tiff_folder import TIFF_SUFFIXES, read_tiff_folder, tiff_shape
from tissuekd.io.tissuenet import check_tissuenet_split, read_tissuenet

FORMATS = ("tissuenet", "bbbc038", "tiff")


def read_split(fmt: str, path: str, target: str = "whole-cell", nuclear_only: bool = False, nuclear: int = 0,
               membrane: int | None = 1, contents: str | None = None, checked: bool = False) -> SegSet:
    """One split of a data set in its published layout; `nuclear_only` keeps the nuclear channel
    (`nuclear`, `membrane`: channel indices, the sheet's). `contents` is not read: the workflow's
    fingerprint of a folder's files, passed in the jobs' params so that they rerun when one changes.
    `checked`: the split's pixels and labels were read by a check job this one waits for, so a
    TissueNet split is not scanned again (folders check each image as it is read, whatever)."""
    if fmt == "tissuenet":
        return read_tissuenet(path, nuclear, None if nuclear_only else membrane, target=target, scan=not checked)
    if fmt == "bbbc038":
        return read_bbbc038(path)
    if fmt == "tiff":
        return read_tiff_folder(path, nuclear, None if nuclear_only else membrane, target=target)
    raise InputError(path, f"unknown segmentation format {fmt!r} (one of {', '.join(FORMATS)})")


def check_split(fmt: str, path: str, target: str = "whole-cell", nuclear: int = 0,
                membrane: int | None = 1, training: bool = False) -> tuple[int, int]:
    """read_split's checks that need no pixels (a TissueNet split's array headers; every image
    and label file of a BBBC038 or TIFF folder, by their headers), so the workflow can make them
    on every split before any job runs; a `training` folder's images must share one size, as
    training needs. Returns the number of images and the smallest image side, in pixels."""
    if fmt == "tissuenet":
        shape = check_tissuenet_split(path, nuclear, membrane, target)
        return shape[0], min(shape[1:3])
    data = read_split(fmt, path, target, nuclear=nuclear, membrane=membrane)
    if training:
        data.images.require_one_size()
    return len(data), min(min(shape) for shape in data.images.shapes)


def split_array_bytes(path: str | Path) -> int:
    """Bytes of a split's images and labels as arrays, from headers alone (what a job sizes its
    memory and time by): an npz's members as stored uncompressed (a compressed one is read
    whole, a stored one memory-mapped); a TIFF folder's files, each its shape x item size (a
    compressed TIFF holds more than its file); a BBBC038 folder's images, 8 bytes a pixel
    (float32 image, int32 labels: PNGs are far smaller than what is read from them)."""
    path = Path(path)
    if path.is_file():
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    tiffs = [p for p in shown(path.iterdir()) if p.suffix.lower() in TIFF_SUFFIXES]
    if tiffs:
        return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in map(tiff_shape, tiffs))
    pngs = [p / "images" / f"{p.name}.png" for p in path.iterdir() if (p / "images").is_dir()]
    return sum(8 * height * width for height, width in map(png_shape, pngs))


def split_read_whole(path: str | Path) -> bool:
    """Whether reading any image of a split puts all of its arrays in memory: an npz with a
    compressed member (decompressed whole). A stored npz is memory-mapped and a folder read file
    by file, so a job holds only the images it reads."""
    return Path(path).is_file() and npz_compressed(path)
