"""A segmentation teacher's per-image maps produced elsewhere (npz or zarr, keyed by image id)."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError


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
        if maps.shape not in (tuple(shape), (2, *shape)):  # the shape as stored, before a rim is derived
            raise InputError(self.path, f"map of image {image_id!r} is {maps.shape}; its image is {tuple(shape)} "
                                        "(expected (H, W) or (2, H, W))")
        if maps.ndim == 2:
            maps = np.stack([maps, maps - ndimage.grey_erosion(maps, size=(3, 3))])
        if not np.isfinite(maps).all():
            raise InputError(self.path, f"map of image {image_id!r} has NaN or infinite values")
        if maps.min() < 0 or maps.max() > 1:
            raise InputError(self.path, f"map of image {image_id!r} holds values from {maps.min():.3g} to "
                                        f"{maps.max():.3g}, not probabilities in [0, 1] (logits? apply a sigmoid)")
        return maps
