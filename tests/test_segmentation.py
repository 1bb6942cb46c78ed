"""Segmentation study, first layers: the TissueNet/BBBC038/TIFF-folder readers and their errors, the demo
data in those layouts, Dice and object F1 against independent references, the loss terms,
and the four U-Net students."""

from __future__ import annotations

import logging
import re
import shutil
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image
from scipy.spatial.distance import dice as scipy_dice
from skimage.draw import disk

from tissuekd.demo.segmentation import write_bbbc038, write_tissuenet
from tissuekd.distill.losses import UncertaintyWeights, probability_mse
from tissuekd.errors import InputError
from tissuekd.io.bbbc038 import read_bbbc038
from tissuekd.io.npz import NpzWriter, npz_member
from tissuekd.io.segset import SegSet
from tissuekd.io.teacher_maps import ExternalMaps
from tissuekd.io.tiff_folder import read_tiff_folder
from tissuekd.io.tissuenet import read_tissuenet
from tissuekd.segmentation.evaluate import dice, instances, object_f1
from tissuekd.segmentation.losses import boundary_weighted, label_targets, supervised
from tissuekd.segmentation.models import BACKBONES, build_unet, parameter_count
from tissuekd.segmentation.steps import (
    annotated,
    evaluate,
    evaluate_maps,
    external_probs,
    fit_model,
    load_model,
    predict_probs,
    read_split,
    shard_rows,
)
from tissuekd.segmentation.train import SegTrainConfig, crops, fit, predict


@pytest.fixture(scope="module")
def tissuenet(tmp_path_factory):
    return write_tissuenet(tmp_path_factory.mktemp("tn") / "tissuenet_v1.1_train.npz", 8, size=96)


def test_demo_tissuenet_reads_back_memory_mapped_with_cells_around_their_nuclei(tissuenet):
    whole = read_tissuenet(tissuenet, target="whole-cell")
    nuclear = read_tissuenet(tissuenet, membrane=None, target="nuclear")
    assert isinstance(whole.labels, np.memmap) and whole.images.shape == (8, 96, 96, 2)
    assert nuclear.images.shape == (8, 96, 96, 1) and nuclear.channels == ("nuclear",)
    assert isinstance(nuclear.images, np.memmap)  # one channel of X, still not read whole
    assert set(whole.tissues) == {"breast", "colon"} and set(whole.platforms) == {"codex", "mibi"}
    for cell, nucleus in zip(whole.labels, nuclear.labels):
        inside = nucleus > 0
        assert np.array_equal(cell[inside], nucleus[inside])  # a cell keeps its nucleus's id
        assert (cell > 0).sum() > 1.3 * inside.sum()  # and reaches beyond it
    # touching nuclei: some pairs of different nuclei are 4-neighbours
    n = np.asarray(nuclear.labels)
    touching = (n[:, :, 1:] > 0) & (n[:, :, :-1] > 0) & (n[:, :, 1:] != n[:, :, :-1])
    assert touching.any()
    # the channel indices are X's: nuclear first, then membrane, whatever their order in the file
    x = np.load(tissuenet)["X"]
    assert not np.array_equal(x[..., 0], x[..., 1])
    second = read_tissuenet(tissuenet, nuclear=1, membrane=None).images
    assert np.array_equal(second, x[..., 1:2]) and isinstance(second, np.memmap)  # a view, not a copy
    assert np.array_equal(read_tissuenet(tissuenet, nuclear=1, membrane=0).images, x[..., [1, 0]])


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "problem"), [
    ({"X": np.zeros((2, 8, 8, 2)), "y": np.zeros((2, 8, 9, 2), int)}, "labels and images differ in size"),
    ({"X": np.zeros((2, 3, 32, 32)), "y": np.zeros((2, 2, 32, 32), int)}, r"looks channels-first, \(N, C, H, W\)"),
    # both channels-first, so their shapes agree: read as 2-px-high strips of 32 channels before
    ({"X": np.zeros((2, 2, 32, 32)), "y": np.zeros((2, 2, 32, 32), int)}, r"looks channels-first, \(N, C, H, W\)"),
    ({"X": np.zeros((2, 8, 8, 2)), "y": -np.ones((2, 8, 8, 2), int)},
     r"y is int64 with negative values, first in image y\[0\]"),
    ({"X": np.zeros((1, 8, 8, 2)), "y": np.full((1, 8, 8, 2), np.nan)}, "NaN or infinite values"),
    ({"X": np.zeros((0, 8, 8, 2)), "y": np.zeros((0, 8, 8, 2), int)}, "no images"),
    ({"X": np.zeros((1, 8, 8, 1)), "y": np.zeros((1, 8, 8, 2), int)}, "channel index 1 out of range"),
    ({"X": np.zeros((1, 8, 8, 2)), "y": np.full((1, 8, 8, 2), 0.5)}, "not instance ids"),
    # every image is checked, not a sample of the first ones: only image 70 has a fraction here
    ({"X": np.zeros((80, 8, 8, 2)), "y": np.zeros((80, 8, 8, 2)) + (np.arange(80) == 70)[:, None, None, None] * 0.5},
     r"not instance ids \(y is float64 with fractional values, first in image y\[70\]\)"),
    ({"y": np.zeros((1, 8, 8, 2), int)}, "has no array 'X'"),
    ({"X": np.zeros((2, 8, 8, 2)), "y": np.zeros((2, 8, 8, 2), int), "tissue_list": np.array("breast")},
     r"tissue_list must list one name per image \(2\), found shape \(\)"),
    ({"X": np.zeros((2, 8, 8, 2)), "y": np.zeros((2, 8, 8, 2), int), "tissue_list": np.array(["breast"] * 3)},
     r"tissue_list must list one name per image \(2\), found shape \(3,\)"),
])
def test_bad_tissuenet_input_names_the_file_and_the_problem(tmp_path, arrays, problem):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=problem) as err:
        read_tissuenet(path)
    assert str(path) in str(err.value)


def test_label_channels_stored_nuclear_first_are_named_as_swapped(tissuenet, tmp_path):
    """y[..., 0] is whole-cell, y[..., 1] nuclear: swapped, every model learnt nuclei as cells
    and scored well on the swapped test split, without a word."""
    with np.load(tissuenet) as src:
        arrays = {k: src[k] for k in src.files}
    path = _npz(tmp_path / "swapped.npz", **{**arrays, "y": arrays["y"][..., ::-1]})
    with pytest.raises(InputError, match=r"swapped\.npz: y's label channels look swapped: the nuclear labels "
                                         r"\(channel 1\) cover \d+ pixels of the first 8 images"):
        read_tissuenet(path)
    assert len(read_tissuenet(_npz(tmp_path / "cells_only.npz", **{**arrays, "y": arrays["y"][..., :1]}))) == 8


