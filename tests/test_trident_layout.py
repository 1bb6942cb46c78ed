"""Patch and feature files exactly as TRIDENT writes them (trident/IO.py `coords_to_h5`, and
`WSI.extract_patch_features`): ours carry TRIDENT's `coords` attributes with its types, and
TRIDENT's files (magnifications only, no mpp) go through our readers."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from tissuekd.demo.survival import write_svs
from tissuekd.encoders.registry import EncoderSpec
from tissuekd.errors import InputError
from tissuekd.survival.bags import FileBags
from tissuekd.survival.cohort import count_patches
from tissuekd.survival.layout import TRIDENT_COORDS_ATTRS, magnification, patch_geometry
from tissuekd.survival.patches import extract_patch_features, make_patches, read_patches

SPEC = EncoderSpec.from_config("demo", {"model": "mobilenetv3_small_050", "mpp": 0.5, "weights": "random"})


def trident_coords(h5: h5py.File, coords: np.ndarray, *, level0_mag: int = 40, target_mag: int = 20,
                   patch_size: int = 256, size: tuple[int, int] = (1024, 1024), **changes) -> None:
    """`coords` as trident.IO.coords_to_h5 writes it (through save_h5: chunks of one row)."""
    dset = h5.create_dataset("coords", data=coords.astype(np.int64), chunks=(1, 2), maxshape=(None, 2))
    attrs = {"patch_size": patch_size, "patch_size_level0": patch_size * level0_mag // target_mag,
             "level0_magnification": level0_mag, "target_magnification": target_mag, "overlap": 0,
             "name": "TCGA-XX-0001-01Z-00-DX1", "savetodir": "trident_job", "level0_width": size[0],
             "level0_height": size[1]}
    for key, value in {**attrs, **changes}.items():
        if value is not None:
            dset.attrs[key] = value


def trident_features(path, n: int = 5, dim: int = 8, **changes) -> str:
    """A features file as TRIDENT's extract_patch_features writes it."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        feats = h5.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32), chunks=(1, dim),
                                  maxshape=(None, dim))
        feats.attrs.update({"name": "TCGA-XX-0001-01Z-00-DX1", "savetodir": "trident_job/features_uni_v1",
                            "encoder": "uni_v1"})
        trident_coords(h5, np.arange(2 * n).reshape(n, 2) * 512, **changes)
    return str(path)


def test_trident_patch_file_with_magnifications_only_is_read(tmp_path):
    with h5py.File(tmp_path / "p_patches.h5", "w") as h5:
        trident_coords(h5, np.array([[0, 0], [512, 0], [0, 512]]))
    coords, attrs = read_patches(str(tmp_path / "p_patches.h5"))
    assert coords.shape == (3, 2)
    assert attrs["level0_mpp"] == 0.25 and attrs["target_mpp"] == 0.5  # 10 / magnification
    assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 512
    assert attrs["name"] == "TCGA-XX-0001-01Z-00-DX1"  # strings come back as str


def test_trident_features_file_goes_through_cohort_and_training_readers(tmp_path):
    path = trident_features(tmp_path / "TCGA-XX-0001-01Z-00-DX1.h5", n=5, dim=8)
    assert count_patches(path) == 5
    bags = FileBags([path])
    assert bags.dim == 8 and bags.count(0) == 5
    with h5py.File(path) as h5:
        expected = h5["features"][:]
    assert np.array_equal(bags.rows(0).numpy(), expected)
    assert np.array_equal(bags.rows(0, np.array([1, 3])).numpy(), expected[[1, 3]])
    assert np.allclose(bags.moments(0).mean, expected.mean(axis=0))
    assert read_patches(path)[1]["level0_mpp"] == 0.25  # its `coords` is a patch file's


def test_non_finite_features_are_named_with_their_file(tmp_path):
    """An extractor's NaN or fp16 overflow would turn the fit's loss to NaN, naming no file."""
    path = trident_features(tmp_path / "TCGA-XX-0001-01Z-00-DX1.h5", n=5, dim=8)
    with h5py.File(path, "r+") as h5:
        h5["features"][3, 2] = np.nan
    bags = FileBags([path])
    for read in (lambda: bags.moments(0), lambda: bags.rows(0, np.array([2, 3]))):
        with pytest.raises(InputError, match=r"DX1.h5: `features` holds NaN or infinite values \(1 of the \d+ rows"):
            read()
    streamed = FileBags([path], cache_bytes=0)  # reads only the rows a step samples
    assert streamed.rows(0, np.array([0, 1])).shape == (2, 8)


def test_bad_or_missing_trident_attributes_name_the_file(tmp_path, caplog):
    with h5py.File(tmp_path / "nomag.h5", "w") as h5:
        trident_coords(h5, np.zeros((2, 2)), target_magnification=None)
    with pytest.raises(InputError, match=r"nomag.h5: `coords` lacks `target_magnification` \(or `target_mpp`\)"):
        read_patches(str(tmp_path / "nomag.h5"))
    with h5py.File(tmp_path / "none.h5", "w") as h5:  # TRIDENT's save_h5 stores a None as 'None'
        trident_coords(h5, np.zeros((2, 2)), level0_magnification="None")
    with pytest.raises(InputError, match=r"none.h5: `coords` attribute `level0_magnification` is 'None'"):
        read_patches(str(tmp_path / "none.h5"))
    # a features file's geometry is never read: a bad value there (TRIDENT's 0 for an unknown
    # magnification, a 1-element array) is a warning, not a refused slide
    bad = trident_features(tmp_path / "zero.h5", level0_magnification=0, patch_size=np.array([256]))
    with caplog.at_level(logging.WARNING):
        assert count_patches(bad) == 5
    assert "zero.h5: `coords` attribute `level0_magnification` is 0; it must be a positive number; not used" \
        in caplog.text
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="text.h5: not a readable HDF5 file"):
        read_patches(str(tmp_path / "text.h5"))


