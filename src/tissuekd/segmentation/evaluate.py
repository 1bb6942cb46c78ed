"""Segmentation metrics: foreground Dice per image, and object-level F1 at an IoU threshold on
instances cut from a predicted probability map (the matching cell-segmentation benchmarks
use: a one-to-one assignment maximising IoU, a pair counting as a hit at IoU >= 0.5)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|) of two foreground masks; 1.0 when both are empty."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def instances(foreground: np.ndarray, threshold: float = 0.5, min_distance: int = 3) -> np.ndarray:
    """Instance labels from a foreground probability map: the mask above `threshold`, split by a
    watershed of its distance transform from one marker per local maximum (so touching cells
    that a plain connected-components pass would merge come apart)."""
    mask = foreground >= threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndimage.distance_transform_edt(mask)
    components, _ = ndimage.label(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def iou_matrix(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every predicted object (rows, ids 1..) with every true object (columns, ids 1..)."""
    n_pred, n_true = int(pred.max()), int(truth.max())
    joint = np.bincount(pred.ravel().astype(np.int64) * (n_true + 1) + truth.ravel(),
                        minlength=(n_pred + 1) * (n_true + 1)).reshape(n_pred + 1, n_true + 1)
    area_pred, area_true = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    union = area_pred + area_true - joint
    return (joint / np.maximum(union, 1))[1:, 1:]


def object_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> dict:
    """Matched objects at IoU >= `iou` (one-to-one, maximising total IoU): tp, fp, fn and
    F1 = 2tp / (2tp + fp + fn); 1.0 when both images have no objects."""
    # native-order copies: skimage refuses read-only arrays (an image of a memory-mapped split) and
    # big-endian ones (an npz written on such a machine)
    pred, truth = (relabel_sequential(np.array(a, dtype=np.asarray(a).dtype.newbyteorder("=")))[0]
                   for a in (pred, truth))
    scores = iou_matrix(pred, truth)
    rows, cols = linear_sum_assignment(-scores) if scores.size else (np.zeros(0, int), np.zeros(0, int))
    tp = int((scores[rows, cols] >= iou).sum())
    fp, fn = int(pred.max()) - tp, int(truth.max()) - tp
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "f1": f1}

