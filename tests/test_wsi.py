"""One WSI interface over OpenSlide and tifffile."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import he_image

from tissuekd.errors import InputError
from tissuekd.io.wsi import open_slide


def test_both_backends_open_the_demo_he_and_agree(demo_slide):
    path = he_image(demo_slide)
    with open_slide(path, "tifffile") as tif, open_slide(path, "openslide") as osl:
        assert tif.dimensions == osl.dimensions
        assert len(tif.levels) == 4  # the OME SubIFD pyramid; OpenSlide sees level 0 only
        assert tif.mpp == pytest.approx(0.25)
        a = tif.read(0, 900, 700, 300, 200).astype(int)
        b = osl.read(0, 900, 700, 300, 200).astype(int)
    assert a.shape == b.shape == (200, 300, 3)
    assert np.abs(a - b).mean() < 2.0  # same JPEG tiles, decoders may round differently
    assert a.std() > 10  # not blank


def test_both_backends_agree_below_level_0_of_a_pyramid_svs(tmp_path):
    """A region is given in its level's pixels by both backends (OpenSlide itself takes the
    corner in level-0 pixels, so the reader converts): the demo SVS's coarsest level, read by
    each. (tifffile takes the SVS's second page for Aperio's thumbnail, so it lists one level
    fewer than OpenSlide; the demo writes no thumbnail page.)"""
    from tissuekd.demo.survival import make_slide

    path = tmp_path / "TCGA-DM-A000-01Z-00-DX1.svs"
    make_slide(path, "TCGA-DM-A000", seed=0)
    with open_slide(path, "tifffile") as tif, open_slide(path, "openslide") as osl:
        assert tif.levels[-1] == osl.levels[-1] and osl.downsamples[-1] == 16
        w, h = osl.levels[-1]
        x, y = w // 3, h // 3
        a, b = tif.read(len(tif.levels) - 1, x, y, 64, 48), osl.read(len(osl.levels) - 1, x, y, 64, 48)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0 and a.std() > 5


def test_reads_outside_the_image_are_white(demo_slide):
    with open_slide(he_image(demo_slide)) as slide:
        width, height = slide.dimensions
        region = slide.read(0, width - 10, height - 10, 40, 40)
    assert region.shape == (40, 40, 3)
    assert (region[20:, :] == 255).all() and (region[:, 20:] == 255).all()


def test_best_level_never_upsamples(demo_slide):
    with open_slide(he_image(demo_slide)) as slide:
        assert slide.best_level(2.0) == 1
        assert slide.best_level(1.9) == 0
        assert slide.best_level(100) == len(slide.levels) - 1


def test_missing_or_unreadable_image(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "empty.svs").touch()  # a download that never began
    with pytest.raises(InputError, match=r"empty.svs: is empty \(0 bytes\)"):
        open_slide(tmp_path / "empty.svs")
    bad = tmp_path / "bad.ome.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="bad.ome.tif"):
        open_slide(bad)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_a_tile_that_does_not_decode_names_the_file(tmp_path, backend):
    """A damaged slide (bytes zeroed in its first level's tiles) stops the read with an InputError
    naming the file and the region, not a codec's traceback."""
    from tissuekd.demo.survival import make_slide

    path = tmp_path / "TCGA-DM-A000-01Z-00-DX1.svs"
    make_slide(path, "TCGA-DM-A000", seed=0)
    data = bytearray(path.read_bytes())
    data[len(data) // 4 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)
    path.write_bytes(bytes(data))
    with open_slide(path, backend) as slide, pytest.raises(InputError, match=r"DX1.svs: cannot read the region of "
                                                                           r"level 0 at .* \(a damaged file\?\)"):
        w, h = slide.dimensions
        for y in range(0, h, 256):
            slide.read(0, 0, y, w, 256)


@pytest.mark.parametrize("kept", [0.5, 0.98])
@pytest.mark.parametrize("kind", ["ome", "svs"])
def test_a_slide_cut_short_is_named_when_opened(demo_slide, tmp_path, kind, kept):
    """A partial download: the header (and so the size) reads, the tiles past the cut would not."""
    if kind == "ome":
        whole = he_image(demo_slide)
    else:
        from tissuekd.demo.survival import make_slide

        whole = tmp_path / "TCGA-DM-A000-01Z-00-DX1.svs"
        make_slide(whole, "TCGA-DM-A000", seed=0)
    with open_slide(whole):  # whole, it opens
        pass
    cut = tmp_path / f"cut{''.join(whole.suffixes)}"
    data = whole.read_bytes()[: int(whole.stat().st_size * kept)]
    cut.write_bytes(data)
    for backend in ("auto", "openslide", "tifffile"):
        with pytest.raises(InputError, match=rf"{cut.name}: cut short: its image data run to byte .* but the file "
                                             rf"has {len(data):,} bytes"):
            open_slide(cut, backend)


def test_an_input_error_survives_a_dataloader_worker_and_pickling():
    """torch's DataLoader re-raises a worker's error from its message alone: the file and the
    problem come through, so the job still ends with the one line naming them."""
    import pickle

    from torch._utils import ExceptionWrapper

    try:
        raise InputError("/data/a.svs", "cannot read the region of level 0 at (0, 0)")
    except InputError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(InputError) as err:
        wrapper.reraise()
    assert (err.value.where, err.value.problem) == ("/data/a.svs", "cannot read the region of level 0 at (0, 0)")
    again = pickle.loads(pickle.dumps(InputError("b.h5", "no `features`: has ['x']")))
    assert (again.where, again.problem) == ("b.h5", "no `features`: has ['x']")


def test_a_planar_rgb_ome_tiff_reads_as_its_interleaved_twin(tmp_path):
    """An H&E OME-TIFF stored channels-first (planar: tifffile's SYX, or three OME channels, CYX)
    reads like the same pixels stored interleaved (YXS); other channel counts are refused."""
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "yxs.ome.tif", rgb, tile=(128, 128), photometric="rgb", metadata={"axes": "YXS"})
    tifffile.imwrite(tmp_path / "cyx.ome.tif", np.moveaxis(rgb, -1, 0), tile=(128, 128), photometric="rgb",
                     planarconfig="separate", metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "channels.ome.tif", np.moveaxis(rgb, -1, 0), tile=(128, 128), photometric="minisblack",
                     metadata={"axes": "CYX"})
    for planar in ("cyx.ome.tif", "channels.ome.tif"):
        with open_slide(tmp_path / "yxs.ome.tif") as a, open_slide(tmp_path / planar) as b:
            assert a.dimensions == b.dimensions == (400, 300)
            np.testing.assert_array_equal(b.read(0, 150, 100, 200, 150), a.read(0, 150, 100, 200, 150))
            np.testing.assert_array_equal(b.read(0, -20, -20, 64, 64), a.read(0, -20, -20, 64, 64))
    tifffile.imwrite(tmp_path / "four.ome.tif", np.zeros((4, 64, 64), np.uint8), metadata={"axes": "CYX"})
    with pytest.raises(InputError, match=r"four.ome.tif: expected an RGB .* found '[CS]YX' of shape \(4, 64, 64\)"):
        open_slide(tmp_path / "four.ome.tif")


def test_16_bit_and_rgba_ome_tiffs_read_as_8_bit_rgb_and_float_pixels_are_refused(tmp_path):
    """A 16-bit H&E is scaled to 8 bits (a cast wrapped 300 to 44); RGBA loses its alpha; float
    pixels stop naming the file."""
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "u8.ome.tif", rgb, tile=(128, 128), photometric="rgb", metadata={"axes": "YXS"})
    # the high byte carries the value (x 257 would hide a cast: (257 v) mod 256 = v)
    tifffile.imwrite(tmp_path / "u16.ome.tif", rgb.astype(np.uint16) * 256 + 128, tile=(128, 128),
                     photometric="rgb", metadata={"axes": "YXS"})
    alpha = np.full((200, 300, 1), 255, np.uint8)
    alpha[:20] = 0  # rows without data: white, as OpenSlide gives them
    rgba = np.concatenate([rgb, alpha], axis=2)
    tifffile.imwrite(tmp_path / "rgba.ome.tif", rgba, tile=(128, 128), photometric="rgb", extrasamples=["unassalpha"],
                     metadata={"axes": "YXS"})
    with open_slide(tmp_path / "u8.ome.tif") as a:
        expected = a.read(0, 10, 20, 150, 100)
    for name in ("u16.ome.tif", "rgba.ome.tif"):
        with open_slide(tmp_path / name) as b:
            np.testing.assert_allclose(b.read(0, 10, 20, 150, 100), expected, atol=1)
    with open_slide(tmp_path / "rgba.ome.tif") as b:
        assert (b.read(0, 0, 0, 50, 20) == 255).all()
    tifffile.imwrite(tmp_path / "float.ome.tif", rgb.astype(np.float32), tile=(128, 128), photometric="rgb",
                     metadata={"axes": "YXS"})
    with pytest.raises(InputError, match="float.ome.tif: expected 8- or 16-bit pixels, found float32"):
        open_slide(tmp_path / "float.ome.tif")


