"""Per-cell H&E features of one slide with a frozen encoder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from tissuekd import compute
from tissuekd.encoders.extract import Encoder, write_features
from tissuekd.encoders.registry import EncoderSpec, build_encoder
from tissuekd.io.columns import CELL_ID, XY_HE
from tissuekd.io.wsi import open_slide
from tissuekd.spatial.crops import CropBatches, CropGeometry, crop_loader, default_workers

log = logging.getLogger(__name__)


def extract_cell_features(cells_path: str, slide_path: str, he_image: str, spec: EncoderSpec, out: str, *,
                          crop_px: int = 224, batch_size: int = 64, block_px: int = 2048,
                          device: str = "auto", precision: str = "auto", threads: int | None = None,
                          backend: str = "auto", loader_workers: int | None = None, progress: bool = True) -> None:
    """The rule niche_features: one square H&E crop centred on each cell, cut at the encoder's
    resolution, through the frozen encoder; features are streamed to HDF5 batch by batch.

    Parameters
    ----------
    cells_path : str
        The slide's cells.parquet (niche_ingest); crops are centred on `x_he`, `y_he` (H&E level-0 px).
    slide_path : str
        The slide's slide.json (niche_ingest); its `he_mpp` (µm per H&E level-0 px) sets the crop scale.
    he_image : str
        The H&E whole-slide image the cells were registered onto.
    spec : EncoderSpec
        The encoder; crops are cut at its `mpp` (µm/px), from the coarsest pyramid level at least that fine.
    out : str
        HDF5 file written: `features` (cells, dim) float32, `coords` (cells, 2) the crop centres in H&E
        level-0 px, `cell_id`; rows in cells.parquet's order.
    crop_px : int, default 224
        Crop side in encoder pixels (the encoder's input size): crop_px * spec.mpp µm of tissue (112 µm at 0.5 µm/px).
    batch_size : int, default 64
        Crops per encoder batch.
    block_px : int, default 2048
        Side of the blocks read from the slide at once, in pixels of the pyramid level read.
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    threads : int or None
        Cap on torch's intra-op threads (None: torch's default).
    backend : str, default "auto"
        Slide reader: "auto" (tifffile for OME-TIFF, OpenSlide otherwise), "openslide" or "tifffile".
    loader_workers : int or None
        Crop-reader processes; None: spatial.crops.default_workers (0 on the CPU, up to 8 with a GPU).
    progress : bool, default True
        Show a progress bar.
    """
    cells = pd.read_parquet(cells_path)
    meta = json.loads(Path(slide_path).read_text())
    run = compute.resolve(device, precision, threads)
    dev = run.device
    encoder = Encoder(build_encoder(spec), spec, run)
    centers = cells[XY_HE].to_numpy()
    with open_slide(he_image, backend) as slide:
        geometry = CropGeometry.for_slide(slide, meta["he_mpp"], spec.mpp, crop_px)
        log.info("%s: %d cells, level %d, %d px crops -> %d px, %s on %s", he_image, len(cells), geometry.level,
                 geometry.source_px, crop_px, spec.arch, dev)
    workers = loader_workers if loader_workers is not None else default_workers(dev)
    batches = crop_loader(CropBatches(he_image, backend, centers, geometry, batch_size, block_px), workers)
    attrs = {"encoder": spec.name, "arch": spec.arch, "mpp": spec.mpp, "crop_px": crop_px,
             "he_mpp": meta["he_mpp"], "level": geometry.level, "precision": run.precision,
             "coords": "H&E level-0 pixels (x, y)"}
    write_features(out, batches, encoder, centers.astype("f4"), attrs, progress,
                   extra={CELL_ID: cells[CELL_ID].to_numpy()})
