"""SAM as a frozen teacher (segmentation.teacher sam): Meta's Segment Anything through its
`segment-anything` package, from a local checkpoint only (nothing is downloaded).

SAM segments objects, not probabilities; its automatic mask generator (a grid of point
prompts, masks kept by predicted IoU and stability, then non-maximum suppression) gives each
mask a predicted IoU q in [0, 1]. Per pixel p, over the kept masks m smaller than `max_area`
of the image (larger ones are background or tissue regions, not cells):

    foreground(p) = max_{m ∋ p} q_m                 (0 where no mask covers p)
    boundary(p)   = max_{m : p on m's inner rim} q_m

so a pixel inside a confident cell mask is foreground with that confidence, and the rims of
the masks are the boundary map the students' boundary-aware term and the instance split use.
The multiplex view gives SAM an RGB composite (red: membrane, green: nuclear, each scaled to
its 99th percentile); the nuclear-only control gives it the nuclear channel as grey.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import find_boundaries

from tissuekd.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class SamConfig:
    checkpoint: str = ""  # a local SAM checkpoint (state dict), e.g. sam_vit_h_4b8939.pth
    model_type: str = "vit_h"  # vit_h, vit_l or vit_b: must be the checkpoint's
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    max_area: float = 0.05  # masks above this share of the image are dropped (not cells)


def load_sam(cfg: SamConfig, device: str = "cpu"):
    """SAM of `cfg.model_type` with the checkpoint's weights; a missing file or one of another
    model type stops with the file named."""
    from segment_anything import sam_model_registry

    path = Path(cfg.checkpoint)
    if cfg.model_type not in ("vit_h", "vit_l", "vit_b"):
        raise InputError(path, f"unknown SAM model type {cfg.model_type!r} (vit_h, vit_l or vit_b)")
    if not cfg.checkpoint or not path.is_file():
        raise InputError(path, "SAM checkpoint not found (segmentation.sam.checkpoint: a local file; "
                               "nothing is downloaded)")
    model = sam_model_registry[cfg.model_type](checkpoint=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise InputError(path, f"is not a SAM {cfg.model_type} checkpoint ({str(err).splitlines()[0]})") from None
    return model.to(device).eval()


def composite(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 SAM input from (H, W, C) channels [nuclear, membrane?]: red membrane,
    green nuclear (each / its 99th percentile); one channel: grey."""
    scaled = image / np.maximum(np.percentile(image, 99, axis=(0, 1)), 1e-6)
    scaled = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    if scaled.shape[2] == 1:
        return np.repeat(scaled, 3, axis=2)
    return np.stack([scaled[..., 1], scaled[..., 0], np.zeros_like(scaled[..., 0])], axis=-1)


def masks_to_maps(masks: list[dict], shape: tuple[int, int], max_area: float) -> np.ndarray:
    """(2, H, W) float32 foreground and boundary maps from SAM's masks (module docstring)."""
    maps = np.zeros((2, *shape), np.float32)
    limit = max_area * shape[0] * shape[1]
    for mask in masks:
        if mask["area"] > limit:
            continue
        q = float(np.clip(mask["predicted_iou"], 0, 1))
        segment = mask["segmentation"]
        maps[0][segment] = np.maximum(maps[0][segment], q)
        rim = find_boundaries(segment, mode="inner")
        maps[1][rim] = np.maximum(maps[1][rim], q)
    return maps


class SamTeacher:
    """The automatic mask generator over a loaded SAM; `maps(image)` gives (2, H, W)."""

    def __init__(self, cfg: SamConfig, device: str = "cpu"):
        from segment_anything import SamAutomaticMaskGenerator

        self.cfg = cfg
        self.generator = SamAutomaticMaskGenerator(
            load_sam(cfg, device), points_per_side=cfg.points_per_side, pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh)

    @torch.no_grad()
    def maps(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, np.float32)
        masks = self.generator.generate(composite(image))
        return masks_to_maps(masks, image.shape[:2], self.cfg.max_area)