@pytest.mark.parametrize(("unit", "size"), [(None, 0.25), ("µm", 0.25), ("\u03bcm", 0.25), ("nm", 250.0),
                                            ("mm", 0.00025), ("Å", 2500.0)])
@pytest.mark.parametrize("name", ["s.ome.tif", "s.tif"])  # an OME-TIFF named .tif: OpenSlide opens it, reads no OME
def test_ome_pixel_size_is_read_in_its_unit(tmp_path, unit, size, name):
    import tifffile

    units = {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit} if unit else {}
    tifffile.imwrite(tmp_path / "w.ome.tif", np.zeros((256, 256, 3), np.uint8), photometric="rgb", tile=(128, 128),
                     metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size, **units})
    (tmp_path / "w.ome.tif").rename(tmp_path / name)  # tifffile writes OME only under the .ome.tif name
    with open_slide(tmp_path / name) as slide:
        assert slide.mpp == pytest.approx(0.25)


def test_a_tiff_openslide_refuses_is_read_with_tifffile(tmp_path):
    """A plain RGB TIFF in strips (not tiles), as some exports write H&E: OpenSlide refuses it."""
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "strips.tif", rgb, photometric="rgb")
    with open_slide(tmp_path / "strips.tif") as slide:
        assert slide.dimensions == (200, 300)
        np.testing.assert_array_equal(slide.read(0, 0, 0, 200, 300), rgb)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="junk.tif: OpenSlide cannot open this image"):
        open_slide(tmp_path / "junk.tif")