def test_whole_number_float_labels_are_read_as_integers(tissuenet, tmp_path):
    """Scoring needs integer labels (scikit-image): float-stored ones come as int32 image by image."""
    with np.load(tissuenet) as src:
        arrays = {k: src[k] for k in src.files}
    path = _npz(tmp_path / "float.npz", **{**arrays, "y": arrays["y"].astype(np.float32)})
    as_int, as_float = read_tissuenet(tissuenet), read_tissuenet(path)
    assert len(as_float.labels) == len(as_int.labels)
    for a, b in zip(as_int.labels, as_float.labels):
        assert b.dtype == np.int32 and np.array_equal(a, b)
    assert object_f1(as_float.labels[0], as_float.labels[0])["f1"] == 1.0


def test_bbbc038_grey_alpha_and_palette_pngs_read_as_their_intensities(tmp_path):
    folder = write_bbbc038(tmp_path / "stage1_train", n_images=2)
    name = read_bbbc038(folder).ids[0]
    png = folder / name / "images" / f"{name}.png"
    grey = np.asarray(Image.open(png).convert("L"))
    Image.fromarray(grey).convert("LA").save(png)  # alpha 255 must not be averaged in
    assert np.allclose(read_bbbc038(folder, ids=[name]).images[0], grey[..., None])
    palette = Image.fromarray((255 - grey).astype(np.uint8), mode="P")  # index i shows grey 255 - i
    palette.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    palette.save(png)  # palette indices are not intensities
    assert np.allclose(read_bbbc038(folder, ids=[name]).images[0], grey[..., None])


def test_a_compressed_tissuenet_archive_is_read_whole_with_the_same_values(tissuenet, tmp_path):
    with np.load(tissuenet) as src:
        np.savez_compressed(tmp_path / "c.npz", **{k: src[k] for k in src.files})
    plain, packed = read_tissuenet(tissuenet), read_tissuenet(tmp_path / "c.npz")
    assert not isinstance(packed.images, np.memmap)
    assert np.array_equal(plain.images, packed.images) and np.array_equal(plain.labels, packed.labels)


def test_bbbc038_folders_become_one_instance_image_each(tmp_path):
    folder = write_bbbc038(tmp_path / "stage1_train", n_images=4)
    data = read_bbbc038(folder)
    assert len(data) == 4 and data.channels == ("nuclear",)
    for name, image, labels in zip(data.ids, data.images, data.labels):
        masks = sorted((folder / name / "masks").glob("*.png"))
        assert image.shape == (*labels.shape, 1) and labels.max() == len(masks)
        assert np.array_equal(labels == 2, np.asarray(Image.open(masks[1])) > 0)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / data.ids[0] / "masks" / "zzz.png")
    with pytest.raises(InputError, match=r"zzz.png: mask is \(5, 5\), its image"):
        read_bbbc038(folder)  # from the headers, before any image is read
    (folder / data.ids[0] / "masks" / "zzz.png").unlink()
    (folder / data.ids[0] / "masks" / "._zzz.png").write_bytes(bytes(82))  # a Mac's AppleDouble file: not a mask
    assert np.array_equal(read_bbbc038(folder).labels[0], data.labels[0])
    for mask in (folder / data.ids[1] / "masks").glob("*.png"):
        mask.unlink()
    with pytest.raises(InputError, match=f"{data.ids[1]}/masks: no mask files"):
        read_bbbc038(folder)  # before any image is read


def test_the_test_split_check_reads_every_mask_before_any_model_trains(tmp_path):
    """A corrupt mask of the last image was found at scoring, after every model had trained."""
    from tissuekd.segmentation.steps import check_split_contents

    folder = write_bbbc038(tmp_path / "stage1_test", n_images=3)
    split = {"fmt": "bbbc038", "path": str(folder)}
    check_split_contents(split, str(tmp_path / "ok.txt"))
    assert (tmp_path / "ok.txt").read_text().endswith("3 images readable, pixels finite, 3 with labelled objects\n")
    last = sorted(folder.iterdir())[-1]
    mask = sorted((last / "masks").glob("*.png"))[-1]
    mask.write_bytes(mask.read_bytes()[:-40])  # its header intact: planning reads it as fine
    with pytest.raises(InputError, match=f"{mask.name}: unreadable"):
        check_split_contents(split, str(tmp_path / "bad.txt"))
    assert not (tmp_path / "bad.txt").exists()


def test_overlapping_bbbc038_masks_are_counted_in_a_warning(tmp_path, caplog):
    folder = write_bbbc038(tmp_path / "stage1_train", n_images=1)
    image = sorted(folder.iterdir())[0]
    first = sorted((image / "masks").glob("*.png"))[0]
    shutil.copy(first, image / "masks" / "zzz_copy.png")  # the same nucleus twice
    with caplog.at_level(logging.WARNING):
        labels = read_bbbc038(folder).labels[0]
    overlap = int((np.asarray(Image.open(first)) > 0).sum())
    assert f"masks overlap on {overlap} pixels; each goes to the later mask" in caplog.text
    assert not (labels == 1).any()  # the first mask lost its pixels to its copy


def test_a_bbbc038_folder_is_read_one_image_at_a_time(tmp_path):
    folder = write_bbbc038(tmp_path / "stage1_train", n_images=3)
    data = read_bbbc038(folder)
    (folder / data.ids[0] / "images" / f"{data.ids[0]}.png").unlink()  # read when asked for, not before
    assert data.images[1].shape == (*data.labels[1].shape, 1)
    with pytest.raises(InputError, match=f"{data.ids[0]}.png: unreadable image"):
        data.images[0]


def write_tiff_folder(npz, folder):
    """The TissueNet split `npz` as a TIFF folder: images alternately (C, H, W) and (H, W, C),
    whole-cell and nuclear labels beside each."""
    folder.mkdir()
    with np.load(npz) as split:
        for i, (x, y) in enumerate(zip(split["X"], split["y"])):
            tifffile.imwrite(folder / f"img{i:02d}.tif", np.moveaxis(x, -1, 0) if i % 2 else x)
            tifffile.imwrite(folder / f"img{i:02d}_whole-cell.tif", y[..., 0])
            tifffile.imwrite(folder / f"img{i:02d}_nuclear.tif", y[..., 1].astype(np.uint16))
    return folder


