"""npz archives read without loading them: a member memory-mapped where the archive stores it
uncompressed (as TissueNet's published files and the teachers' probability shards are), and
members' shapes and dtypes from their .npy headers alone; and written a row at a time
(`NpzWriter`), so that an array larger than memory can be written too."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError

log = logging.getLogger(__name__)


def npz_compressed(path: str | Path) -> bool:
    """Whether any member of an npz is compressed, so npz_member reads it whole, not mapped."""
    with zipfile.ZipFile(path) as archive:
        return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())


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
    if 0 in shape:  # nothing to map (an empty shard)
        return np.empty(shape, dtype)
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


class NpzWriter:
    """An npz written member by member, each stored uncompressed exactly as np.savez stores it
    (the same bytes), so npz_member memory-maps it; `rows` writes a member one row at a time, so
    it is never held whole (a teacher's maps of a whole split)."""

    def __init__(self, path: str | Path):
        self.archive = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)  # np.savez's

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.archive.close()

    def array(self, name: str, value) -> None:
        with self.archive.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)

    def rows(self, name: str, rows: Iterable[np.ndarray], n: int, row_shape: tuple[int, ...], dtype) -> None:
        """Member `name` of shape (n, *row_shape) from `rows`, each written as it comes; a row of
        another shape, or other than n rows, is an error (the archive is then unfinished)."""
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, *row_shape)}
        written = 0
        with self.archive.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for row in rows:
                if np.shape(row) != tuple(row_shape):
                    raise ValueError(f"{name}: row {written} has shape {np.shape(row)}, the rows before "
                                     f"{tuple(row_shape)}")
                f.write(np.ascontiguousarray(row, dtype).tobytes())
                written += 1
        if written != n:
            raise ValueError(f"{name}: {written} rows written of {n}")
