"""Streamed feature extraction: features go to HDF5 batch by batch as crops arrive (from a
DataLoader worker, see tissuekd.spatial.crops), so memory does not grow with the slide."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from tissuekd.compute import Compute
from tissuekd.encoders.registry import EncoderSpec
from tissuekd.io.atomic import atomic_path
from tissuekd.logs import log_progress

log = logging.getLogger(__name__)


class Encoder:
    """A frozen model plus its normalisation, run on `compute`'s device at its precision
    (autocast for bf16/fp16; see tissuekd.compute for how `auto` chooses)."""

    def __init__(self, model: torch.nn.Module, spec: EncoderSpec, compute: Compute):
        self.spec = spec
        self.compute = compute
        self.device = device = compute.device
        self.model = model.to(device).to(memory_format=torch.channels_last)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(spec.mean, device=device).view(shape) * 255
        self.std = torch.tensor(spec.std, device=device).view(shape) * 255
        if spec.weights == "random":  # the demo's stand-in; said in every job's log that uses one
            log.warning("encoder %s (%s) has seeded random weights: its features carry no learnt histology; for "
                        "real data name a local weights file (README, 'Encoders and weights')", spec.name, spec.arch)

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,H,W) -> float32 (B, dim)."""
        x = crops.to(self.device, non_blocking=True).float()
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with self.compute.autocast():
            out = self.model(x)
        return out.float().cpu()


def write_features(
    out: str | Path,
    batches: Iterable[tuple[np.ndarray, torch.Tensor]],
    encoder: Encoder,
    coords: np.ndarray,
    attrs: dict,
    progress: bool = True,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Encode every batch and write `features` and `coords` (the TRIDENT/CLAM layout), plus
    `extra` datasets (e.g. `cell_id`); strings are stored as HDF5 strings.

    As TRIDENT does, `attrs` (the patch file's geometry and ours: encoder, arch, precision, ...)
    go on `coords`, and `features` carries `name` (the file's stem), `savetodir` (its folder)
    and `encoder`. None values are left out. The file appears under `out` only once every row
    has been written.

    Parameters
    ----------
    out : str or Path
        HDF5 file written.
    batches : iterable of (np.ndarray, torch.Tensor)
        (row indices, increasing within a batch; uint8 crops (B, 3, H, W)), e.g. from spatial.crops.crop_loader.
    encoder : Encoder
        The frozen encoder, on its device and at its precision.
    coords : np.ndarray
        (n, 2) stored as `coords`; n is the row count (the niche study: cell centres, H&E level-0 px; the
        survival study: patch top-left corners, level-0 px).
    attrs : dict
        Attributes of `coords`.
    progress : bool, default True
        Show a progress bar; without it (jobs inside Snakemake's process, whose stderr is the
        console), about ten log lines say how far it is.
    extra : dict of str to np.ndarray, or None
        More datasets of n rows, e.g. `cell_id`.

    Raises
    ------
    RuntimeError
        When some row got no features.
    """
    n = len(coords)
    out = Path(out)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        feats = None  # created at the first batch: pooled width is not always model.num_features
        if n == 0:  # e.g. a slide without tissue: an empty, well-formed file
            feats = h5.create_dataset("features", (0, 0), dtype="f4")
        h5.create_dataset("coords", data=np.asarray(coords))
        for name, values in (extra or {}).items():
            values = np.asarray(values)
            if values.dtype.kind in "OUS":
                h5.create_dataset(name, data=values.astype(object), dtype=h5py.string_dtype())
            else:
                h5.create_dataset(name, data=values)
        written, done = np.zeros(n, dtype=bool), 0
        with tqdm(total=n, desc="features", unit="crop", disable=not progress, mininterval=5) as bar:
            for idx, crops in batches:
                rows = encoder(crops).numpy()
                if feats is None:
                    feats = h5.create_dataset("features", (n, rows.shape[1]), dtype="f4",
                                              chunks=(min(n, 1024), rows.shape[1]))
                feats[idx] = rows  # idx is increasing within a batch
                written[idx] = True
                bar.update(len(idx))
                done += len(idx)
                if not progress:
                    log_progress(log, f"{out.name}: features", done, n, step=len(idx))
        if not written.all():
            raise RuntimeError(f"{(~written).sum()} of {n} crops got no features")
        h5["coords"].attrs.update(attrs)
        h5["features"].attrs.update({"name": out.stem, "savetodir": str(out.parent),
                                     **({"encoder": str(attrs["encoder"])} if "encoder" in attrs else {})})
