"""Patch and feature HDF5 files in TRIDENT's layout (mahmoodlab/TRIDENT, `trident/IO.py`
`coords_to_h5`, called by `WSI.extract_tissue_coords`; the encoders' `WSI.extract_patch_features`
copies the same attributes onto the feature file's `coords`).

TRIDENT puts these attributes on the `coords` dataset ((n, 2) int64 level-0 top-left corners):

    patch_size            int  side of a patch at the target magnification
    patch_size_level0     int  the same side in level-0 pixels (patch_size * level0 mag // target mag)
    level0_magnification  int  the slide's magnification (TRIDENT: from its mpp, 10 / mpp bucketed)
    target_magnification  int  the magnification patches are taken at
    overlap               int  overlap between neighbouring patches, in target-magnification pixels
    name                  str  the slide's name (file name without extension)
    savetodir             str  the folder the job wrote to
    level0_width          int  slide width in level-0 pixels
    level0_height         int  slide height in level-0 pixels

and on a feature file's `features` dataset `name`, `savetodir` and `encoder` (str).
Magnification and mpp are tied by TRIDENT's convention mpp = 10 / magnification.

Our files carry all of these plus `target_mpp` and `level0_mpp` (exact, where the
magnifications may be rounded) and, in feature files, the encoder's name, architecture and
precision. Readers take either: a file with magnifications only (TRIDENT's) gets its mpp
derived, one with mpp only gets its magnifications.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import h5py
import numpy as np

from tissuekd.errors import InputError

log = logging.getLogger(__name__)

# name -> type, as trident.IO.coords_to_h5 writes them
TRIDENT_COORDS_ATTRS: dict[str, type] = {
    "patch_size": int, "patch_size_level0": int, "level0_magnification": int, "target_magnification": int,
    "overlap": int, "name": str, "savetodir": str, "level0_width": int, "level0_height": int,
}
COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")  # stripped whole, as TRIDENT's splitext does


def slide_name(path: str | Path) -> str:
    """A slide's name as TRIDENT gives it: the file name without its extension."""
    name = Path(path).name
    for suffix in COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def magnification(mpp: float) -> int | float:
    """10 / mpp, TRIDENT's convention. TRIDENT stores magnifications as int; so do we when the value
    is whole (0.5 µm/px -> 20). Otherwise (0.2527 µm/px -> 39.57x) the exact float is kept rather than
    rounded, so that patch_size * level0_magnification / target_magnification stays the level-0 side
    of our patches, which is what TRIDENT's reader computes from them."""
    value = 10.0 / mpp
    return int(round(value)) if math.isclose(value, round(value), rel_tol=1e-9, abs_tol=1e-9) else value


def trident_coords_attrs(*, patch_size: int, patch_size_level0: int, level0_mpp: float, target_mpp: float,
                         level0_size: tuple[int, int], name: str, savetodir: str, overlap: int = 0) -> dict:
    """TRIDENT's `coords` attributes (names and types of TRIDENT_COORDS_ATTRS) for a patch grid.

    Parameters
    ----------
    patch_size : int
        Patch side at the target magnification, px.
    patch_size_level0 : int
        The same side in level-0 px.
    level0_mpp : float
        µm per level-0 pixel; stored as `level0_magnification` = 10 / mpp.
    target_mpp : float
        µm per pixel at the target magnification; stored as `target_magnification` = 10 / mpp.
    level0_size : tuple of int
        (width, height) of the slide at level 0, px.
    name : str
        The slide's name (its file name without extension, slide_name).
    savetodir : str
        The folder the patch file is written to.
    overlap : int, default 0
        Overlap between neighbouring patches, px at the target magnification.
    """
    width, height = level0_size
    return {"patch_size": int(patch_size), "patch_size_level0": int(patch_size_level0),
            "level0_magnification": magnification(level0_mpp), "target_magnification": magnification(target_mpp),
            "overlap": int(overlap), "name": str(name), "savetodir": str(savetodir),
            "level0_width": int(width), "level0_height": int(height)}


def _plain(value):
    """h5py attribute -> Python value (bytes decoded, 0-d arrays unwrapped)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def coords_attrs(h5: h5py.File) -> dict:
    """The attributes of `coords`; for our feature files written before they moved there, the
    file root's (beneath: `coords` wins)."""
    return {k: _plain(v) for k, v in {**dict(h5.attrs), **dict(h5["coords"].attrs)}.items()}


def _number(attrs: dict, key: str, where: str, strict: bool = True) -> float | None:
    value = attrs.get(key)
    if value is None:
        return None
    try:
        number = float(np.asarray(value).reshape(-1)[0]) if np.size(value) == 1 else float(value)
    except (TypeError, ValueError):
        problem = f"`coords` attribute `{key}` is {value!r}, not a number"
    else:
        if math.isfinite(number) and number > 0:
            return number
        problem = f"`coords` attribute `{key}` is {value!r}; it must be a positive number"
    if strict:
        raise InputError(where, problem)
    log.warning("%s: %s; not used (a features file's patch geometry is not read)", where, problem)
    return None


def patch_geometry(attrs: dict, where: str | Path, required: bool = True) -> dict:
    """`attrs` completed with what the other resolution attributes imply: `level0_mpp` and
    `target_mpp` from TRIDENT's magnifications (mpp = 10 / magnification) or the reverse, and
    `patch_size_level0` from the patch size and both resolutions.

    Present but bad values (not a number, not positive) are an error naming the file; so are
    missing ones when `required` (a patch file; a CLAM feature file carries none). Where not
    required (a features file, whose geometry nothing reads) a bad value is a warning, and unused."""
    where = str(where)
    out = dict(attrs)
    numbers = {key: _number(attrs, key, where, strict=required) for key in
               ("patch_size", "patch_size_level0", "level0_mpp", "target_mpp", "level0_magnification",
                "target_magnification")}
    for level in ("level0", "target"):
        mpp, mag = numbers[f"{level}_mpp"], numbers[f"{level}_magnification"]
        if mpp is not None:  # our files: the exact mpp wins over a (possibly rounded) magnification
            out[f"{level}_mpp"] = mpp
            out.setdefault(f"{level}_magnification", magnification(mpp))
        elif mag is not None:
            out[f"{level}_mpp"] = 10.0 / mag
    if numbers["patch_size"] is not None:
        out["patch_size"] = int(round(numbers["patch_size"]))
    if numbers["patch_size_level0"] is not None:
        out["patch_size_level0"] = int(round(numbers["patch_size_level0"]))
    elif "patch_size" in out and "level0_mpp" in out and "target_mpp" in out:
        out["patch_size_level0"] = int(round(out["patch_size"] * out["target_mpp"] / out["level0_mpp"]))
    if required:
        missing = [key for key in ("patch_size", "level0_mpp", "target_mpp") if key not in out]
        if missing:
            names = {"patch_size": "`patch_size`",
                     "level0_mpp": "`level0_magnification` (or `level0_mpp`)",
                     "target_mpp": "`target_magnification` (or `target_mpp`)"}
            raise InputError(where, f"`coords` lacks {', '.join(names[k] for k in missing)}; a patch file in "
                                    f"TRIDENT's layout carries them as attributes of `coords` (has: {sorted(attrs)})")
    return out
