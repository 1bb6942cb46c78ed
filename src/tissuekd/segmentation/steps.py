"""What the segmentation rules will call: files in, files out, one function per step.

A data set's split is read by tissuekd.io.segmentation (TissueNet npz, BBBC038 or TIFF folder);
models are saved with their backbone, channels and training config, so a checkpoint says
what it is; teacher probabilities go to an npz keyed `probs` (N, 2, H, W) with the image ids.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch

from tissuekd import compute
from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.npz import NpzWriter, npz_member
from tissuekd.io.segmentation import read_split
from tissuekd.io.segset import ImageFiles, SegSet
from tissuekd.io.teacher_maps import ExternalMaps
from tissuekd.logs import log_progress
from tissuekd.segmentation.evaluate import dice, instances, object_f1
from tissuekd.segmentation.models import DECODER, build_unet, parameter_count
from tissuekd.segmentation.train import SegTrainConfig, fit, predict

log = logging.getLogger(__name__)


def annotated(groups: list[str], share: float, by: str = "order") -> np.ndarray:
    """(n,) bool: the images whose labels the models see, the same whatever the seed, so the
    teachers and every student agree on them. `groups`: each image's group (tissue and
    platform). by "order": every round(1 / share)-th image of the split; on a split that cycles
    through its groups, as the demo's does (a period of 4), share 0.25 then takes one group: the
    demo's labels are all its breast tiles from CODEX, and the other tissue and platform reach
    the models only through the teacher (README, "Labels on a quarter of the training images").
    by "group": every round(1 / share)-th image of each group, so every group keeps labels."""
    step, groups = max(1, round(1 / share)), np.asarray(groups)
    if by == "order":
        return np.arange(len(groups)) % step == 0
    if by != "group":
        raise ValueError(f"labelled_by {by!r}: one of order, group")
    chosen = np.zeros(len(groups), bool)
    for group in np.unique(groups):
        chosen[np.flatnonzero(groups == group)[::step]] = True
    return chosen


def shard_rows(n: int, shard: int, shards: int) -> slice:
    """Images [shard * n / shards, (shard + 1) * n / shards): contiguous, so shards concatenate in order."""
    return slice(shard * n // shards, (shard + 1) * n // shards)


class ShardMaps:
    """The teacher's cached maps of a split, image i of its shards in order, each shard's array
    memory-mapped (NpzWriter stores members uncompressed), so a student never holds them whole."""

    def __init__(self, paths: list[str]):
        self.shards = [npz_member(path, "probs") for path in paths]
        self.starts = np.cumsum([0] + [len(shard) for shard in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return np.asarray(self.shards[shard][i - self.starts[shard]])


def load_probs(paths: list[str], ids: list[str]) -> ShardMaps:
    """The teacher's cached probabilities of every image, from its shards in order; they must be
    for exactly the split's images."""
    seen = [str(i) for path in paths for i in npz_member(path, "ids")]
    if seen != list(ids):
        raise InputError(paths[0], "teacher probabilities are for other images than the split's")
    return ShardMaps(paths)


def fit_model(data: SegSet, backbone: str, out: str, cfg: SegTrainConfig, mode: str = "no-kd",
              teacher_probs: str | list[str] | None = None, labelled_share: float = 1.0, teacher: str = "",
              device: str = "auto", precision: str = "auto", labelled_by: str = "order") -> None:
    """Train on a split (teacher: every channel; student: the nuclear one) and save the checkpoint.
    `teacher_probs`: the teacher's cached shards (kd); `labelled_share`, `labelled_by`: see `annotated`;
    `teacher` names the teacher in the checkpoint (kd modes)."""
    if isinstance(data.images, ImageFiles):
        data.images.require_one_size()
    probs = None
    if teacher_probs is not None:
        probs = load_probs([teacher_probs] if isinstance(teacher_probs, str) else list(teacher_probs), data.ids)
    groups = [f"{tissue} {platform}" for tissue, platform in zip(data.tissues, data.platforms)]
    labelled = annotated(groups, labelled_share, labelled_by)
    with_labels, images = Counter(g for g, known in zip(groups, labelled) if known), Counter(groups)
    per_group = {g: f"{with_labels[g]}/{images[g]}" for g in sorted(images)}
    log.info("%s %s: %d images, labels on %d (by %s; per tissue and platform %s)", backbone, mode, len(data),
             labelled.sum(), labelled_by, per_group)
    run = compute.resolve(device, precision, workload="model")
    model = fit(backbone, data.images, data.labels, cfg, mode, probs, compute=run, labelled=labelled)
    checkpoint = {"state": model.state_dict(), "backbone": backbone, "channels": data.channels, "mode": mode,
                  "teacher": teacher, "config": asdict(cfg), "parameters": parameter_count(model),
                  "labelled": int(labelled.sum()), "images": len(data)}
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)