@pytest.mark.parametrize(("resolution", "unit", "mpp"), [((72, 72), "INCH", None), ((1, 1), "CENTIMETER", None),
                                                          ((40000, 40000), "CENTIMETER", 0.25)])
def test_a_resolution_no_scanner_gives_is_no_resolution(tmp_path, caplog, resolution, unit, mpp):
    """OpenSlide 4 reads a generic TIFF's resolution tags, which writers fill with defaults (72 dpi:
    353 um per pixel): taken as a resolution, it would refuse a right alignment or grid the patches
    at 1/700 of the magnification."""
    import tifffile

    tifffile.imwrite(tmp_path / "tiled.tif", np.zeros((256, 256, 3), np.uint8), photometric="rgb", tile=(128, 128),
                     resolution=resolution, resolutionunit=unit)
    with open_slide(tmp_path / "tiled.tif") as slide:
        assert type(slide).__name__ == "OpenSlideSlide"
        assert slide.mpp == (pytest.approx(mpp) if mpp else None)
    assert ("which no slide scanner gives" in caplog.text) == (mpp is None)


def test_a_single_channel_image_is_read_with_a_warning(tmp_path, caplog):
    """A DAPI morphology image given as the H&E ran without a word."""
    import tifffile

    tifffile.imwrite(tmp_path / "dapi.ome.tif", np.zeros((64, 64), np.uint16), metadata={"axes": "YX"})
    with open_slide(tmp_path / "dapi.ome.tif") as slide:
        assert slide.read(0, 0, 0, 8, 8).shape == (8, 8, 3)
    assert "dapi.ome.tif: one channel, read as grey RGB: is this the H&E" in caplog.text


def test_an_ome_pixel_size_of_zero_is_no_pixel_size(tmp_path):
    """Some converters write PhysicalSizeX="0.0": the scale check divided by it."""
    import tifffile

    tifffile.imwrite(tmp_path / "z.ome.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.0, "PhysicalSizeY": 0.0})
    with open_slide(tmp_path / "z.ome.tif") as slide:
        assert slide.mpp is None


def test_a_tiff_with_its_pyramid_in_subifds_is_read_with_its_levels_and_resolution(tmp_path, caplog):
    """OpenSlide sees level 0 only of a SubIFD pyramid: auto reads it with tifffile instead, which
    takes the resolution tags as OpenSlide does."""
    import logging

    import tifffile

    rgb = np.random.default_rng(0).integers(0, 256, (1024, 1536, 3), dtype=np.uint8)
    opts = dict(tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(tmp_path / "sub.tif") as tif:
        tif.write(rgb, subifds=2, **opts)
        tif.write(rgb[::2, ::2], subfiletype=1, **opts)
        tif.write(rgb[::4, ::4], subfiletype=1, **opts)
    tifffile.imwrite(tmp_path / "flat.tif", rgb, **opts)
    with caplog.at_level(logging.INFO):
        with open_slide(tmp_path / "sub.tif") as slide:
            assert type(slide).__name__ == "TiffSlide" and slide.downsamples == [1.0, 2.0, 4.0]
            assert slide.mpp == pytest.approx(0.5)
            np.testing.assert_array_equal(slide.read(1, 10, 20, 30, 40), rgb[::2, ::2][20:60, 10:40])
        with open_slide(tmp_path / "flat.tif") as slide:  # no pyramid anywhere: OpenSlide's, as before
            assert type(slide).__name__ == "OpenSlideSlide" and slide.mpp == pytest.approx(0.5)
        with open_slide(tmp_path / "flat.tif", "tifffile") as slide:
            assert slide.mpp == pytest.approx(0.5)
    assert "sub.tif: its pyramid (3 levels) is in SubIFDs" in caplog.text
