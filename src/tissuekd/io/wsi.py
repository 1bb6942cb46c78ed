"""One whole-slide-image interface over OpenSlide (SVS, NDPI, MRXS, tiled TIFF) and
tifffile (OME-TIFF, whose SubIFD pyramids OpenSlide does not see).

Coordinates passed to `read` are in the requested level's own pixels; areas outside the
image come back as white background, so crops at the slide border need no special case.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError

log = logging.getLogger(__name__)

BACKGROUND = 255
# errors of a tile that does not decode (besides OSError and ValueError): OpenSlide's, and
# imagecodecs' (tifffile's codecs), whose classes derive from RuntimeError or Exception
UNREADABLE = {"OpenSlideError", "JpegError", "Jpeg8Error", "DeflateError", "LzwError", "WebpError", "TiffFileError"}


class Slide:
    """A pyramidal image: `levels` lists (width, height) per level, `downsamples` each level's factor."""

    path: Path
    levels: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float | None  # microns per level-0 pixel from the file's own metadata, if any
    objective_power: float | None = None  # scanner magnification from the metadata, if any

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 array (height, width, 3) of a region; out-of-image pixels are white.

        Parameters
        ----------
        level : int
            Pyramid level (0: full resolution).
        x, y : int
            Top-left corner in that level's pixels; may lie outside the image.
        width, height : int
            Region size in that level's pixels.
        """
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        lw, lh = self.levels[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, lw), min(y + height, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._decode(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def _decode(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """`_read_inside`; a tile that does not decode (OpenSlide's, tifffile's or a codec's error)
        becomes an InputError naming the file and the region."""
        try:
            return self._read_inside(level, x, y, width, height)
        except InputError:
            raise
        except Exception as err:
            if type(err).__name__ not in UNREADABLE and not isinstance(err, (OSError, ValueError)):
                raise
            raise InputError(self.path, f"cannot read the region of level {level} at ({x}, {y}), {width} x {height} "
                                        f"px: {err} (a damaged file?)") from err

    def _read_inside(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0]

    def best_level(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as `downsample` (never upsample)."""
        fitting = [i for i, d in enumerate(self.downsamples) if d <= downsample * 1.01]
        return max(fitting, key=lambda i: self.downsamples[i]) if fitting else 0


class OpenSlideSlide(Slide):
    def __init__(self, path: Path):
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as err:
            raise InputError(path, f"OpenSlide cannot open this image: {err}") from None
        self.levels = [tuple(d) for d in self._slide.level_dimensions]
        self.downsamples = [float(d) for d in self._slide.level_downsamples]
        mpp = self._slide.properties.get("openslide.mpp-x")
        self.mpp = plausible_mpp(float(mpp), path) if mpp else None
        power = self._slide.properties.get("openslide.objective-power")
        self.objective_power = float(power) if power else None

    def _read_inside(self, level, x, y, width, height):
        ds = self.downsamples[level]
        region = self._slide.read_region((round(x * ds), round(y * ds)), level, (width, height))
        rgba = np.asarray(region)
        if (rgba[..., 3] == 255).all():
            return rgba[..., :3]
        # premultiplied RGBA, transparent where the slide has no data: composite onto white
        alpha = rgba[..., 3:4].astype(np.uint16)
        return (rgba[..., :3] + (BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)

    def close(self):
        self._slide.close()


class TiffSlide(Slide):
    def __init__(self, path: Path):
        import tifffile
        import zarr

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
        except Exception as err:
            raise InputError(path, f"tifffile cannot open this image: {err}") from None
        shapes = [lvl.shape for lvl in series.levels]
        self._axes = series.axes
        self._planar = self._axes in ("CYX", "SYX")  # channels first: one OME channel or TIFF plane each
        rgb = self._axes == "YX" or (self._axes == "YXS" and shapes[0][-1] in (3, 4)) or \
            (self._planar and shapes[0][0] == 3)
        if not rgb:
            raise InputError(path, f"expected an RGB image with axes YXS (or planar CYX, 3 channels), "
                                   f"found {self._axes!r} of shape {shapes[0]}")
        if series.dtype not in (np.uint8, np.uint16):
            raise InputError(path, f"expected 8- or 16-bit pixels, found {series.dtype}")
        if series.dtype == np.uint16:
            log.info("%s: 16-bit pixels, read as 8-bit (value / 257)", path)
        if self._axes == "YX":
            log.warning("%s: one channel, read as grey RGB: is this the H&E, not a fluorescence image?", path)
        self.levels = [(s[2], s[1]) if self._planar else (s[1], s[0]) for s in shapes]
        self.downsamples = [self.levels[0][0] / w for w, _ in self.levels]
        self._arrays = [zarr.open(self._tif.aszarr(level=i), mode="r") for i in range(len(shapes))]
        mpp = _ome_mpp(self._tif)
        if mpp is None:
            mpp = _tag_mpp(self._tif.pages[0])
        self.mpp = plausible_mpp(mpp, path) if mpp is not None else None

    def _read_inside(self, level, x, y, width, height):
        if self._planar:
            return _eight_bit(np.moveaxis(np.asarray(self._arrays[level][:, y : y + height, x : x + width]), 0, -1))
        region = np.asarray(self._arrays[level][y : y + height, x : x + width])
        if self._axes == "YX":
            region = np.repeat(region[..., None], 3, axis=2)
        region = _eight_bit(region)
        if region.shape[-1] == 4:  # RGBA (straight alpha): composite onto white, as OpenSlide's regions
            alpha = region[..., 3:4].astype(np.uint16)
            return ((region[..., :3] * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
        return region

    def close(self):
        self._tif.close()


def _eight_bit(region: np.ndarray) -> np.ndarray:
    """uint8 as is; uint16 scaled to its full range (a cast would wrap 300 to 44)."""
    if region.dtype == np.uint16:
        return ((region.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return region.astype(np.uint8, copy=False)


SCANNER_MPP = (0.05, 10.0)  # µm per pixel a slide scan can have (100x oil to 1x)


def plausible_mpp(mpp: float, path: Path) -> float | None:
    """A resolution from the file's metadata, or None where no scanner would give it: a writer's
    default (72 dpi: 353 µm/px; 1 pixel per cm) is no resolution. OpenSlide 4 reads a generic
    TIFF's resolution tags, which such defaults fill."""
    if SCANNER_MPP[0] <= mpp <= SCANNER_MPP[1]:
        return mpp
    log.warning("%s: its metadata states %.4g um per pixel, which no slide scanner gives (a default of the "
                "software that wrote it?): treated as no resolution", path, mpp)
    return None


def check_pixel_size(mpp: float, path: str | Path, what: str) -> float:
    """A pixel size a user states (a sheet, HEST metadata), refused where no slide scan has it:
    a 112 µm crop would span under one pixel, or a whole image (upsampled to the encoder's pixels:
    out of memory). `what` names where it comes from."""
    low, high = SCANNER_MPP
    if not low <= mpp <= high:
        raise InputError(path, f"{what} {mpp:.4g} µm per pixel, outside what a slide scan has ({low}-{high}; "
                               "H&E at 20x: ~0.5, 40x: ~0.25): is it in µm per level-0 pixel?")
    return mpp


UM_PER_UNIT = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4, "\u212b": 1e-4, "pm": 1e-6,
               "in": 25_400.0}  # OME's default unit is µm


TIFF_UNIT_UM = {2: 25_400.0, 3: 10_000.0}  # ResolutionUnit: inch, centimetre (1: none)


def _tag_mpp(page) -> float | None:
    """µm per pixel from the TIFF's XResolution and ResolutionUnit tags, as OpenSlide 4 reads a
    generic TIFF's; None without them."""
    resolution, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if resolution is None or unit is None or int(unit.value) not in TIFF_UNIT_UM:
        return None
    numerator, denominator = resolution.value
    return TIFF_UNIT_UM[int(unit.value)] * denominator / numerator if numerator and denominator else None


def _file_ome_mpp(path: Path) -> float | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            mpp = _ome_mpp(tif)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return plausible_mpp(mpp, path) if mpp is not None else None


def _ome_mpp(tif) -> float | None:
    """µm per pixel of the first OME Pixels element, in its PhysicalSizeXUnit; None without one."""
    if not tif.is_ome:
        return None
    import re

    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", tif.ome_metadata or "")
    size = pixels and re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', pixels.group(0))
    if not size:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', pixels.group(0))
    unit = unit.group(1) if unit else "µm"
    if unit not in UM_PER_UNIT:
        log.warning("%s: unknown PhysicalSizeXUnit %r: no pixel size read", tif.filehandle.path, unit)
        return None
    return float(size.group(1)) * UM_PER_UNIT[unit]


def thumbnail(slide: Slide, max_px: int, band_bytes: int = 64 * 2**20) -> tuple[np.ndarray, float]:
    """RGB thumbnail at the finest level whose longest side is <= max_px; returns it with its
    downsample from level 0. Where no level is that small (a flat TIFF, or a pyramid OpenSlide does
    not see), the coarsest level is read in bands of rows of at most `band_bytes` and each band
    averaged over factor x factor pixels (factor: the smallest integer that fits max_px), so
    memory stays at one band and the thumbnail whatever the slide's size."""
    fits = [i for i, (w, h) in enumerate(slide.levels) if max(w, h) <= max_px]
    level = min(fits) if fits else len(slide.levels) - 1
    w, h = slide.levels[level]
    if max(w, h) <= max_px:
        return slide.read(level, 0, 0, w, h), slide.downsamples[level]
    factor = -(-max(w, h) // max_px)
    log.info("%s: no level of at most %d px (coarsest %d x %d): thumbnail averaged over %d x %d pixels of it, "
             "in bands", slide.path, max_px, w, h, factor, factor)
    rows = max(1, band_bytes // (w * 3 * factor)) * factor  # a whole number of thumbnail rows per band
    out_w, out_h = w // factor, h // factor
    bands = []
    for y in range(0, out_h * factor, rows):
        band = slide.read(level, 0, y, out_w * factor, min(rows, out_h * factor - y))
        bands.append(band.reshape(-1, factor, out_w, factor, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    return np.concatenate(bands), slide.downsamples[level] * factor


FLAT_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # decoded whole, never tiled: no slide reader opens them


def require_slide_format(path: str | Path) -> None:
    """Refuse a flat picture by its name, so that a sheet can be checked before any job runs."""
    if Path(path).suffix.lower() in FLAT_PICTURES:
        raise InputError(path, "is a flat picture, which the slide readers (OpenSlide, tifffile) do not open: "
                               "convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave in.png out.tif --tile "
                               "--pyramid --compression jpeg`")


def check_complete(path: str | Path) -> None:
    """A TIFF-family slide (TIFF, OME-TIFF, SVS, NDPI, …) whose image data run past the end of the
    file was cut short (a partial download or copy): named here, where readers that take only its
    header would pass it, rather than by the first crop that reaches the missing part. Formats
    tifffile does not parse (MRXS, …) are left to their reader."""
    import tifffile

    path = Path(path)
    size = path.stat().st_size
    quiet = logging.getLogger("tifffile")
    level, quiet.level = quiet.level, logging.CRITICAL  # a cut file's tags are reported below, in one line
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages) + [page for series in tif.series[:1] for lvl in series.levels
                                       for page in lvl.pages]
            end = max((int(offset) + int(count) for page in pages if page is not None
                       for offset, count in zip(page.dataoffsets, page.databytecounts) if count), default=0)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return
    finally:
        quiet.level = level
    if end > size:
        raise InputError(path, f"cut short: its image data run to byte {end:,} but the file has {size:,} bytes "
                               f"(an interrupted download or copy?)")


def _subifd_pyramid(slide: OpenSlideSlide) -> Slide | None:
    """The same TIFF through tifffile where it keeps a pyramid in SubIFDs (OME-TIFF writers,
    tifffile's `subifds`), which OpenSlide does not see: one full-resolution level would be read
    for every thumbnail and downsampled crop."""
    try:
        tiff = TiffSlide(slide.path)
    except InputError:
        return None
    if len(tiff.levels) == 1:
        tiff.close()
        return None
    log.info("%s: its pyramid (%d levels) is in SubIFDs, which OpenSlide does not read: read with tifffile",
             slide.path, len(tiff.levels))
    slide.close()
    return tiff


def open_slide(path: str | Path, backend: str = "auto") -> Slide:
    """Open a whole-slide image; `auto` uses tifffile for OME-TIFF and OpenSlide otherwise (tifffile
    again for a .tif OpenSlide refuses)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "image file does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(path, "is empty (0 bytes)")
    require_slide_format(path)
    check_complete(path)
    if backend == "auto":
        name = path.name.lower()
        if name.endswith((".ome.tif", ".ome.tiff")):
            return TiffSlide(path)
        try:
            slide = OpenSlideSlide(path)
        except InputError as openslide_error:
            if not name.endswith((".tif", ".tiff")):
                raise
            try:  # a plain TIFF OpenSlide does not take (e.g. stored in strips, not tiles)
                slide = TiffSlide(path)
            except InputError:
                raise openslide_error from None
            log.info("%s: OpenSlide cannot open it; read with tifffile", path)
            return slide
        if name.endswith((".tif", ".tiff")):
            if len(slide.levels) == 1:
                slide = _subifd_pyramid(slide) or slide
            if slide.mpp is None:  # an OME-TIFF named .tif: OpenSlide reads no OME metadata
                slide.mpp = _file_ome_mpp(path)
        return slide
    if backend == "tifffile":
        return TiffSlide(path)
    if backend == "openslide":
        return OpenSlideSlide(path)
    raise ValueError(f"unknown WSI backend {backend!r} (use auto, openslide or tifffile)")