def test_features_step_on_a_trident_patch_file(tmp_path, monkeypatch):
    """A TRIDENT patch grid (40x slide, 20x patches) through our features step; the output
    keeps TRIDENT's `coords` attributes and adds ours, and `features` carries name/savetodir/encoder.
    The encoder sees each whole patch: 256 px at 20x are 512 level-0 px of the 40x slide."""
    from tissuekd.spatial.crops import CropGeometry

    geometries, for_slide = [], CropGeometry.for_slide.__func__

    def recorded(cls, *args):
        geometries.append(for_slide(cls, *args))
        return geometries[-1]

    monkeypatch.setattr(CropGeometry, "for_slide", classmethod(recorded))
    rgb = np.full((1024, 1024, 3), 240, np.uint8)
    rgb[:, :512] = (200, 120, 170)
    slide = tmp_path / "TCGA-XX-0001-01Z-00-DX1.svs"
    write_svs(slide, rgb, mpp=0.25, magnification=40)
    with h5py.File(tmp_path / "patches.h5", "w") as h5:
        trident_coords(h5, np.array([[0, 0], [0, 512], [512, 512]]))
    out = tmp_path / "features" / "TCGA-XX-0001-01Z-00-DX1.h5"
    extract_patch_features(str(tmp_path / "patches.h5"), str(slide), SPEC, str(out), batch_size=2, device="cpu",
                           precision="fp32", progress=False)
    with h5py.File(out) as h5:
        assert h5["features"].shape[0] == 3 and h5["coords"].shape == (3, 2)
        attrs = dict(h5["coords"].attrs)
        assert set(TRIDENT_COORDS_ATTRS) <= set(attrs) and not set(h5.attrs)
        assert attrs["level0_magnification"] == 40 and attrs["level0_mpp"] == 0.25 and attrs["encoder"] == "demo"
        assert h5["features"].attrs["encoder"] == "demo"
        assert h5["features"].attrs["name"] == out.stem and h5["features"].attrs["savetodir"] == str(out.parent)
        pink, pink_below, glass = h5["features"][:]
    assert not np.allclose(pink, glass)  # crops were read where the coords point
    assert [round(2 * g.half_width_level0) for g in geometries] == [512]
    # coords are the patches' top-left corners: both pink patches lie wholly inside the pink half,
    # so they read the same pixels (centred on the corners, they would take in white margins unalike)
    assert np.abs(pink - pink_below).max() < 0.05 * np.abs(pink - glass).max()


def test_our_patch_file_has_every_trident_attribute_with_its_type(tmp_path):
    rgb = np.full((1024, 1536, 3), 240, np.uint8)
    rgb[256:768, 256:1024] = (200, 120, 170)
    slide = tmp_path / "TCGA-XX-0002-01Z-00-DX1.svs"
    write_svs(slide, rgb)  # 0.5 µm/px, 20x
    make_patches(str(slide), tmp_path / "patches" / "p.h5", tmp_path / "p.jpg", magnification=20, patch_px=256)
    with h5py.File(tmp_path / "patches" / "p.h5") as h5:
        attrs = {k: h5["coords"].attrs[k] for k in h5["coords"].attrs}
        assert h5["coords"].dtype == np.int64 and len(h5["coords"]) > 0
    for key, kind in TRIDENT_COORDS_ATTRS.items():
        assert key in attrs, key
        value = attrs[key]
        assert isinstance(value, str) if kind is str else isinstance(value, np.integer), (key, type(value))
    assert (attrs["level0_width"], attrs["level0_height"]) == (1536, 1024)
    assert attrs["level0_magnification"] == attrs["target_magnification"] == 20 and attrs["overlap"] == 0
    assert attrs["patch_size"] == 256 == attrs["patch_size_level0"]
    assert attrs["name"] == "TCGA-XX-0002-01Z-00-DX1" and attrs["savetodir"] == str(tmp_path / "patches")
    assert attrs["level0_mpp"] == 0.5 and attrs["target_mpp"] == 0.5  # ours, kept


def test_an_odd_mpp_keeps_trident_geometry_consistent():
    """0.2527 µm/px is 39.57x: kept as a float (not rounded to TRIDENT's 40), so TRIDENT's
    patch_size * level0_magnification / target_magnification is our level-0 side."""
    assert magnification(0.5) == 20 and isinstance(magnification(0.5), int)
    level0 = magnification(0.2527)
    assert isinstance(level0, float) and round(256 * level0 / 20) == round(256 * 0.5 / 0.2527)
    geometry = patch_geometry({"patch_size": 256, "level0_mpp": 0.2527, "target_mpp": 0.5}, "x.h5")
    assert geometry["patch_size_level0"] == 507 and geometry["level0_magnification"] == level0