def test_a_tiff_folder_reads_as_the_same_split_and_trains_the_same_weights(tissuenet, tmp_path):
    folder = write_tiff_folder(tissuenet, tmp_path / "tiffs")
    for target, membrane in (("whole-cell", 1), ("nuclear", None)):
        npz, tiff = read_tissuenet(tissuenet, 0, membrane, target), read_tiff_folder(folder, 0, membrane, target)
        assert len(tiff) == len(npz) and tiff.channels == npz.channels and tiff.ids[0] == "img00"
        for i in range(len(npz)):
            assert np.array_equal(tiff.images[i], npz.images[i]) and np.array_equal(tiff.labels[i], npz.labels[i])
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, tile=32)
    fit_model(read_split("tissuenet", str(tissuenet)), "mobilenetv3", str(tmp_path / "a.pt"), cfg, labelled_share=0.5)
    fit_model(read_split("tiff", str(folder)), "mobilenetv3", str(tmp_path / "b.pt"), cfg, labelled_share=0.5)
    a, b = torch.load(tmp_path / "a.pt")["state"], torch.load(tmp_path / "b.pt")["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    predict_probs(read_split("tiff", str(folder)), str(tmp_path / "b.pt"), str(tmp_path / "probs.npz"))
    assert np.load(tmp_path / "probs.npz")["probs"].shape == (8, 2, 96, 96)
    # labelled_by reaches the choice of annotated images: by order every 4th (2 of 8, one group),
    # by group a quarter of each of the 4 groups (at least one image each: 4)
    split = read_split("tissuenet", str(tissuenet))
    for by, n in (("order", 2), ("group", 4)):
        fit_model(split, "mobilenetv3", str(tmp_path / f"{by}.pt"), cfg, labelled_share=0.25, labelled_by=by)
        assert torch.load(tmp_path / f"{by}.pt")["labelled"] == n, by


@pytest.mark.parametrize(("spoil", "problem", "names"), [
    (lambda f: tifffile.imwrite(f / "img01_whole-cell.tif", np.zeros((96, 95), np.int32)), "labels are",
     "img01_whole-cell"),
    (lambda f: (f / "img02_whole-cell.tif").unlink(), "has no whole-cell labels", "img02.tif"),
    (lambda f: tifffile.imwrite(f / "img03_whole-cell.tif", np.full((96, 96), 0.5, np.float32)), "not instance ids",
     "img03_whole-cell"),
    (lambda f: tifffile.imwrite(f / "img04.tif", np.zeros((96, 96), np.float32)), "channel index 1 out of range",
     "img04.tif"),
    (lambda f: tifffile.imwrite(f / "img05_whole-cell.tif", -np.ones((96, 96), np.int32)),
     r"not instance ids \(int32 with negative values\)", "img05_whole-cell"),
    (lambda f: f.joinpath("img06_whole-cell.tif").write_bytes(f.joinpath("img06_whole-cell.tif").read_bytes()[:-5000]),
     "unreadable TIFF", "img06_whole-cell.tif"),
    (lambda f: [p.unlink() for p in f.glob("*.tif")], "no images", "tiffs"),
])
def test_bad_tiff_folder_input_names_the_file_and_the_problem(tissuenet, tmp_path, spoil, problem, names):
    folder = write_tiff_folder(tissuenet, tmp_path / "tiffs")
    spoil(folder)
    with pytest.raises(InputError, match=problem) as err:
        read_tiff_folder(folder)
    assert names in str(err.value)


def test_macos_appledouble_files_beside_the_images_and_masks_are_not_read(tissuenet, tmp_path):
    """A folder copied from a Mac holds `._<name>` resource files: not images, not labels."""
    folder = write_tiff_folder(tissuenet, tmp_path / "tiffs")
    for name in ("img00.tif", "img00_whole-cell.tif"):
        (folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    assert read_tiff_folder(folder).ids == read_tiff_folder(write_tiff_folder(tissuenet, tmp_path / "clean")).ids


def test_a_40_plex_image_reads_its_channels_whichever_axis_holds_them(tmp_path):
    """Multiplexed panels (CODEX, CyCIF) reach ~60 markers: a (40, H, W) or (H, W, 40) image reads
    the sheet's channels from the right axis."""
    rng = np.random.default_rng(0)
    plex = rng.random((40, 48, 48)).astype(np.float32)
    for name, image in (("first", plex), ("last", np.moveaxis(plex, 0, -1))):
        folder = tmp_path / name
        folder.mkdir()
        tifffile.imwrite(folder / "a.tif", image)
        tifffile.imwrite(folder / "a_whole-cell.tif", np.zeros((48, 48), np.uint16))
        split = read_tiff_folder(folder, nuclear=7, membrane=31)
        np.testing.assert_array_equal(split.images[0], np.stack([plex[7], plex[31]], axis=-1))


def test_channels_stored_as_separate_tiff_series_are_named_as_such(tmp_path):
    """Each channel written as its own image (one series each) reads as a one-channel image: the
    error said only that channel 1 was out of range."""
    with tifffile.TiffWriter(tmp_path / "a.tif") as tif:
        for value in (0, 1):
            tif.write(np.full((48, 48), value, np.uint16), metadata={"axes": "YX"})
    tifffile.imwrite(tmp_path / "a_whole-cell.tif", np.zeros((48, 48), np.uint16))
    with pytest.raises(InputError, match=r"a\.tif: channel index 1 out of range: the image has 1 channels \(the "
                                         r"file holds 2 image series and only the first is read"):
        read_tiff_folder(tmp_path)


def test_a_truncated_tiff_image_is_named_when_read(tissuenet, tmp_path):
    folder = write_tiff_folder(tissuenet, tmp_path / "tiffs")
    folder.joinpath("img03.tif").write_bytes(folder.joinpath("img03.tif").read_bytes()[:-5000])
    split = read_tiff_folder(folder)
    with pytest.raises(InputError, match="img03.tif: unreadable TIFF"):
        split.images[3]


def test_crops_larger_than_the_training_images_are_refused_with_both_sizes(tissuenet, tmp_path):
    data = read_split("tissuenet", str(tissuenet), nuclear_only=True)
    with pytest.raises(ValueError, match="images are 96 x 96 px, smaller than the crops: segmentation.train.tile "
                                         "128 must be at most 96"):
        fit_model(data, "mobilenetv3", str(tmp_path / "m.pt"), SegTrainConfig(epochs=1, steps_per_epoch=1, tile=128))
    assert not (tmp_path / "m.pt").exists()


def test_a_tiff_training_set_of_mixed_sizes_names_the_odd_image(tissuenet, tmp_path):
    folder = write_tiff_folder(tissuenet, tmp_path / "tiffs")
    tifffile.imwrite(folder / "img05.tif", np.zeros((64, 64, 2), np.float32))
    tifffile.imwrite(folder / "img05_whole-cell.tif", np.zeros((64, 64), np.int32))
    data = read_split("tiff", str(folder))  # fine to evaluate on
    with pytest.raises(InputError, match="one image size") as err:
        fit_model(data, "mobilenetv3", str(tmp_path / "m.pt"), SegTrainConfig(epochs=1, steps_per_epoch=1, tile=32))
    assert "img05.tif" in str(err.value)


def label_maps(data):
    """A perfect external teacher: each image's foreground from its labels, keyed by image id."""
    return {i: (np.asarray(labels) > 0).astype(np.float32) for i, labels in zip(data.ids, data.labels)}


def test_external_maps_from_npz_or_zarr_become_the_cached_teacher_shards(tissuenet, tmp_path):
    import zarr

    data = read_split("tissuenet", str(tissuenet))
    maps = label_maps(data)
    np.savez(tmp_path / "maps.npz", **maps)
    group = zarr.open_group(str(tmp_path / "maps.zarr"), mode="w")
    for key, value in maps.items():
        group.create_array(key, data=value)
    for source in ("maps.npz", "maps.zarr"):
        for shard in (0, 1):
            external_probs(data, str(tmp_path / source), str(tmp_path / f"{shard}.npz"), shard, 2)
        shards = [np.load(tmp_path / f"{s}.npz") for s in (0, 1)]
        assert [str(i) for s in shards for i in s["ids"]] == data.ids
        probs = np.concatenate([s["probs"] for s in shards])
        assert np.array_equal(probs[:, 0], np.stack(list(maps.values())))
        rim = probs[0, 1] > 0  # the derived boundary: the inner rim of the foreground
        assert rim.any() and (probs[0, 0][rim] == 1).all() and rim.sum() < (probs[0, 0] > 0).sum()
    table = evaluate_maps({"fmt": "tissuenet", "path": str(tissuenet)}, str(tmp_path / "maps.npz"),
                          str(tmp_path / "scores.tsv"))
    assert (table["dice"] == 1.0).all() and len(table) == len(data)  # the labels' own foreground


@pytest.mark.parametrize("target", ["whole-cell", "nuclear"])
def test_a_one_channel_label_array_is_the_targets_and_said_so(tissuenet, tmp_path, caplog, target):
    arrays = dict(np.load(tissuenet))
    nuclear = arrays["y"][..., 1:2]
    np.savez(tmp_path / "one.npz", **{**arrays, "y": nuclear})
    with caplog.at_level(logging.WARNING):
        data = read_split("tissuenet", str(tmp_path / "one.npz"), target)
    assert np.array_equal(np.asarray(data.labels), nuclear[..., 0])
    assert f"one.npz: y has one label channel, read as the {target} labels" in caplog.text
    np.savez(tmp_path / "none.npz", **{**arrays, "y": nuclear[..., :0]})
    with pytest.raises(InputError, match=f"none.npz: no {target} labels: y has 0 channels"):
        read_split("tissuenet", str(tmp_path / "none.npz"), target)


def test_a_split_written_big_endian_scores_as_its_native_twin(tissuenet, tmp_path):
    arrays = dict(np.load(tissuenet))
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) if v.dtype.kind in "fiu" else v for k, v in arrays.items()}
    big = tmp_path / "tissuenet_v1.1_train.npz"
    np.savez(big, **swapped)
    assert read_split("tissuenet", str(big)).labels.dtype.byteorder == ">"
    np.savez(tmp_path / "maps.npz", **label_maps(read_split("tissuenet", str(tissuenet))))
    splits = {"native": tissuenet, "big": big}
    scores = {name: evaluate_maps({"fmt": "tissuenet", "path": str(path)}, str(tmp_path / "maps.npz"),
                                  str(tmp_path / f"{name}.tsv")) for name, path in splits.items()}
    pd.testing.assert_frame_equal(scores["big"], scores["native"])
    assert (scores["big"]["dice"] == 1.0).all()  # the labels' own foreground


