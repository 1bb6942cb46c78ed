"""Crops cut from block reads, and streamed feature files."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import he_image

from tissuekd.encoders.registry import EncoderSpec
from tissuekd.io.wsi import open_slide
from tissuekd.niche.features import extract_cell_features
from tissuekd.spatial.crops import CropGeometry, iter_crop_batches

SPEC = EncoderSpec.from_config("demo", {"model": "mobilenetv3_small_050", "mpp": 0.5, "weights": "random"})


def _all_crops(slide, centers, geometry, **kw):
    crops = np.zeros((len(centers), 3, geometry.crop_px, geometry.crop_px), np.uint8)
    seen = np.zeros(len(centers), int)
    for idx, batch in iter_crop_batches(slide, centers, geometry, **kw):
        assert (np.diff(idx) > 0).all()
        crops[idx] = batch.numpy()
        seen[idx] += 1
    assert (seen == 1).all()
    return crops


def test_block_crops_equal_direct_reads(ingested, demo_slide):
    cells = pd.read_parquet(ingested["cells"]).sample(300, random_state=0)
    centers = cells[["x_he", "y_he"]].to_numpy()
    with open_slide(he_image(demo_slide)) as slide:
        geometry = CropGeometry.for_slide(slide, 0.25, 0.5, 224)
        assert (geometry.level, geometry.scale) == (1, 1.0)  # the 0.5 um/px level, no resampling
        crops = _all_crops(slide, centers, geometry, batch_size=37, block_px=512)
        for i in (0, 150, 299):
            x, y = np.floor(centers[i] / 2 - 112).astype(int)
            direct = slide.read(1, x, y, 224, 224).transpose(2, 0, 1)
            assert np.array_equal(crops[i], direct)


def test_resampled_crops_match_the_pyramid_level(ingested, demo_slide):
    """OpenSlide sees only level 0 of the OME pyramid: crops are resampled 2x from it."""
    cells = pd.read_parquet(ingested["cells"]).sample(100, random_state=1)
    centers = cells[["x_he", "y_he"]].to_numpy()
    path = he_image(demo_slide)
    with open_slide(path, "openslide") as osl, open_slide(path, "tifffile") as tif:
        fine = CropGeometry.for_slide(osl, 0.25, 0.5, 224)
        assert fine.level == 0 and fine.scale == pytest.approx(2.0)
        resampled = _all_crops(osl, centers, fine).astype(float)
        native = _all_crops(tif, centers, CropGeometry.for_slide(tif, 0.25, 0.5, 224)).astype(float)
    assert np.abs(resampled - native).mean() < 12  # same field of view; filters and JPEG differ
    shifted = np.roll(native, 12, axis=-1)
    assert np.abs(resampled - shifted).mean() > np.abs(resampled - native).mean() * 1.5


def test_feature_file_layout(ingested, demo_slide, tmp_path):
    out = tmp_path / "features.h5"
    extract_cell_features(str(ingested["cells"]), str(ingested["slide"]), str(he_image(demo_slide)), SPEC, str(out),
                          batch_size=50, block_px=700, progress=False)
    cells = pd.read_parquet(ingested["cells"])
    with h5py.File(out) as h5:
        assert h5["features"].shape[0] == len(cells) and h5["features"].dtype == np.float32
        assert np.isfinite(h5["features"][:]).all()
        assert list(h5["cell_id"].asstr()[:]) == list(cells["cell_id"])
        assert np.allclose(h5["coords"][:], cells[["x_he", "y_he"]].to_numpy(), atol=1e-3)
        assert h5["coords"].attrs["encoder"] == "demo" and h5["coords"].attrs["mpp"] == 0.5
        features = h5["features"][:]
    # rows follow the cell table: re-encoding a few cells alone gives the same rows
    sub = cells.iloc[[5, 700, 1400]]
    sub_cells = tmp_path / "sub.parquet"
    sub.to_parquet(sub_cells)
    extract_cell_features(str(sub_cells), str(ingested["slide"]), str(he_image(demo_slide)), SPEC,
                          str(tmp_path / "sub.h5"), progress=False)
    with h5py.File(tmp_path / "sub.h5") as h5:
        assert np.allclose(h5["features"][:], features[[5, 700, 1400]], atol=0.05 * np.abs(features).max())


def test_features_without_a_bar_log_how_far_they_are(ingested, demo_slide, tmp_path, caplog):
    """Jobs inside Snakemake's process show no bar (their stderr is the console): a features
    job of hours said nothing between its first line and its end."""
    with caplog.at_level("INFO", logger="tissuekd.encoders.extract"):
        extract_cell_features(str(ingested["cells"]), str(ingested["slide"]), str(he_image(demo_slide)), SPEC,
                              str(tmp_path / "features.h5"), batch_size=50, progress=False)
    n = len(pd.read_parquet(ingested["cells"]))
    lines = [r.getMessage() for r in caplog.records if ": features: " in r.getMessage()]
    assert len(lines) == 10 and lines[-1] == f"features.h5: features: {n} of {n} (100%)", lines


def test_failed_extraction_leaves_no_file(ingested, demo_slide, tmp_path, monkeypatch):
    import tissuekd.encoders.extract as extract

    calls = {"n": 0}
    original = extract.Encoder.__call__

    def fail_midway(self, crops):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self, crops)

    monkeypatch.setattr(extract.Encoder, "__call__", fail_midway)
    out = tmp_path / "features.h5"
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_cell_features(str(ingested["cells"]), str(ingested["slide"]), str(he_image(demo_slide)), SPEC,
                              str(out), batch_size=64, progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.h5"))


def test_parallel_reader_workers_share_the_blocks(ingested, demo_slide):
    """Each DataLoader worker reads its own blocks: every cell exactly once, same crops."""
    from tissuekd.spatial.crops import CropBatches, crop_loader

    cells = pd.read_parquet(ingested["cells"])
    centers = cells[["x_he", "y_he"]].to_numpy()
    with open_slide(he_image(demo_slide)) as slide:
        geometry = CropGeometry.for_slide(slide, 0.25, 0.5, 224)
    dataset = CropBatches(he_image(demo_slide), "auto", centers, geometry, batch_size=64, block_px=600)

    def collect(workers):
        out = {}
        for idx, crops in crop_loader(dataset, workers):
            for i, crop in zip(np.asarray(idx), crops.numpy()):
                assert i not in out
                out[i] = crop
        return out

    serial, parallel = collect(0), collect(2)
    assert sorted(serial) == sorted(parallel) == list(range(len(cells)))
    assert all(np.array_equal(serial[i], parallel[i]) for i in range(0, len(cells), 97))


def test_the_encoder_sees_crops_normalised_by_its_mean_and_sd():
    """uint8 crops -> (x / 255 - mean) / std per channel, the normalisation the weights were trained with."""
    import torch

    from tissuekd.compute import CPU
    from tissuekd.encoders.extract import Encoder

    spec = EncoderSpec.from_config("probe", {"model": "mobilenetv3_small_050", "mpp": 0.5, "weights": "random",
                                             "mean": [0.1, 0.5, 0.9], "std": [0.2, 0.3, 0.4]})
    crops = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    seen = Encoder(torch.nn.Flatten(), spec, CPU)(crops)
    mean, std = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(seen, ((crops.float() / 255 - mean) / std).flatten(1), atol=1e-5)
