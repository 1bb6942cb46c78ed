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
    bad = tmp_path / "bad.ome.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="bad.ome.tif"):
        open_slide(bad)
