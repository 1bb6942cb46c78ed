"""TissueNet v1.1 splits (`tissuenet_v1.1_{train,val,test}.npz`): `X` (N, H, W, 2) nuclear and
membrane, `y` (N, H, W, 2) whole-cell and nuclear instance labels, `tissue_list`, `platform_list`.
The members are memory-mapped where stored uncompressed (as published), so a 2,580-image training
split is never read whole; the checks read it in chunks of images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError
from tissuekd.io.npz import npz_header, npz_member, npz_shape
from tissuekd.io.segset import TARGETS, SegSet, id_problem

log = logging.getLogger(__name__)


def read_tissuenet(path: str | Path, nuclear: int = 0, membrane: int | None = 1, target: str = "whole-cell",
                   scan: bool = True) -> SegSet:
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
    scan : bool
        Read every image and label to check pixels finite and labels instance ids (in chunks).
        False where the workflow's check job already read these bytes (segmentation_check_train):
        a job then reads only the images it uses, e.g. a teacher-maps shard its share.
    """
    path = Path(path)
    if target not in TARGETS:
        raise InputError(path, f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    x, y = npz_member(path, "X"), npz_member(path, "y")
    channels = (nuclear,) if membrane is None else (nuclear, membrane)
    _check_shapes(path, x.shape, y.shape, channels, target)
    channel = label_channel(path, y.shape, target)
    if scan:
        _require_instance_ids(path, y, channel)
    _require_label_order(path, y)
    n = len(x)
    tissues, platforms = (_names(path, member, n) for member in NAME_LISTS)
    first = min(channels)
    # a slice of consecutive channels is a view of the memory map; an index list would read X whole
    images = x[..., first:first + len(channels)] if channels == tuple(range(first, first + len(channels))) \
        else x[..., list(channels)]
    if scan:
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
            raise InputError(path, f"X has NaN or infinite pixels, first in image X[{start + int(np.argmax(bad))}] "
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
    if not np.issubdtype(npz_header(path, "y")[2], np.integer):  # labels stored as floats (rare): read them
        _require_instance_ids(path, npz_member(path, "y"), label_channel(path, labels_shape, target))
    return shape


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
        problem = id_problem(part)
        if problem:
            bad, what = problem
            raise InputError(path, f"labels are not instance ids (y is {y.dtype} with {what}, first in image "
                                   f"y[{start + int(np.argmax(bad))}])")


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
