"""What the segmentation rules will call: files in, files out, one function per step.

A data set's split is read by tissuekd.io.segmentation (TissueNet npz or BBBC038 folder);
models are saved with their backbone, channels and training config, so a checkpoint says
what it is; teacher probabilities go to an npz keyed `probs` (N, 2, H, W) with the image ids.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import torch

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.segmentation import SegSet, read_bbbc038, read_tissuenet
from tissuekd.segmentation.evaluate import dice, instances, object_f1
from tissuekd.segmentation.models import build_unet, parameter_count
from tissuekd.segmentation.train import SegTrainConfig, fit, predict

FORMATS = ("tissuenet", "bbbc038")


def read_split(fmt: str, path: str, target: str = "whole-cell", nuclear_only: bool = False) -> SegSet:
    """One split of a data set in its published layout; `nuclear_only` keeps the nuclear channel."""
    if fmt == "tissuenet":
        return read_tissuenet(path, membrane=None if nuclear_only else 1, target=target)
    if fmt == "bbbc038":
        return read_bbbc038(path)
    raise InputError(path, f"unknown segmentation format {fmt!r} (one of {', '.join(FORMATS)})")


def fit_model(data: SegSet, backbone: str, out: str, cfg: SegTrainConfig, mode: str = "no-kd",
              teacher_probs: str | None = None) -> None:
    """Train on a split (teacher: every channel; student: the nuclear one) and save the checkpoint."""
    probs = None
    if teacher_probs is not None:
        with np.load(teacher_probs) as saved:
            if list(saved["ids"]) != list(data.ids):
                raise InputError(teacher_probs, "teacher probabilities are for other images than the split's")
            probs = saved["probs"]
    model = fit(backbone, data.images, data.labels, cfg, mode, probs)
    checkpoint = {"state": model.state_dict(), "backbone": backbone, "channels": data.channels, "mode": mode,
                  "config": asdict(cfg), "parameters": parameter_count(model)}
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)


def load_model(path: str) -> tuple[torch.nn.Module, dict]:
    checkpoint = torch.load(path, weights_only=False)
    tile = checkpoint["config"]["tile"]
    model = build_unet(checkpoint["backbone"], len(checkpoint["channels"]), tile)
    model.load_state_dict(checkpoint["state"])
    return model.eval(), checkpoint


def predict_probs(data: SegSet, model_path: str, out: str) -> None:
    """The frozen model's probabilities for every image of a split (the cached teacher output)."""
    model, checkpoint = load_model(model_path)
    probs = predict(model, _stack(data.images), checkpoint["config"]["tile"])
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, probs=probs, ids=np.array(data.ids))


def evaluate(data: SegSet, model_path: str, out: str) -> pd.DataFrame:
    """Per image: foreground Dice and object F1 at IoU 0.5 (instances: watershed of foreground
    minus boundary probability), with the model's backbone, mode and parameter count."""
    model, checkpoint = load_model(model_path)
    rows = []
    for i, (image, labels) in enumerate(zip(data.images, data.labels)):
        probs = predict(model, np.asarray(image)[None], checkpoint["config"]["tile"])[0]
        labels = np.asarray(labels)
        rows.append({"image": data.ids[i], "tissue": data.tissues[i], "platform": data.platforms[i],
                     "dice": dice(probs[0] >= 0.5, labels > 0),
                     "f1": object_f1(instances(probs[0] - probs[1]), labels)["f1"]})
    table = pd.DataFrame(rows).assign(backbone=checkpoint["backbone"], mode=checkpoint["mode"],
                                      seed=checkpoint["config"]["seed"], parameters=checkpoint["parameters"])
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def _stack(images) -> np.ndarray:
    if isinstance(images, np.ndarray):
        return images
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError("images of different sizes: predict them one by one")
    return np.stack(images)