@pytest.mark.parametrize(("spoil", "problem"), [
    (lambda m: m.pop(next(iter(m))), "no map for image 'tissuenet_v1.1_train:0'"),
    (lambda m: m.update({k: v[:, :-1] for k, v in m.items()}), "is (96, 95); its image is (96, 96)"),
    (lambda m: m.update({k: v * 2 for k, v in m.items()}), "holds values from 0 to 2, not probabilities in [0, 1]"),
    (lambda m: m.update({k: v * np.nan for k, v in m.items()}), "has NaN or infinite values"),
    (lambda m: m.update({k: np.array([v, None], dtype=object) for k, v in m.items()}), "is not a numeric array"),
])
def test_bad_external_maps_name_the_file_and_the_image(tissuenet, tmp_path, spoil, problem):
    data = read_split("tissuenet", str(tissuenet))
    maps = label_maps(data)
    spoil(maps)
    np.savez(tmp_path / "maps.npz", **maps)
    with pytest.raises(InputError, match=re.escape(problem)) as err:
        external_probs(data, str(tmp_path / "maps.npz"), str(tmp_path / "out.npz"))
    assert "maps.npz" in str(err.value) and not (tmp_path / "out.npz").exists()
    with pytest.raises(InputError, match="not found"):
        ExternalMaps(tmp_path / "none.npz")


def test_a_foreground_map_alone_gets_the_labels_one_pixel_rim_as_its_boundary(tmp_path):
    """External maps without a boundary: the derived rim is the objects' inner 1-px outline, the
    same rim the U-Net teachers' boundary target has (label_targets)."""
    labels = np.zeros((40, 40), int)
    labels[10:30, 8:20] = 1
    labels[5:15, 25:35] = 2
    np.savez(tmp_path / "maps.npz", img0=(labels > 0).astype(np.float32))
    maps = ExternalMaps(tmp_path / "maps.npz").get("img0", labels.shape)
    assert np.array_equal(maps[1] > 0.5, label_targets(labels)[1] > 0)


def test_dice_and_object_f1_equal_independent_references():
    """Twelve separate cells, half predicted nearly in place (IoU >= 0.5) and half shifted off
    (IoU < 0.5): object F1 counts exactly the matches a hand count finds."""
    rng = np.random.default_rng(0)
    truth = np.zeros((96, 96), int)
    pred = np.zeros((96, 96), int)
    centres = [(r, c) for r in range(12, 96, 24) for c in range(12, 96, 32)]  # 4 x 3, 24+ px apart
    for k, (r, c) in enumerate(centres, start=1):
        truth[disk((r, c), 5, shape=truth.shape)] = k
        shift = rng.integers(0, 2, 2) if k % 2 else rng.choice([-5, 5], 2)  # kept: <= 1 px; lost: 5 px
        pred[disk((r + shift[0], c + shift[1]), rng.uniform(4.5, 5.5), shape=pred.shape)] = 10 + k
    assert dice(pred > 0, truth > 0) == pytest.approx(1 - scipy_dice((pred > 0).ravel(), (truth > 0).ravel()))
    hits = sum(any(((pred == p) & (truth == t)).sum() / ((pred == p) | (truth == t)).sum() >= 0.5
                   for p in np.unique(pred[pred > 0])) for t in np.unique(truth[truth > 0]))
    n_pred, n_true = len(np.unique(pred)) - 1, len(np.unique(truth)) - 1
    assert 0 < hits < n_true  # the reference sees matches and misses, so the threshold is tested
    result = object_f1(pred, truth)
    assert result["tp"] == hits and result["f1"] == pytest.approx(2 * hits / (n_pred + n_true))
    assert object_f1(np.zeros((4, 4), int), np.zeros((4, 4), int))["f1"] == 1.0


