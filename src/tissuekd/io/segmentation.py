"""Segmentation data sets in their published layouts: TissueNet v1.1 npz, BBBC038 folders, and
plain folders of multichannel TIFFs with label TIFFs beside them.

All are read into the same `SegSet`: images (N, H, W, C) with the sheet's channel order, one
instance-label image per image (0 = background), and per-image ids, tissues and platforms.
TissueNet's npz members are memory-mapped where the archive stores them uncompressed (as the
published files are), so a 2,580-image training split is never read whole; BBBC038 folders and
TIFF folders are read file by file when an image is asked for (`ImageFiles`), so they are never
held whole either (BBBC038's images also differ in size).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tissuekd.errors import InputError

log = logging.getLogger(__name__)

TARGETS = {"whole-cell": 0, "nuclear": 1}  # TissueNet's y[..., 0] and y[..., 1]
FORMATS = ("tissuenet", "bbbc038", "tiff")


@dataclass
class SegSet:
    """Images (each H x W x C, float32 as stored), instance labels (H x W, int32), and per image:
    id, tissue, platform. `images`/`labels` are arrays (N, ...) or sequences of arrays read
    when asked for (`ImageFiles`)."""

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray | list[np.ndarray]
    ids: list[str]
    tissues: list[str]
    platforms: list[str]
    channels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def npz_member(path: str | Path, name: str) -> np.ndarray:
    """Array `name` of an npz: memory-mapped when stored uncompressed, else read whole."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(path, f"not a readable npz archive ({err})") from None
    with archive:
        member = f"{name}.npy"
        if member not in archive.namelist():
            raise InputError(path, f"has no array {name!r} (arrays: {', '.join(n[:-4] for n in archive.namelist())})")
        info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            log.info("%s: %s is compressed, so it is read whole (%.1f GB)", path, name, info.file_size / 1e9)
            with archive.open(member) as f:
                return np.lib.format.read_array(f, allow_pickle=name.endswith("_list"))
        with archive.open(member) as f:
            shape, fortran, dtype = _npy_header(f)
            header = f.tell()
    if dtype.hasobject:
        return np.load(path, allow_pickle=True)[name]
    # the member's data start: the local file header (30 bytes + name + extra) then the .npy header
    with open(path, "rb") as raw:
        raw.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
    offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_split(fmt: str, path: str, target: str = "whole-cell", nuclear_only: bool = False, nuclear: int = 0,
               membrane: int | None = 1, contents: str | None = None) -> SegSet:
    """One split of a data set in its published layout; `nuclear_only` keeps the nuclear channel
    (`nuclear`, `membrane`: channel indices, the sheet's). `contents` is not read: the workflow's
    fingerprint of a folder's files, passed in the jobs' params so that they rerun when one changes."""
    if fmt == "tissuenet":
        return read_tissuenet(path, nuclear, None if nuclear_only else membrane, target=target)
    if fmt == "bbbc038":
        return read_bbbc038(path)
    if fmt == "tiff":
        return read_tiff_folder(path, nuclear, None if nuclear_only else membrane, target=target)
    raise InputError(path, f"unknown segmentation format {fmt!r} (one of {', '.join(FORMATS)})")


def check_split(fmt: str, path: str, target: str = "whole-cell", nuclear: int = 0,
                membrane: int | None = 1) -> int:
    """read_split's checks that need no pixels (a TissueNet split's array headers; every image
    and label file of a BBBC038 or TIFF folder, by their headers), so the workflow can make them
    on every split before any job runs. Returns the smallest image side, in pixels."""
    if fmt == "tissuenet":
        return min(check_tissuenet_split(path, nuclear, membrane, target)[1:3])
    data = read_split(fmt, path, target, nuclear=nuclear, membrane=membrane)
    return min(min(shape) for shape in data.images.shapes)


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
        return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in map(_tiff_shape, tiffs))
    pngs = [p / "images" / f"{p.name}.png" for p in path.iterdir() if (p / "images").is_dir()]
    return sum(8 * height * width for height, width in map(_png_shape, pngs))