def load_model(path: str) -> tuple[torch.nn.Module, dict]:
    checkpoint = torch.load(path, weights_only=False)
    cfg = checkpoint["config"]
    model = build_unet(checkpoint["backbone"], len(checkpoint["channels"]), cfg["tile"],
                       cfg.get("decoder_channels", DECODER))
    model.load_state_dict(checkpoint["state"])
    return model.eval(), checkpoint


def predict_probs(data: SegSet, model_path: str, out: str, shard: int = 0, shards: int = 1, device: str = "auto",
                  precision: str = "auto") -> None:
    """The frozen model's probabilities for one shard of a split's images (the cached teacher
    output), predicted and written one image at a time, so a shard is never held whole."""
    model, checkpoint = load_model(model_path)
    rows = shard_rows(len(data), shard, shards)
    run = compute.resolve(device, precision, workload="model")
    tile = checkpoint["config"]["tile"]

    def maps(i):
        return predict(model, np.asarray(data.images[i])[None], tile, compute=run)[0]

    write_shard(data, rows, maps, out, f"{model_path}: maps of shard {shard}")


def external_probs(data: SegSet, maps_path: str, out: str, shard: int = 0, shards: int = 1) -> None:
    """A teacher produced elsewhere (tissuekd.io.teacher_maps.ExternalMaps): its maps for one
    shard of a split's images, written as predict_probs writes the U-Net teacher's."""
    maps = ExternalMaps(maps_path)
    rows = shard_rows(len(data), shard, shards)
    maps.require(data.ids[rows])
    write_shard(data, rows, lambda i: maps.get(data.ids[i], np.shape(data.labels[i])), out)


def write_shard(data: SegSet, rows: slice, maps_of, out: str, progress: str = "") -> None:
    """A shard in the cached layout the students read: `probs` (n, 2, H, W) float32, image i's
    maps_of(i) written as each is made (the shard's images share one size: a training split's
    do), and the images' `ids`; logs `progress` where given."""
    if isinstance(data.images, ImageFiles):
        data.images.require_one_size()
    n = rows.stop - rows.start
    shape = (2, *np.shape(data.images[rows.start if n else 0])[:2])
    if not n:
        log.warning("%s: this shard holds none of the split's %d images (segmentation.teacher_shards is larger): "
                    "written empty", out, len(data))

    def made():
        for k, i in enumerate(range(rows.start, rows.stop)):
            yield maps_of(i)
            if progress:
                log_progress(log, progress, k + 1, n)

    with atomic_path(out) as tmp, NpzWriter(tmp) as npz:
        npz.rows("probs", made(), n, shape, np.float32)
        npz.array("ids", np.array(data.ids[rows]))


def sam_maps(data: SegSet, sam: dict, out: str, shard: int = 0, shards: int = 1, device: str = "auto",
             keyed: bool = False) -> None:
    """SAM's maps (tissuekd.segmentation.sam) of one shard of a split: in the cached layout the
    students read (`probs`, `ids`), or `keyed` by image id as an external teacher's maps (the
    test split, scored as the oracle row)."""
    from tissuekd.segmentation.sam import SamConfig, SamTeacher

    run = compute.resolve(device, "fp32", workload="model")
    teacher = SamTeacher(SamConfig(**sam), str(run.device))
    rows = shard_rows(len(data), shard, shards)
    progress = f"SAM maps of shard {shard}"
    if not keyed:
        write_shard(data, rows, lambda i: teacher.maps(data.images[i]), out, progress)
        return
    with atomic_path(out) as tmp, NpzWriter(tmp) as npz:
        for k, i in enumerate(range(rows.start, rows.stop)):
            npz.array(data.ids[i], teacher.maps(data.images[i]))
            log_progress(log, progress, k + 1, rows.stop - rows.start)


def check_split_contents(split: dict, out: str) -> None:
    """What training or scoring needs of a split (read_split's arguments) and planning (headers
    only) cannot see: every image and label file readable, finite pixels, and a labelled object
    in at least one image. Made once per split before any model trains on it or is to be scored
    on it (else found by every training job in turn, or at scoring after every model had
    trained); `out` notes what was read."""
    data = read_split(**split)  # a TissueNet split's pixels are scanned here, in chunks
    labelled = 0
    for i in range(len(data)):  # a folder's images and labels are read, and checked, one by one
        if split["fmt"] != "tissuenet":
            _ = data.images[i]
        labelled += bool(np.asarray(data.labels[i]).any())
        log_progress(log, "images checked", i + 1, len(data))
    if not labelled:
        raise InputError(split["path"], f"none of the {len(data)} images has a labelled object: "
                                        "are these the split's labels?")
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        f.write(f"{split['path']}: {len(data)} images readable, pixels finite, {labelled} with labelled objects\n")