def test_instances_split_two_touching_cells_that_components_would_merge():
    labels = np.zeros((40, 60), int)
    labels[disk((20, 20), 9)] = 1
    labels[disk((20, 36), 9)] = 2
    split = instances((labels > 0).astype(float))
    assert split.max() == 2 and object_f1(split, labels)["tp"] == 2


def test_loss_terms_follow_their_formulas():
    labels = np.zeros((32, 32), int)
    labels[disk((16, 16), 6)] = 1
    targets = torch.from_numpy(label_targets(labels))[None]
    fg, bd, weight = targets[0]
    assert weight[bd > 0].min() == pytest.approx(6.0) and weight.min() < 1.01  # 1 + w0 on the outline
    pixels, outline = np.argwhere(np.ones((32, 32))), np.argwhere(bd.numpy() > 0)
    far = np.linalg.norm(pixels[:, None] - outline[None], axis=-1).min(1).reshape(32, 32)  # brute-force distance
    assert weight.numpy() == pytest.approx(1 + 5 * np.exp(-far**2 / (2 * 3.0**2)), abs=1e-5)  # w0 5, sigma 3
    logits = torch.zeros(1, 2, 32, 32)
    assert supervised(logits, targets) == pytest.approx(np.log(2), rel=1e-5)
    assert boundary_weighted(logits, targets) == pytest.approx(np.log(2), rel=1e-5)  # constant BCE: any weights
    # at random logits, against BCE written out: -[y log p + (1 - y) log(1 - p)]
    logits = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 2
    p = torch.sigmoid(logits).double().numpy()[0]
    y = targets.double().numpy()[0]
    bce = -(y[:2] * np.log(p) + (1 - y[:2]) * np.log(1 - p))
    assert supervised(logits, targets).item() == pytest.approx(bce.mean(), rel=1e-5)
    w = y[2]
    assert boundary_weighted(logits, targets).item() == pytest.approx((w * bce[0]).sum() / w.sum(), rel=1e-5)
    teacher = torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
    student = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    assert probability_mse(student, teacher).item() == pytest.approx(
        ((1 / (1 + np.exp(-student.double().numpy())) - teacher.double().numpy()) ** 2).mean(), rel=1e-5)
    weights = UncertaintyWeights(("mse", "label"))
    with torch.no_grad():
        weights.log_vars.copy_(torch.tensor([0.0, np.log(4.0)]))
    weights.started.fill_(True)
    total = weights({"mse": torch.tensor(2.0), "label": torch.tensor(8.0)})
    assert total.item() == pytest.approx(2.0 + 8.0 / 4 + np.log(4.0))


def test_uncertainty_weights_start_at_each_terms_scale_and_then_learn():
    """Each s_i starts where exp(-s) L + s is least for its first non-zero L (weight 1/L), so a
    term 100x smaller than another is not 100x weaker from the start; a term that is 0 on the
    first batch (no annotated crop in it) starts on the first batch where it is not."""
    weights = UncertaintyWeights(("mse", "label"))
    first = weights({"mse": torch.tensor(0.01), "label": torch.tensor(0.0)})
    assert weights.weights()["mse"] == pytest.approx(100.0) and weights.weights()["label"] == 1.0
    assert first.item() == pytest.approx(1 + np.log(0.01))
    weights({"mse": torch.tensor(0.5), "label": torch.tensor(2.0)})
    assert weights.weights() == pytest.approx({"mse": 100.0, "label": 0.5})  # mse started already
    s = weights.log_vars
    loss = weights({"mse": torch.tensor(0.01), "label": torch.tensor(2.0)})
    grad, = torch.autograd.grad(loss, s)
    assert torch.allclose(grad, torch.zeros(2), atol=1e-5)  # at each term's own minimum
    opt = torch.optim.AdamW(weights.parameters(), lr=0.1, weight_decay=0.0)
    for _ in range(50):  # the terms shrink tenfold: the weights follow
        opt.zero_grad()
        weights({"mse": torch.tensor(0.001), "label": torch.tensor(0.2)}).backward()
        opt.step()
    assert weights.weights()["mse"] > 300 and weights.weights()["label"] > 2


def test_the_four_students_take_one_channel_and_give_two_maps():
    counts = {}
    for name in BACKBONES:
        model = build_unet(name, in_channels=1, tile=64).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
        counts[name] = parameter_count(model)
    assert counts["efficientnet-b0"] < counts["resnet18"] < counts["swin-tiny"]
    teacher = build_unet("resnet18", in_channels=2, tile=64)
    assert teacher.encoder.model.conv1.in_channels == 2
    with pytest.raises(ValueError, match="unknown segmentation backbone"):
        build_unet("vgg", 1, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_unet("resnet18", 1, 50)
    with pytest.raises(ValueError, match="five positive integers"):
        build_unet("resnet18", 1, 64, (128, 64, 32, 16))


def test_a_checkpoint_rebuilds_with_its_decoder_widths_and_an_older_one_with_smps(tissuenet, tmp_path):
    from tissuekd.segmentation.steps import load_model

    cfg = SegTrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, tile=32, decoder_channels=[64, 32, 16, 8, 4])
    fit_model(read_split("tissuenet", str(tissuenet), nuclear_only=True), "resnet18", str(tmp_path / "m.pt"), cfg)
    model, checkpoint = load_model(str(tmp_path / "m.pt"))
    assert model.decoder.blocks[0].conv1[0].out_channels == 64
    assert parameter_count(model) == checkpoint["parameters"] < parameter_count(build_unet("resnet18", 1, 32))
    del checkpoint["config"]["decoder_channels"]  # written before the setting existed
    torch.save({**checkpoint, "state": build_unet("resnet18", 1, 32).state_dict()}, tmp_path / "old.pt")
    assert parameter_count(load_model(str(tmp_path / "old.pt"))[0]) == parameter_count(build_unet("resnet18", 1, 32))


