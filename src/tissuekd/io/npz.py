"""npz archives read without loading them: a member memory-mapped where the archive stores it
uncompressed (as TissueNet's published files and the teachers' probability shards are), and
members' shapes and dtypes from their .npy headers alone."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError

log = logging.getLogger(__name__)


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
            shape, fortran, dtype = npy_header(f)
            header = f.tell()
    if dtype.hasobject:
        return np.load(path, allow_pickle=True)[name]
    # the member's data start: the local file header (30 bytes + name + extra) then the .npy header
    with open(path, "rb") as raw:
        raw.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
    offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def npz_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of array `name` of an npz, from its .npy header."""
    return npz_header(path, name)[0]


def npz_header(path: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
            return npy_header(f)
    except KeyError:
        raise InputError(path, f"has no array {name!r}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(path, f"not a readable npz archive ({err})") from None


def npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy stream `f`, which is left at the array's data."""
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read_header(f)
