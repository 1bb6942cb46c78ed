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