def test_crops_turn_and_flip_images_targets_and_teacher_maps_alike():
    rng = np.random.default_rng(0)
    base = rng.random((3, 40, 40)).astype(np.float32)
    images = np.moveaxis(base, 0, -1)[None].repeat(2, 0)  # (2, 40, 40, 3)
    x, t, e, pick = crops(images, base[None].repeat(2, 0), base[:2][None].repeat(2, 0),
                          SegTrainConfig(batch_size=6, tile=32), rng)
    assert x.shape == (6, 3, 32, 32) and torch.equal(x, t) and torch.equal(x[:, :2], e)
    assert pick.shape == (6,) and set(pick.tolist()) <= {0, 1}


def test_students_train_under_one_protocol_and_predict_whole_images(tissuenet):
    data = read_tissuenet(tissuenet)
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, tile=32)
    teacher = fit("mobilenetv3", data.images[:4], data.labels[:4], cfg)
    probs = predict(teacher, data.images[:4], cfg.tile)
    assert probs.shape == (4, 2, 96, 96) and 0 <= probs.min() and probs.max() <= 1
    nuclear = data.images[:4, ..., :1]
    kd = fit("mobilenetv3", nuclear, data.labels[:4], cfg, "kd", probs)
    assert predict(kd, nuclear[:1, :50, :70], cfg.tile).shape == (1, 2, 50, 70)  # any size: padded, cropped
    again = fit("mobilenetv3", nuclear, data.labels[:4], cfg, "kd", probs)
    assert all(torch.equal(a, b) for a, b in zip(kd.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="teacher's probabilities"):
        fit("mobilenetv3", nuclear, data.labels[:4], cfg, "kd")


def test_unannotated_images_teach_only_through_the_teacher(tissuenet):
    """kd trains on every image but reads labels only where `labelled`; no-kd sees only those:
    changing an unannotated image's labels (or, for no-kd, the image) changes no weight."""
    data = read_tissuenet(tissuenet)
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=3, batch_size=4, tile=32)
    nuclear, labels = np.array(data.images[:4, ..., :1]), np.array(data.labels[:4])
    probs = np.random.default_rng(0).random((4, 2, 96, 96)).astype(np.float32)
    labelled = np.array([True, False, True, False])
    other = labels.copy()
    other[~labelled] = np.roll(labels[~labelled], 17, axis=-1)
    noisy = nuclear.copy()
    noisy[~labelled] = np.random.default_rng(1).random(noisy[~labelled].shape)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    kd = fit("mobilenetv3", nuclear, labels, cfg, "kd", probs, labelled=labelled)
    assert same(kd, fit("mobilenetv3", nuclear, other, cfg, "kd", probs, labelled=labelled))
    assert not same(kd, fit("mobilenetv3", nuclear, other, cfg, "kd", probs))  # the check can fail
    # but kd does learn from the unannotated images, each through its own teacher maps
    assert not same(kd, fit("mobilenetv3", noisy, labels, cfg, "kd", probs, labelled=labelled))
    shifted = probs.copy()
    shifted[~labelled] = np.roll(probs[~labelled], 17, axis=-1)
    assert not same(kd, fit("mobilenetv3", nuclear, labels, cfg, "kd", shifted, labelled=labelled))
    shifted = probs.copy()
    shifted[labelled] = np.roll(probs[labelled], 17, axis=-1)  # an annotated image's maps are read where it is
    assert not same(kd, fit("mobilenetv3", nuclear, labels, cfg, "kd", shifted, labelled=labelled))
    nokd = fit("mobilenetv3", nuclear, labels, cfg, labelled=labelled)
    assert same(nokd, fit("mobilenetv3", noisy, other, cfg, labelled=labelled))
    with pytest.raises(ValueError, match="no annotated image"):
        fit("mobilenetv3", nuclear, labels, cfg, labelled=np.zeros(4, bool))


def test_the_demos_annotated_quarter_is_one_tissue_on_one_platform_unless_chosen_per_group(tissuenet):
    """The demo's splits cycle through 4 tissue x platform groups, so every 4th image (labelled_by
    order) is always the same group: the demo's labels are all of its breast tiles from CODEX,
    and the other tissue and the dim, noisy platform reach a model only through the teacher
    (README: the kd gain on the demo is that transfer). labelled_by group keeps a share of each."""
    data = read_tissuenet(tissuenet)
    groups = np.array([f"{t} {p}" for t, p in zip(data.tissues, data.platforms)])
    chosen = annotated(list(groups), 0.25)
    assert chosen.sum() == 2 and set(groups[chosen]) == {"breast codex"}
    assert set(groups[~chosen]) == set(groups) - {"breast codex"} and len(set(groups)) == 4  # all of that group
    spread = annotated(list(groups) * 4, 0.25, by="group")
    assert spread.sum() == 8 and set(np.tile(groups, 4)[spread]) == set(groups)
    assert annotated(list(groups), 1.0).all() and annotated(list(groups), 1.0, by="group").all()
    with pytest.raises(ValueError, match="labelled_by 'tissue'"):
        annotated(list(groups), 0.5, by="tissue")


def test_steps_chain_teacher_cached_probabilities_student_and_per_image_scores(tissuenet, tmp_path, caplog):
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, tile=32)
    train = read_split("tissuenet", str(tissuenet))
    fit_model(train, "mobilenetv3", str(tmp_path / "teacher.pt"), cfg)
    with caplog.at_level("INFO", logger="tissuekd.segmentation"):
        predict_probs(train, str(tmp_path / "teacher.pt"), str(tmp_path / "probs.npz"))
    assert f"teacher.pt: maps of shard 0: {len(train)} of {len(train)} (100%)" in caplog.text  # progress
    nuclear = read_split("tissuenet", str(tissuenet), nuclear_only=True)
    fit_model(nuclear, "mobilenetv3", str(tmp_path / "kd.pt"), cfg, "kd", str(tmp_path / "probs.npz"))
    table = evaluate(nuclear, str(tmp_path / "kd.pt"), str(tmp_path / "scores.tsv"))
    assert len(table) == len(nuclear) and set(table["mode"]) == {"kd"} and table["dice"].between(0, 1).all()
    bbbc = read_split("bbbc038", str(write_bbbc038(tmp_path / "bbbc", n_images=2)))
    assert len(evaluate(bbbc, str(tmp_path / "kd.pt"), str(tmp_path / "cross.tsv"))) == 2  # no retraining
    np.savez(tmp_path / "other.npz", probs=np.zeros((1, 2, 96, 96)), ids=np.array(["x"]))
    with pytest.raises(InputError, match="other images"):
        fit_model(nuclear, "mobilenetv3", str(tmp_path / "bad.pt"), cfg, "kd", str(tmp_path / "other.npz"))
    with pytest.raises(InputError, match="unknown segmentation format"):
        read_split("zarr", "x")