def score(data: SegSet, probs_of, source: str = "the split") -> pd.DataFrame:
    """Per image: foreground Dice and object F1 at IoU 0.5 (instances: watershed of foreground
    minus boundary probability); `probs_of(i)` gives image i's (2, H, W) maps. Images without a
    labelled object are left out (both scores are undefined there; counted in a warning), none
    left is an error; labels that are 0/1 masks, not instance ids, are split into connected
    components (touching objects merge; counted in a warning)."""
    from skimage.measure import label as components

    rows, empty, binary = [], [], []
    for i, labels in enumerate(data.labels):
        labels = np.asarray(labels)
        if not labels.any():
            empty.append(data.ids[i])
            continue
        if labels.max() == 1:
            labels = components(labels > 0)
            binary += [data.ids[i]] if labels.max() > 1 else []
        probs = probs_of(i)
        rows.append({"image": data.ids[i], "tissue": data.tissues[i], "platform": data.platforms[i],
                     "dice": dice(probs[0] >= 0.5, labels > 0),
                     "f1": object_f1(instances(probs[0] - probs[1]), labels)["f1"]})
        log_progress(log, "scored images", i + 1, len(data.labels))
    if empty:
        log.warning("%d of %d images have no labelled object, e.g. %s: left out of the scores", len(empty),
                    len(data.ids), empty[:3])
    if binary:
        log.warning("%d of %d images are labelled with a 0/1 mask, not instance ids, e.g. %s: objects taken as "
                    "connected components (touching ones merge)", len(binary), len(data.ids), binary[:3])
    if not rows:
        raise InputError(source, f"none of the {len(data.ids)} images has a labelled object (e.g. {data.ids[:3]}): "
                                 "are these the split's labels?")
    return pd.DataFrame(rows)


def evaluate(data: SegSet, model_path: str, out: str, run: compute.Compute = compute.CPU,
             source: str = "the split") -> pd.DataFrame:
    """`score` of a checkpoint's predictions, with the model's backbone, mode and parameter count."""
    model, checkpoint = load_model(model_path)
    tile = checkpoint["config"]["tile"]
    table = score(data, lambda i: predict(model, np.asarray(data.images[i])[None], tile, compute=run)[0], source)
    table = table.assign(backbone=checkpoint["backbone"], mode=checkpoint["mode"],
                         teacher=checkpoint.get("teacher", ""), seed=checkpoint["config"]["seed"],
                         parameters=checkpoint["parameters"])
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def evaluate_maps(split: dict, maps_path: str, out: str) -> pd.DataFrame:
    """`score` of an external teacher's maps on a test split (read_split's arguments): the
    maps must cover its images. No parameter count (the model is not here)."""
    data = read_split(**split)
    maps = ExternalMaps(maps_path)
    maps.require(data.ids)
    table = score(data, lambda i: maps.get(data.ids[i], np.shape(data.labels[i])), split["path"])
    table = table.assign(backbone="", mode="teacher", teacher="external", seed=0, parameters=np.nan)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def evaluate_model(split: dict, model_path: str, out: str, threads: int = 1, device: str = "auto",
                   precision: str = "auto") -> pd.DataFrame:
    """`evaluate` on a test split (read_split's arguments) read with the channels the model takes."""
    run = compute.resolve(device, precision, threads, workload="model")
    channels = load_model(model_path)[1]["channels"]
    return evaluate(read_split(**split, nuclear_only=tuple(channels) == ("nuclear",)), model_path, out, run,
                    split["path"])


def panel(split: dict, models: dict[str, str], out: str, n_images: int = 3) -> None:
    """The report's figure of a data set: for the first `n_images` test images, the nuclear
    input, the membrane channel, the labels, and each model's foreground probability (0 black to
    1 pale yellow, magma), side by side (`models`: column title -> checkpoint, or an external teacher's
    maps); each row is named by its image's id, tissue and platform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = read_split(**split)
    nuclear_only = read_split(**split, nuclear_only=True)
    rows = min(n_images, len(full))
    maps = {}
    for title, path in models.items():
        if not path.endswith(".pt"):  # an external teacher's maps
            external = ExternalMaps(path)
            maps[title] = [external.get(full.ids[i], np.shape(full.labels[i]))[0] for i in range(rows)]
            continue
        model, checkpoint = load_model(path)
        data = full if len(checkpoint["channels"]) > 1 else nuclear_only
        maps[title] = [predict(model, np.asarray(data.images[i])[None], checkpoint["config"]["tile"])[0, 0]
                       for i in range(rows)]
    columns = {"nuclear": [np.asarray(full.images[i])[..., 0] for i in range(rows)],
               "membrane": [np.asarray(full.images[i])[..., 1] for i in range(rows)],
               "labels": [np.asarray(full.labels[i]) > 0 for i in range(rows)], **maps}
    fig, axes = plt.subplots(rows, len(columns), figsize=(2 * len(columns), 2 * rows), squeeze=False)
    for c, (title, images) in enumerate(columns.items()):
        for r, image in enumerate(images):
            axes[r, c].imshow(image, cmap="gray" if c < 2 else "magma", vmin=0 if c >= 2 else None,
                              vmax=1 if c >= 2 else None)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[0, c].set_title(title, fontsize=8)
    for r in range(rows):  # which image, and its tissue and platform where the split says them
        axes[r, 0].set_ylabel(" ".join(filter(None, (full.ids[r], full.tissues[r], full.platforms[r]))), fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