def read_tissuenet(path: str | Path, nuclear: int = 0, membrane: int | None = 1, target: str = "whole-cell") -> SegSet:
    """One split of TissueNet v1.1 (`tissuenet_v1.1_{train,val,test}.npz`).

    Parameters
    ----------
    path : str or Path
        The npz: `X` (N, H, W, 2) nuclear and membrane, `y` (N, H, W, 2) whole-cell and nuclear
        instance labels, `tissue_list` and `platform_list` (N,).
    nuclear, membrane : int
        Channel indices of X (membrane None: nuclear only).
    target : str
        "whole-cell" or "nuclear": which labels of `y`.
    """
    path = Path(path)
    if target not in TARGETS:
        raise InputError(path, f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    x, y = npz_member(path, "X"), npz_member(path, "y")
    channels = (nuclear,) if membrane is None else (nuclear, membrane)
    _check_shapes(path, x.shape, y.shape, channels, target)
    channel = label_channel(path, y.shape, target)
    _require_instance_ids(path, y, channel)
    _require_label_order(path, y)
    n = len(x)
    tissues, platforms = (_names(path, member, n) for member in NAME_LISTS)
    first = min(channels)
    # a slice of consecutive channels is a view of the memory map; an index list would read X whole
    images = x[..., first:first + len(channels)] if channels == tuple(range(first, first + len(channels))) \
        else x[..., list(channels)]
    _require_finite_pixels(path, images)
    labels = y[..., channel]
    if not np.issubdtype(labels.dtype, np.integer):
        labels = IntegerLabels(labels)  # whole numbers stored as floats (checked above)
    return SegSet(images, labels, [f"{path.stem}:{i}" for i in range(n)], tissues, platforms,
                  ("nuclear",) if membrane is None else ("nuclear", "membrane"))


def label_channel(path: Path, y_shape: tuple[int, ...], target: str) -> int:
    """The channel of y with the target's labels: TissueNet's (whole-cell 0, nuclear 1), or the one
    channel of a one-channel y, which is taken for the target's (said: nothing in the file tells)."""
    if y_shape[-1] == 1:
        log.warning("%s: %s", path, ONE_LABEL_CHANNEL.format(target=target))
        return 0
    return TARGETS[target]


ONE_LABEL_CHANNEL = ("y has one label channel, read as the {target} labels (the sheet's target; TissueNet's y "
                     "holds two, whole-cell then nuclear)")


def _require_label_order(path: Path, y: np.ndarray, sample: int = 64) -> None:
    """y's channels in TissueNet's order, whole-cell then nuclear: a cell holds its nucleus, so
    nuclear labels covering more pixels than the whole-cell ones (over the first `sample`
    images) mean they were swapped, and a model would silently learn the other target."""
    if y.shape[-1] < 2:
        return
    part = np.asarray(y[:sample, ..., :2])
    cells, nuclei = (int((part[..., c] > 0).sum()) for c in (0, 1))
    if nuclei > cells:
        raise InputError(path, f"y's label channels look swapped: the nuclear labels (channel 1) cover {nuclei} "
                               f"pixels of the first {len(part)} images, the whole-cell ones (channel 0) {cells}; "
                               "TissueNet stores whole-cell labels in y[..., 0] and nuclear ones in y[..., 1]")


def _require_finite_pixels(path: Path, images: np.ndarray, chunk: int = 64) -> None:
    """Float images must hold no NaN or inf: one such pixel makes its image's normalisation NaN,
    and training or scoring silently yields NaN losses and zero scores. Read in chunks of images
    (a memory-mapped split is never held whole)."""
    if not np.issubdtype(images.dtype, np.floating):
        return
    for start in range(0, len(images), chunk):
        bad = ~np.isfinite(images[start:start + chunk]).all(axis=tuple(range(1, images.ndim)))
        if bad.any():
            raise InputError(path, f"X has NaN or infinite pixels, first in image {start + int(np.argmax(bad))} "
                                   "(of the channels the sheet names)")


class IntegerLabels(Sequence):
    """Whole-number labels stored as floats, each image given as int32 when asked for (scoring
    with scikit-image needs integers), without reading the memory-mapped array whole."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return np.asarray(self.labels[i]).astype(np.int32)


def check_tissuenet_split(path: str | Path, nuclear: int = 0, membrane: int | None = 1,
                          target: str = "whole-cell") -> tuple[int, ...]:
    """read_tissuenet's checks of sizes and channels from the arrays' headers (cheap, even
    compressed), and of label values where they are stored as floats: the workflow makes them on
    every split before any job runs. Returns X's shape."""
    path = Path(path)
    channels = (nuclear,) if membrane is None else (nuclear, membrane)
    shape = npz_shape(path, "X")
    labels_shape = npz_shape(path, "y")
    _check_shapes(path, shape, labels_shape, channels, target)
    for member in NAME_LISTS:  # read_tissuenet's _names, from the headers
        try:
            listed = npz_shape(path, member)
        except InputError:  # absent: its images are 'unknown' there
            continue
        if len(listed) != 1 or listed[0] != shape[0]:
            raise InputError(path, f"{member} must list one name per image ({shape[0]}), found shape {listed}")
    if not np.issubdtype(_npz_header(path, "y")[2], np.integer):  # labels stored as floats (rare): read them
        _require_instance_ids(path, npz_member(path, "y"), label_channel(path, labels_shape, target))
    return shape


def npz_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of array `name` of an npz, from its .npy header."""
    return _npz_header(path, name)[0]


def _npz_header(path: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
            return _npy_header(f)
    except KeyError:
        raise InputError(path, f"has no array {name!r}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(path, f"not a readable npz archive ({err})") from None


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy stream `f`, which is left at the array's data."""
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read_header(f)


def _check_shapes(path: Path, x: tuple[int, ...], y: tuple[int, ...], channels: tuple[int, ...], target: str) -> None:
    if len(x) != 4 or len(y) != 4:
        raise InputError(path, f"X and y must be (N, H, W, C); got X {x}, y {y}")
    if x[1] <= 16 < x[3]:  # images of at most 16 px a side, or channels first: TissueNet's are 256 px
        raise InputError(path, f"X looks channels-first, (N, C, H, W) = {x}: TissueNet's layout is (N, H, W, C)")
    if x[:3] != y[:3]:
        raise InputError(path, f"labels and images differ in size: X {x[:3]}, y {y[:3]}")
    if x[0] == 0:
        raise InputError(path, "no images (X has 0 rows)")
    bad = [c for c in channels if not 0 <= c < x[3]]
    if bad:
        raise InputError(path, f"channel index {bad[0]} out of range: X has {x[3]} channels")
    if y[3] == 0 or 1 < y[3] <= TARGETS[target]:  # one channel: taken for the target's (label_channel)
        raise InputError(path, f"no {target} labels: y has {y[3]} channels")


def _require_instance_ids(path: Path, y: np.ndarray, channel: int, chunk: int = 64) -> None:
    """Labels must be instance ids (0 background): whole, finite and not negative (a negative id
    reads as no object in training, and stops scoring). Every image is checked, `chunk` at a time
    (y may be memory-mapped); unsigned integers need no look."""
    if np.issubdtype(y.dtype, np.unsignedinteger) or y.dtype == bool:
        return
    for start in range(0, len(y), chunk):
        part = np.asarray(y[start : start + chunk, ..., channel]).reshape(min(chunk, len(y) - start), -1)
        problem = _id_problem(part)
        if problem:
            bad, what = problem
            raise InputError(path, f"labels are not instance ids (y is {y.dtype} with {what}, first in image "
                                   f"{start + int(np.argmax(bad))})")


def _id_problem(part: np.ndarray) -> tuple[np.ndarray, str] | None:
    """(images with the problem, what it is) for rows of label pixels that are not instance ids."""
    if np.issubdtype(part.dtype, np.floating):
        infinite = ~np.isfinite(part).all(axis=1)
        if infinite.any():
            return infinite, "NaN or infinite values"
        fractional = (part != np.round(part)).any(axis=1)
        if fractional.any():
            return fractional, "fractional values"
    negative = (part < 0).any(axis=1)
    return (negative, "negative values") if negative.any() else None


NAME_LISTS = ("tissue_list", "platform_list")  # TissueNet's per-image names


def _names(path: Path, member: str, n: int) -> list[str]:
    try:
        values = npz_member(path, member)
    except InputError:
        log.info("%s: no %s; its images are 'unknown' there", path, member)
        return ["unknown"] * n
    if np.ndim(values) != 1 or len(values) != n:
        raise InputError(path, f"{member} must list one name per image ({n}), found shape {np.shape(values)}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_bbbc038(folder: str | Path, ids: Sequence[str] | None = None, tissue: str = "nuclei",
                 platform: str = "bbbc038") -> SegSet:
    """BBBC038 / 2018 Data Science Bowl stage-1 training layout: `<id>/images/<id>.png` and
    `<id>/masks/*.png`, one binary mask per nucleus. Grey or RGB(A) images become one nuclear
    channel (the mean of the colour channels); masks become one instance image (1..n, in the
    order of the sorted mask names). Images are read when asked for (`ImageFiles`); every id is
    checked here for its image and masks of its size (from the PNG headers), so a folder without
    masks (the stage-1 test release) or with a mask of another size is named before any job runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a BBBC038 folder (<id>/images/<id>.png, <id>/masks/*.png)")
    ids = sorted(p.name for p in folder.iterdir() if (p / "images").is_dir()) if ids is None else list(ids)
    if not ids:
        raise InputError(folder, "no images: expected <id>/images/<id>.png folders")
    shapes = []
    for name in ids:
        shapes.append(_png_shape(folder / name / "images" / f"{name}.png"))
        masks = sorted(shown((folder / name / "masks").glob("*.png")))
        if not masks:
            raise InputError(folder / name / "masks", "no mask files (BBBC038 labels are <id>/masks/*.png, one per "
                                                      "nucleus)")
        for mask in masks:  # headers only: ~0.1 ms a mask
            if (shape := _png_shape(mask)) != shapes[-1]:
                raise InputError(mask, f"mask is {shape}, its image {shapes[-1]}")
    images = [folder / name / "images" / f"{name}.png" for name in ids]
    labels = ImageFiles([folder / name / "masks" for name in ids], _bbbc038_labels, shapes)
    return SegSet(ImageFiles(images, _nuclear_png, shapes), labels, ids,
                  [tissue] * len(ids), [platform] * len(ids), ("nuclear",))


def _nuclear_png(path: Path) -> np.ndarray:
    return _grey(path)[..., None]


def _png_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header (no pixels read)."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err})") from None


def _bbbc038_labels(masks: Path) -> np.ndarray:
    """One instance image from a BBBC038 masks folder: mask k (sorted by name) is label k. The
    release's masks do not overlap; where a folder's do, the later mask takes the pixels, counted
    in a warning (an object may then lose most of itself)."""
    name = masks.parent.name
    shape = _png_shape(masks.parent / "images" / f"{name}.png")
    label = np.zeros(shape, np.int32)
    overlap = 0
    for k, mask_path in enumerate(sorted(shown(masks.glob("*.png"))), start=1):
        try:
            mask = np.asarray(Image.open(mask_path))
        except (OSError, ValueError) as err:
            raise InputError(mask_path, f"unreadable mask ({err})") from None
        if mask.shape[:2] != shape:
            raise InputError(mask_path, f"mask is {mask.shape[:2]}, its image {shape}")
        inside = (mask if mask.ndim == 2 else mask[..., 0]) > 0
        overlap += int(np.count_nonzero(label[inside]))
        label[inside] = k
    if overlap:
        log.warning("%s: masks overlap on %d pixels; each goes to the later mask", masks, overlap)
    return label


def _grey(path: Path) -> np.ndarray:
    try:
        image = Image.open(path)
        if image.mode in ("P", "PA", "LA"):  # palette indices, or grey with alpha: to intensities, alpha apart
            image = image.convert("RGBA")
        image = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err})") from None
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    return image


TIFF_SUFFIXES = (".tif", ".tiff")


class ImageFiles(Sequence):
    """The images (or label images) of a folder, each read from its file when asked for:
    `folder[i]` is one array, `folder[a:b]` a list of them."""

    def __init__(self, paths: list[Path], read, shapes: list[tuple[int, int]] | None = None):
        self.paths, self.read, self.shapes = paths, read, shapes  # shapes: (H, W) per image, from the headers

    def require_one_size(self) -> None:
        """Training draws tiles from a stack of one image size: name the first image of another."""
        for path, shape in zip(self.paths, self.shapes):
            if shape != self.shapes[0]:
                raise InputError(path, f"is {shape}, the folder's first image {self.shapes[0]}: "
                                       "a training set needs one image size (evaluation sets may differ)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.read(path) for path in self.paths[i]]
        return self.read(self.paths[int(i)])


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
        (height, width, n_channels), _ = _layout(_tiff_shape(image)[0], image)
        check_channels(image, n_channels)
        label_shape, dtype = _tiff_shape(label)
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


def shown(paths) -> list[Path]:
    """Paths without hidden files: macOS copies carry AppleDouble `._<name>` files beside each
    file (not images), and `.DS_Store`."""
    return [p for p in paths if not p.name.startswith(".")]


def _tiff_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
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
    problem = _id_problem(values.reshape(1, -1)) if values is not None and values.dtype != bool else None
    if problem:
        raise InputError(path, f"labels are not instance ids ({values.dtype} with {problem[1]})")


class ExternalMaps:
    """A teacher's per-image maps produced elsewhere: an npz (members named by image id) or a zarr
    group (arrays named by image id), each (H, W) foreground probability or (2, H, W) foreground
    and boundary. Read one image at a time.

    Without a boundary map the boundary is derived from the foreground: its morphological
    gradient's inner half, foreground - grey_erosion(foreground, 3 x 3), which is high on the
    inner rim of every object and 0 inside and outside (the U-Net teachers' boundary target is
    the same rim of the labels)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "teacher maps not found")
        if self.path.is_dir():
            import zarr

            try:
                self.store = zarr.open_group(str(self.path), mode="r")
            except Exception as err:  # zarr raises several types for a folder that is no group
                raise InputError(self.path, f"not a zarr group of maps keyed by image id ({err})") from None
            self.keys = set(self.store.array_keys())
        else:
            try:
                self.store = np.load(self.path, allow_pickle=False)
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise InputError(self.path, f"not an npz of maps keyed by image id ({err})") from None
            self.keys = set(self.store.files)

    def require(self, ids: Sequence[str]) -> None:
        """Every image id must have a map: name the first missing one."""
        missing = [i for i in ids if i not in self.keys]
        if missing:
            raise InputError(self.path, f"no map for image {missing[0]!r} ({len(missing)} of {len(ids)} missing; "
                                        f"maps are keyed by the reader's image ids)")

    def get(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        """(2, H, W) float32 foreground and boundary probabilities of one image of size `shape`."""
        from scipy import ndimage

        try:
            maps = np.asarray(self.store[image_id], dtype=np.float32)
        except (ValueError, TypeError) as err:  # e.g. an object array (a list of masks) np.savez pickled
            raise InputError(self.path, f"map of image {image_id!r} is not a numeric array ({err})") from None
        if maps.ndim == 2:
            maps = np.stack([maps, maps - ndimage.grey_erosion(maps, size=(3, 3))])
        if maps.shape != (2, *shape):
            raise InputError(self.path, f"map of image {image_id!r} is {maps.shape}; its image is {shape} "
                                        "(expected (H, W) or (2, H, W))")
        if not np.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1:
            raise InputError(self.path, f"map of image {image_id!r} is not a probability in [0, 1]")
        return maps