def test_teacher_shards_are_written_image_by_image_with_the_bytes_of_the_whole_shard(tissuenet, tmp_path, caplog):
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, tile=32)
    train = read_split("tissuenet", str(tissuenet))
    fit_model(train, "mobilenetv3", str(tmp_path / "teacher.pt"), cfg)
    rows = shard_rows(len(train), 1, 2)
    whole = predict(load_model(str(tmp_path / "teacher.pt"))[0], np.asarray(train.images[rows]), cfg.tile)
    np.savez(tmp_path / "whole.npz", probs=whole, ids=np.array(train.ids[rows]))
    predict_probs(train, str(tmp_path / "teacher.pt"), str(tmp_path / "1.npz"), shard=1, shards=2)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()  # as np.savez writes it
    assert isinstance(npz_member(tmp_path / "1.npz", "probs"), np.memmap)
    with caplog.at_level("WARNING", logger="tissuekd.segmentation"):
        predict_probs(train, str(tmp_path / "teacher.pt"), str(tmp_path / "empty.npz"), 0, len(train) + 1)
    assert npz_member(tmp_path / "empty.npz", "probs").shape == (0, *whole.shape[1:])  # more shards than images
    assert f"empty.npz: this shard holds none of the split's {len(train)} images" in caplog.text
    n, side = 48, 128  # a shard whose maps (6.3 MB) outweigh the model and one image's windows
    big = SegSet(np.random.default_rng(0).random((n, side, side, 2), np.float32), np.zeros((n, side, side), np.int32),
                 [str(i) for i in range(n)], ["t"] * n, ["p"] * n, ("nuclear", "membrane"))
    tracemalloc.start()  # numpy's arrays are traced (held whole before: 27 MB, images and maps each twice)
    predict_probs(big, str(tmp_path / "teacher.pt"), str(tmp_path / "big.npz"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * 2 * side * side * 4, peak  # less than the shard's maps alone (2.3 MB measured)


def test_an_npz_written_row_by_row_must_get_every_row_of_one_shape(tmp_path):
    with pytest.raises(ValueError, match="row 1 has shape"):
        with NpzWriter(tmp_path / "a.npz") as npz:
            npz.rows("probs", iter([np.zeros((2, 4)), np.zeros((2, 5))]), 2, (2, 4), np.float32)
    with pytest.raises(ValueError, match="1 rows written of 2"):
        with NpzWriter(tmp_path / "b.npz") as npz:
            npz.rows("probs", iter([np.zeros((2, 4))]), 2, (2, 4), np.float32)


def test_the_throughput_benchmark_prints_each_students_speed_against_the_teacher(capsys):
    from tissuekd.bench import segmentation as bench

    bench.main(["--size", "64", "--images", "1", "--tile", "32", "--batch", "2", "--steps", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("teacher resnet18 (2 channels):") and lines[1].endswith("MP/s")
    students = [line for line in lines if line.startswith("student")]
    assert len(students) == 8 and all("x the teacher" in line for line in students[:4])
    assert all("x faster" in line for line in students[4:])


def test_the_training_memory_benchmark_prints_the_peak_at_two_batches_and_the_kb_per_pixel(capsys):
    """Run from a large process (as a pytest worker is), the children's peaks are their own: with
    ru_maxrss, which counts the forking parent's size, both peaks were the worker's 2,237 MB."""
    from tissuekd.bench import train_memory

    ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB: above a small fit's peak (1.1-1.2 GB measured)
    train_memory.main(["--small", "2", "32", "--large", "8", "256", "--steps", "1", "--backbones", "resnet18"])
    header, line = capsys.readouterr().out.splitlines()
    assert "2 x 32 px and 8 x 256 px (256x the pixels)" in header
    small, large, _, per_pixel = re.fullmatch(r"resnet18 +(\d+) MB +(\d+) MB +([\d.]+)x +(-?[\d.]+) kB per pixel",
                                              line).groups()
    assert 300 < int(small) < 1500 and int(large) - int(small) > 300  # torch, then 0.5 MP of activations
    assert 0.5 < float(per_pixel) < 5, line
    del ballast


def test_a_shard_job_after_the_check_job_reads_its_share_of_the_split_not_the_whole(tmp_path, capsys):
    """tissuekd.bench.split_reads: bytes from disk, the kernel's count. Scanned (as every job did
    before segmentation_check_train), a shard job read the whole split; trusted to the check, its
    share and the label-order check's first images."""
    from tissuekd.bench import split_reads

    split = tmp_path / "tissuenet_v1.1_train.npz"
    shape = (1024, 128, 128, 2)  # X and y 268 MB: well above a disk's readahead (8 MB on this VM)
    np.savez(split, X=np.zeros(shape, np.float32), y=np.zeros(shape, np.int32))
    split_reads.main([str(split), "--shards", "16", "--shard", "5"])
    out = capsys.readouterr().out
    scanned, checked = (int(re.search(rf"{way} +\d+ MB to open, +(\d+) MB", out)[1]) for way in ("scanned", "checked"))
    if scanned == 0:
        pytest.skip("no reads from a block device here (a tmpfs holds the split)")
    # checked: y of the first 64 images for the label-order check (8 MB), the shard's 64 images (17 MB),
    # and the kernel's readahead around each (measured here: 67 MB of 268)
    assert scanned >= 268 and checked < scanned / 3, out


def test_split_reads_says_why_a_split_cannot_be_read(tmp_path):
    """The child process's own reason, not a bare exit status (a new user's trial)."""
    from tissuekd.bench import split_reads

    x = np.zeros((4, 8, 8, 2), np.float32)
    x[2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", X=x, y=np.zeros((4, 8, 8, 2), np.int32))
    with pytest.raises(SystemExit, match="scanned: .*nan.npz: X has NaN or infinite pixels, first in image X\\[2\\]"):
        split_reads.main([str(tmp_path / "nan.npz"), "--shards", "2", "--shard", "0"])


def test_training_reads_images_targets_and_teacher_maps_one_image_at_a_time(tmp_path):
    """PerImage makes an image's arrays when a crop needs them and keeps a bounded cache;
    ShardMaps serves the teacher's shards memory-mapped, in the split's order."""
    from tissuekd.segmentation.steps import ShardMaps, load_probs
    from tissuekd.segmentation.train import PerImage

    source = np.arange(5 * 4 * 4).reshape(5, 4, 4)
    made = PerImage(source, [4, 1, 2], lambda image: image * 2, cache=2)
    assert made.shape == (3, 4, 4) and len(made) == 3 and np.array_equal(made[0], source[4] * 2)
    made[1], made[2]
    assert made._get.cache_info().currsize == 2
    probs = np.random.default_rng(0).random((5, 2, 4, 4)).astype(np.float32)
    paths = []
    for k, rows in enumerate((slice(0, 2), slice(2, 5))):
        paths.append(str(tmp_path / f"{k}.npz"))
        np.savez(paths[-1], probs=probs[rows], ids=np.array([f"im{i}" for i in range(5)])[rows])
    maps = load_probs(paths, [f"im{i}" for i in range(5)])
    assert isinstance(maps, ShardMaps) and len(maps) == 5
    assert all(np.array_equal(maps[i], probs[i]) for i in range(5))
    assert all(isinstance(shard, np.memmap) for shard in maps.shards)
    with pytest.raises(InputError, match="other images"):
        load_probs(paths[::-1], [f"im{i}" for i in range(5)])


def test_sam_masks_become_foreground_and_rim_maps_by_predicted_iou():
    from tissuekd.segmentation.sam import masks_to_maps

    a, b, big = (np.zeros((20, 20), bool) for _ in range(3))
    a[2:8, 2:8], b[5:12, 5:12], big[:, :] = True, True, True
    masks = [{"segmentation": a, "area": a.sum(), "predicted_iou": 0.9},
             {"segmentation": b, "area": b.sum(), "predicted_iou": 0.6},
             {"segmentation": big, "area": big.sum(), "predicted_iou": 1.0}]  # the whole image: not a cell
    maps = masks_to_maps(masks, (20, 20), max_area=0.2)
    assert maps[0][3, 3] == pytest.approx(0.9) and maps[0][10, 10] == pytest.approx(0.6)
    assert maps[0][6, 6] == pytest.approx(0.9) and maps[0][15, 15] == 0  # overlap: the max; outside: 0
    assert maps[1][2, 4] == pytest.approx(0.9) and maps[1][4, 4] == 0 and maps[1][11, 8] == pytest.approx(0.6)


def test_sam_runs_from_a_local_checkpoint_and_a_wrong_one_names_the_file(tmp_path):
    """Segment Anything (vit_b, seeded random weights saved as a local checkpoint: nothing is
    downloaded) turns a two-channel image into maps; missing or mismatched weights stop it."""
    from segment_anything import sam_model_registry

    from tissuekd.segmentation.sam import SamConfig, SamTeacher, load_sam

    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), tmp_path / "sam_vit_b.pth")
    cfg = SamConfig(str(tmp_path / "sam_vit_b.pth"), "vit_b", points_per_side=4, pred_iou_thresh=0.0,
                    stability_score_thresh=0.0, max_area=1.0)
    image = np.random.default_rng(0).random((48, 48, 2)).astype(np.float32)
    maps = SamTeacher(cfg).maps(image)
    assert maps.shape == (2, 48, 48) and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(InputError, match="SAM checkpoint not found"):
        load_sam(SamConfig(str(tmp_path / "none.pth"), "vit_b"))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="is not a SAM vit_b checkpoint") as err:
        load_sam(SamConfig(str(tmp_path / "other.pth"), "vit_b"))
    assert "other.pth" in str(err.value)


def test_recovery_is_the_students_dice_over_the_teachers_and_undefined_without_a_teacher_foreground():
    import pandas as pd

    from tissuekd.segmentation.tables import summarise

    def scores(teacher_dice):
        rows = [{"model": "teacher multiplex", "backbone": "", "mode": "teacher multiplex", "dice": teacher_dice}]
        rows += [{"model": "r kd", "backbone": "r", "mode": "kd", "dice": d} for d in (0.3, 0.5)]
        return pd.DataFrame(rows).assign(f1=0.0, seed=0, image=["a", "a", "b"], parameters=[10, 5, 5], on="x")

    table = summarise(scores(0.8), ["on"]).set_index("model")
    assert table.loc["r kd", "recovery"] == pytest.approx(0.4 / 0.8) and table.loc["r kd", "parameter_ratio"] == 2
    assert summarise(scores(0.0), ["on"]).set_index("model")["recovery"].isna().all()


def test_nan_pixels_are_named_with_the_file_and_a_nan_loss_stops_training(tissuenet, tmp_path):
    """One NaN made its image's normalisation NaN: every loss NaN, every score 0, exit 0."""
    with np.load(tissuenet) as split:
        arrays = dict(split)
    arrays["X"] = arrays["X"].astype(np.float32)
    arrays["X"][5, 10:20, 10:20, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(InputError, match=r"nan.npz: X has NaN or infinite pixels, first in image X\[5\]"):
        read_tissuenet(tmp_path / "nan.npz")
    folder = write_tiff_folder(tmp_path / "nan.npz", tmp_path / "tiffs")
    data = read_tiff_folder(folder)  # headers only
    with pytest.raises(InputError, match=r"img05.tif: 100 NaN or infinite pixels"):
        data.images[5]
    from tissuekd.training import optimise

    weight = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(FloatingPointError, match=r"fit: the loss is nan at epoch 1, step 2"):
        optimise([weight], 1, lambda epoch: [1.0, np.nan], lambda b: weight.sum() * b, lr=0.1, weight_decay=0.0,
                 desc="fit")


def test_images_without_objects_are_left_out_of_the_scores_and_0_1_masks_split_into_components(tissuenet, caplog):
    from tissuekd.segmentation.steps import score

    data = read_tissuenet(tissuenet)
    labels = np.array(data.labels)
    labels[1] = 0
    labels[2] = labels[2] > 0
    data.labels = labels
    truth = lambda i: np.stack([(labels[i] > 0).astype(float), np.zeros(labels[i].shape)])  # noqa: E731
    with caplog.at_level("WARNING"):
        table = score(data, truth)
    assert len(table) == len(data) - 1 and data.ids[1] not in set(table["image"])
    assert "1 of 8 images have no labelled object" in caplog.text
    assert "1 of 8 images are labelled with a 0/1 mask" in caplog.text
    assert table["dice"].eq(1).all()
    data.labels = np.zeros_like(labels)
    with pytest.raises(InputError, match="the split: none of the 8 images has a labelled object"):
        score(data, truth)


class EdgeArtefact(torch.nn.Module):
    """A network sure of foreground on its window's 4-px rim, unsure (p = 0.5) inside: the
    artefact of a window's edge, where it sees least context."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 2, *x.shape[2:])
        logits[..., :4, :] = logits[..., -4:, :] = logits[..., :, :4] = logits[..., :, -4:] = 10.0
        return logits


def test_overlapping_windows_are_averaged_without_a_seam_at_their_edges():
    """Equal weights put the rims on a lattice at every half-tile step (p 0.75 against 0.5);
    the Gaussian weights leave the rims out of the map."""
    probs = predict(EdgeArtefact(), np.zeros((1, 160, 160, 1), np.float32), tile=64)
    inner = probs[0, 0, 32:-32, 32:-32]  # covered by 2 x 2 windows: away from the image's own edges
    assert np.abs(inner - 0.5).max() < 0.02, np.abs(inner - 0.5).max()
