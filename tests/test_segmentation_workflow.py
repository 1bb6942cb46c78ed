"""The segmentation study through Snakemake on a small demo: teachers, cached teacher maps,
students per backbone x mode x seed, scores on the own test split and the cross set, the
tables; reruns and bad sheets."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import make_workdir, planned_jobs, runtime_table, snakemake, uncounted_jobs
from PIL import Image

from tissuekd.demo.segmentation import write_bbbc038, write_tissuenet
from tissuekd.segmentation.evaluate import dice

pytestmark = pytest.mark.workflow
SMALL = dict(
    studies=("segmentation",),
    demo__segmentation_images=8,
    demo__segmentation_px=64,
    segmentation__students=["mobilenetv3"],
    segmentation__seeds=[0],
    segmentation__train={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "tile": 32},
)
GDIR = Path("results/segmentation/tissuenet_demo")
# the shipped demo's configuration (data, budget, two seeds) with one of its four backbones and
# the two modes its claims compare (the kd-nuclear-teacher control: README's table): all three
# modes took 3.2-3.6 min on 2 cores (2026-12-02), the four backbones 7.7 (2026-12-04, README)
DEMO_ONE_BACKBONE = dict(studies=("segmentation",), segmentation__students=["mobilenetv3"],
                         segmentation__modes=["no-kd", "kd"])


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("segmentation"), **DEMO_ONE_BACKBONE)
    snakemake("--cores", "2", cwd=workdir)
    return workdir


def test_on_the_demo_kd_beats_no_kd_and_the_multiplex_teacher_the_nuclear_only_one(seg_run):
    """The demo's claims on MobileNetV3 (the README's table has all four backbones and the
    kd-nuclear-teacher control), mean Dice over the test tiles and both seeds. Measured
    2026-12-04 on 98838a2 with all three modes under the AVX2 cap: teachers 0.765 / 0.575,
    students no-kd 0.584, kd 0.660, kd-nuclear-teacher 0.573 (demo.seed 1: teachers 0.797 /
    0.578, students 0.565, 0.698, 0.577)."""
    table = pd.read_csv(seg_run / "results/benchmark/segmentation_by_dataset.tsv", sep="\t")
    dice = table[table["evaluated_on"] == "tissuenet_demo"].set_index("model")["dice_mean"]
    assert dice["teacher multiplex"] > dice["teacher nuclear"] + 0.1, dice
    assert dice["mobilenetv3 kd"] > dice["mobilenetv3 no-kd"] + 0.01, dice


def test_only_the_teacher_a_mode_distils_from_maps_the_training_set(seg_run):
    """The nuclear-only teacher is trained and scored as a reference; with no
    kd-nuclear-teacher mode nothing reads its maps of the training set, so none are made."""
    assert len(list((seg_run / GDIR / "teacher/multiplex/probs").glob("*.npz"))) == 2
    assert (seg_run / GDIR / "teacher/nuclear/model.pt").exists()
    assert not (seg_run / GDIR / "teacher/nuclear/probs").exists()


def test_every_model_is_scored_on_its_test_split_and_the_cross_set(seg_run):
    table = pd.read_csv(seg_run / "results/benchmark/segmentation_by_dataset.tsv", sep="\t")
    own = table[table["evaluated_on"] == "tissuenet_demo"].set_index("model")
    assert set(own.index) == {"teacher multiplex", "teacher nuclear", "mobilenetv3 no-kd", "mobilenetv3 kd"}
    assert own.loc["teacher multiplex", "recovery"] == pytest.approx(1.0)
    assert own["dice_mean"].between(0, 1).all() and (own["images"] == 8).all()
    ratio = own.loc["teacher multiplex", "parameters"] / own.loc["mobilenetv3 kd", "parameters"]
    assert own.loc["mobilenetv3 kd", "parameter_ratio"] == pytest.approx(ratio, rel=1e-3)
    cross = table[table["evaluated_on"] == "bbbc038_demo"]
    assert "teacher multiplex" not in set(cross["model"]) and len(cross) == 3  # no membrane there
    overall = pd.read_csv(seg_run / "results/benchmark/segmentation_overall.tsv", sep="\t")
    assert len(overall) == 4
    # the report shows the tables as HTML (a TSV result only downloads there), the cross rows explained
    page = (seg_run / "results/benchmark/segmentation_tables.html").read_text()
    assert page.count("<table") == 2 and page.count("bbbc038_demo") == len(cross)
    assert "BBBC038 has nuclear masks only" in page


def test_the_runtime_table_leaves_out_the_memory_of_jobs_run_in_snakemakes_process(seg_run):
    """segmentation_evaluate is a `run:` rule (inside Snakemake's process, whose memory its
    benchmark reports); the rules that run a script in their own process keep theirs."""
    runtime = runtime_table(seg_run)
    assert runtime.loc["segmentation_evaluate", "jobs"] > 0
    assert uncounted_jobs(seg_run) == 0
    assert np.isnan(runtime.loc["segmentation_evaluate", "max_rss_mb"])
    for rule in ("segmentation_student", "segmentation_teacher"):
        assert runtime.loc[rule, "max_rss_mb"] > 0, rule


def test_per_image_dice_matches_a_reference_on_the_saved_maps(seg_run):
    """The table's Dice is the mean of the per-image Dice over images and seeds, which equals
    2|A∩B| / (|A|+|B|)."""
    scores = pd.concat(pd.read_csv(seg_run / GDIR / f"students/mobilenetv3/kd/seed{seed}/scores_on_tissuenet_demo.tsv",
                                   sep="\t") for seed in (0, 1))
    table = pd.read_csv(seg_run / "results/benchmark/segmentation_by_dataset.tsv", sep="\t")
    row = table[(table["model"] == "mobilenetv3 kd") & (table["evaluated_on"] == "tissuenet_demo")]
    assert row["dice_mean"].item() == pytest.approx(scores["dice"].mean(), abs=1e-4)
    a, b = np.random.default_rng(0).random((2, 30, 30)) > 0.5
    assert dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_a_student_setting_reruns_only_students_and_the_teacher_maps_stay_cached(seg_run):
    jobs = planned_jobs(seg_run, "--config", "segmentation={'students': ['mobilenetv3', 'resnet18']}")
    assert "segmentation_teacher" not in jobs and "segmentation_teacher_probs" not in jobs
    assert jobs["segmentation_student"] == 2 * 2 and jobs["segmentation_evaluate"] == 8  # own test split and cross
    # the test split is no input of any training job: its images replaced by noise, every model
    # is rescored and none retrained
    test = seg_run / "data/demo/segmentation/tissuenet/tissuenet_v1.1_test.npz"
    with np.load(test) as split:
        arrays = dict(split)
    arrays["X"] = np.random.default_rng(0).random(arrays["X"].shape).astype(arrays["X"].dtype)
    with open(test, "wb") as f:
        np.savez(f, **arrays)
    jobs = planned_jobs(seg_run)
    assert "segmentation_student" not in jobs and "segmentation_teacher" not in jobs
    assert jobs["segmentation_evaluate"] == 2 + 2 * 2  # the teachers and every student, on the own split


def test_a_file_rewritten_inside_a_folder_set_rescores_on_it(seg_run):
    """A folder's modification time changes when a file is added or removed, not rewritten: the
    jobs that read a BBBC038 folder carry its files' fingerprint and rerun when one changes."""
    image = seg_run / "data/demo/segmentation/bbbc038/demo01/images/demo01.png"
    original = image.read_bytes()
    scored = list((seg_run / "results/segmentation").rglob("scores_on_bbbc038_demo.tsv"))
    before = planned_jobs(seg_run).get("segmentation_evaluate", 0)  # e.g. a test split changed above
    try:
        pixels = np.asarray(Image.open(image)).copy()
        pixels[:8, :8] = 255 - pixels[:8, :8]
        Image.fromarray(pixels).save(image)
        jobs = planned_jobs(seg_run)
    finally:
        image.write_bytes(original)
    assert jobs["segmentation_evaluate"] - before == len(scored) > 0, jobs
    assert "segmentation_student" not in jobs and "segmentation_teacher" not in jobs  # a cross set trains none


def test_a_bad_sheet_names_its_line(tmp_path):
    workdir = make_workdir(tmp_path, **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rows.loc[rows["dataset"] == "bbbc038_demo", "role"] = "train"
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "segmentation_datasets.tsv line 3 (dataset bbbc038_demo): only tissuenet and tiff sets can be trained on" \
        in result.stderr + result.stdout


@pytest.mark.parametrize(("row", "changes", "problem"), [
    (1, lambda tmp: {"target": "whole-cell"},
     "line 3 (dataset bbbc038_demo): bbbc038 images are one nuclear channel with nuclear labels"),
    (0, lambda tmp: {"test": str(_npz(tmp / "empty.npz", 0))},
     "line 2 (dataset tissuenet_demo): {tmp}/empty.npz: no images (X has 0 rows)"),
    (0, lambda tmp: {"test": str(_npz(tmp / "small.npz", 2, labels_px=6))},
     "line 2 (dataset tissuenet_demo): {tmp}/small.npz: labels and images differ in size"),
    (1, lambda tmp: {"test": str(_bbbc038_without_masks(tmp / "stage1_test"))},
     "line 3 (dataset bbbc038_demo): {tmp}/stage1_test/demo00/masks: no mask files"),
    (1, lambda tmp: {"format": "tiff", "test": str(_tiff_without_labels(tmp / "tiffs"))},
     "line 3 (dataset bbbc038_demo): {tmp}/tiffs/a.tif: has no nuclear labels: expected a_nuclear.tif"),
    (1, lambda tmp: {"test": str(_bbbc038_mask_of_another_size(tmp / "stage1_test"))},
     "line 3 (dataset bbbc038_demo): {tmp}/stage1_test/demo01/masks/small.png: mask is (5, 5), its image"),
    (0, lambda tmp: {"test": str(_npz(tmp / "fractional.npz", 2, label_value=0.5))},
     "line 2 (dataset tissuenet_demo): {tmp}/fractional.npz: labels are not instance ids"),
    (0, lambda tmp: {"test": str(_npz(tmp / "names.npz", 3, labels_px=8, tissue_list=np.array(["a", "b"])))},
     "line 2 (dataset tissuenet_demo): {tmp}/names.npz: tissue_list must list one name per image (3), found "
     "shape (2,)"),
])
def test_a_bad_cross_or_test_set_stops_before_any_training(tmp_path, row, changes, problem):
    """Checked while planning (a TissueNet split from its array headers, a folder from its files'
    headers): not after the models trained on the other sets."""
    workdir = make_workdir(tmp_path / "w", **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    for column, value in changes(tmp_path).items():
        rows.loc[row, column] = value
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0 and problem.format(tmp=tmp_path) in result.stderr + result.stdout


def test_a_test_split_that_is_the_training_split_is_refused(tmp_path):
    workdir = make_workdir(tmp_path / "w", **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rows.loc[0, "test"] = str((workdir / rows.loc[0, "train"]).resolve())  # the same file, named another way
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"segmentation_datasets.tsv line 2 (train) and line 2 (test) name one file: {rows.loc[0, 'train']} and "
            f"{rows.loc[0, 'test']} are both {rows.loc[0, 'test']}: a model would be scored on images it was trained "
            "on") in result.stdout


def test_a_test_split_copied_from_the_training_split_is_refused(tmp_path):
    """A byte copy under another name passes the one-file check (real paths); its content does not."""
    workdir = make_workdir(tmp_path / "w", **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rng = np.random.default_rng(0)
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, X=rng.random((4, 64, 64, 2), dtype=np.float32),
             y=rng.integers(0, 3, (4, 64, 64, 2), dtype=np.int32))
    shutil.copy(train, test)
    rows.loc[0, ["train", "test"]] = [str(train), str(test)]
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"segmentation_datasets.tsv line 2 (train) and line 2 (test) name copies of one file: {train} and {test} "
            "have one size and the same first and last MiB: a model would be scored on images it was trained on"
            ) in result.stdout + result.stderr
    data = dict(np.load(test))  # the same layout and size, other images: planned
    data["X"] = data["X"][::-1].copy()
    np.savez(test, **data)
    assert snakemake("-n", cwd=workdir, check=False).returncode == 0


def test_a_one_channel_label_array_is_said_while_planning(tmp_path):
    workdir = make_workdir(tmp_path / "w", **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    one = tmp_path / "one.npz"
    np.savez(one, X=np.zeros((2, 8, 8, 2), np.float32), y=np.ones((2, 8, 8, 1), np.int32))
    rows.loc[0, "test"] = str(one)
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir)
    assert (f"line 2 (dataset tissuenet_demo): {one}: y has one label channel, read as the whole-cell labels"
            in result.stderr + result.stdout)


def _nan_pixels(arrays):
    arrays["X"][1, :4, :4, 0] = np.nan


def _no_labels(arrays):
    arrays["y"][:] = 0


@pytest.mark.parametrize(("split", "change", "problem"), [
    ("test", _nan_pixels, "tissuenet_v1.1_test.npz: X has NaN or infinite pixels, first in image X[1]"),
    ("test", _no_labels, "tissuenet_v1.1_test.npz: none of the 2 images has a labelled object"),
    ("train", _nan_pixels, "tissuenet_v1.1_train.npz: X has NaN or infinite pixels, first in image X[1]"),
])
def test_a_split_bad_in_its_pixels_or_labels_stops_at_its_check_before_any_training(tmp_path, split, change,
                                                                                     problem):
    """What planning cannot see from headers is read by one job per split that every training
    job waits for: a test split's was found at scoring, after every model; a training split's by
    every teacher and student job in turn, each scanning the whole split (now they read only the
    images they use)."""
    workdir = make_workdir(tmp_path, **SMALL)
    snakemake("--cores", "1", "demo_segmentation", cwd=workdir)
    path = workdir / f"data/demo/segmentation/tissuenet/tissuenet_v1.1_{split}.npz"
    with np.load(path) as arrays:
        arrays = dict(arrays)
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    result = snakemake("--cores", "2", cwd=workdir, check=False)
    out = result.stderr + result.stdout
    assert result.returncode != 0 and problem in out
    assert f"Error in rule segmentation_check_{split}" in out
    assert not list((workdir / "results/segmentation").rglob("model.pt"))
    check = "checked/train/tissuenet_demo.txt" if split == "train" else "checked/tissuenet_demo.txt"
    assert not (workdir / "results/segmentation" / check).exists()


def test_training_crops_larger_than_the_images_stop_the_plan_naming_the_split(tmp_path):
    """Every teacher and student would fail on its first batch (numpy's 'high <= 0' before)."""
    workdir = make_workdir(tmp_path / "w", **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rows.loc[0, "train"] = str(_npz(tmp_path / "tiny.npz", 2))  # 8 px images, 32 px crops
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"line 2 (dataset tissuenet_demo): {tmp_path}/tiny.npz: its smallest image side is 8 px, less than "
            "the training crops (segmentation.train.tile 32)") in result.stderr + result.stdout


def test_a_tiff_training_folder_of_two_image_sizes_stops_the_plan_naming_the_odd_image(tmp_path):
    """Every teacher and student job failed on it, one after another (a helper's trial)."""
    workdir = make_workdir(tmp_path / "w", **SMALL)
    folder = tmp_path / "tif"
    folder.mkdir()
    for name, side in (("a", 64), ("b", 64), ("odd", 48)):
        tifffile.imwrite(folder / f"{name}.tif", np.ones((2, side, side), np.float32))
        tifffile.imwrite(folder / f"{name}_whole-cell.tif", np.ones((side, side), np.int32))
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rows.loc[0, ["format", "train"]] = ["tiff", str(folder)]
    rows.to_csv(sheet, sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"line 2 (dataset tissuenet_demo): {folder}/odd.tif: is (48, 48), the folder's first image (64, 64): "
            "a training set needs one image size") in result.stderr + result.stdout


def _bbbc038_without_masks(folder):
    """The stage-1 test release's shape: images, no masks (its labels are a separate CSV)."""
    write_bbbc038(folder, n_images=2)
    shutil.rmtree(folder / "demo00" / "masks")
    return folder


def _tiff_without_labels(folder):
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((2, 8, 8), np.float32))
    return folder


def _bbbc038_mask_of_another_size(folder):
    write_bbbc038(folder, n_images=2)
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(folder / "demo01" / "masks" / "small.png")
    return folder


def _npz(path, n, labels_px=8, label_value=0, **more):
    y = np.full((n, labels_px, labels_px, 2), label_value, np.float32 if label_value % 1 else np.int32)
    np.savez(path, X=np.zeros((n, 8, 8, 2), np.float32), y=y, **more)
    return path


@pytest.mark.parametrize("fmt", ["tissuenet", "tiff"])
def test_memory_and_runtime_follow_the_splits_size(tmp_path, fmt):
    """A 2 GB split, a compressed npz (2.1 GB of arrays in a small file: a compressed member is
    read whole) or a TIFF folder (sparse files: only sizes and headers are read while planning),
    asks 2 GB + 2x its arrays in memory for training and for scoring on it, and 30 min per GB of
    each teacher-maps shard (one per image at most)."""
    workdir = make_workdir(tmp_path, **SMALL)
    splits = []
    for split in ("train", "test"):  # one file for both is refused (a test split that is the training one)
        if fmt == "tiff":  # 12 bytes a pixel (2 float32 channels, int32 labels): 2.0 GB, sparse files
            big = tmp_path / f"tiffs_{split}"
            big.mkdir()
            tifffile.memmap(big / "a.tif", shape=(12910, 12910, 2), dtype=np.float32)._mmap.close()
            tifffile.memmap(big / "a_whole-cell.tif", shape=(12910, 12910), dtype=np.int32)._mmap.close()
        else:  # zeros compress to ~2 MB; X and y hold 2 x 2000 x 256^2 x 2 x 4 bytes = 2,097 MB
            big = tmp_path / f"tissuenet_v1.1_{split}.npz"
            shape = (2000, 256, 256, 2)
            x = np.zeros(shape, np.float32)
            x[0, 0, 0, 0] = split == "test"  # not a byte copy of the training split (also refused)
            np.savez_compressed(big, X=x, y=np.zeros(shape, np.int32))
        splits.append(str(big))
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rows.loc[rows["dataset"] == "tissuenet_demo", ["format", "train", "test"]] = fmt, *splits
    rows.to_csv(sheet, sep="\t", index=False)
    out = snakemake("-n", "--cores", "1", cwd=workdir).stdout
    jobs = dict(re.findall(r"rule (\w+):\n(?:    .*\n)*?    resources: (.*)", out))  # rule -> its resources
    # 5 + 30 x GB / 2 shards; the TIFF folder's one image is one shard
    memory, minutes = (6194, 36) if fmt == "tissuenet" else (6000, 65)
    # training: + its steps' activations on a CPU, 2 x 32^2 px x 2 kB (resnet18): 4 MB
    assert f"mem_mb={memory + 4}" in jobs["segmentation_teacher"], jobs["segmentation_teacher"]
    assert f"runtime={minutes}" in jobs["segmentation_teacher_probs"], jobs["segmentation_teacher_probs"]
    assert f"mem_mb={memory}," in jobs["segmentation_teacher_probs"]  # decompressed whole; one image one shard
    scoring = re.findall(r"rule segmentation_evaluate:\n(?:    .*\n)*?    wildcards: .*on=(\w+).*\n"
                         r"(?:    .*\n)*?    resources: .*mem_mb=(\d+)", out)
    assert {on: int(mb) for on, mb in scoring} == {"tissuenet_demo": memory, "bbbc038_demo": 2000}, scoring


def test_a_teacher_maps_job_asks_memory_for_its_share_of_a_memory_mapped_split(tmp_path):
    """A stored npz (as TissueNet publishes it) is memory-mapped and a maps job reads only its
    shard's images (the split is checked by its own job): 2 GB + 2x its share, where a training
    job, which samples every image, asks for 2x the split (measured: 1 shard in 8 of a 1.07 GB
    split peaked at 1.04-1.07 GB, README)."""
    workdir = make_workdir(tmp_path / "w", **SMALL)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    shape = (64, 256, 256, 2)  # X and y: 2 x 33.6 MB
    for split in ("train", "test"):
        x = np.zeros(shape, np.float32)
        x[0, 0, 0, 0] = split == "test"
        np.savez(tmp_path / f"{split}.npz", X=x, y=np.zeros(shape, np.int32))
        rows.loc[rows["dataset"] == "tissuenet_demo", split] = str(tmp_path / f"{split}.npz")
    rows.to_csv(sheet, sep="\t", index=False)
    out = snakemake("-n", "--cores", "1", cwd=workdir).stdout
    jobs = dict(re.findall(r"rule (\w+):\n(?:    .*\n)*?    resources: (.*)", out))
    assert "mem_mb=2138," in jobs["segmentation_teacher"], jobs["segmentation_teacher"]  # 2,000 + 2 x 67 + 4 MB
    assert "mem_mb=2067," in jobs["segmentation_teacher_probs"], jobs["segmentation_teacher_probs"]  # 2 shards


def test_scoring_on_a_bbbc038_folder_asks_memory_for_its_pixels(tmp_path):
    """A PNG folder's files understate what is read from them (these black 25 MP images are a few
    kB each): its jobs are sized by 8 bytes a pixel, from the headers."""
    workdir = make_workdir(tmp_path, **SMALL)
    folder = tmp_path / "stage1_train"
    for name in ("a", "b"):
        for sub, png in (("images", name), ("masks", "0")):
            (folder / name / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((5000, 5000), np.uint8)).save(folder / name / sub / f"{png}.png")
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    rows.loc[rows["dataset"] == "bbbc038_demo", "test"] = str(folder)
    rows.to_csv(sheet, sep="\t", index=False)
    out = snakemake("-n", "--cores", "1", cwd=workdir).stdout
    scoring = re.findall(r"rule segmentation_evaluate:\n(?:    .*\n)*?    wildcards: .*on=(\w+).*\n"
                         r"(?:    .*\n)*?    resources: .*mem_mb=(\d+)", out)
    assert {int(mb) for on, mb in scoring if on == "bbbc038_demo"} == {2000 + 2 * 400}  # 2 x 25 MP x 8 bytes


def test_training_runtime_and_memory_follow_the_configured_steps(tmp_path):
    """SLURM's time limit of a training job: 10 min + 1 min per 1e9 training pixels (epochs x steps
    x batch x tile^2); a fixed 10 min would kill a real protocol's training and retry it twice.
    Its memory: 2 GB (+ 2x the split, not made yet here) + the activations a CPU step holds per
    pixel of its batch (batch x tile^2; measured: Swin-Tiny at 16 x 256 px peaked at 6.3 GB);
    none where `device` is cuda (they are on the card)."""
    workdir = make_workdir(tmp_path, **SMALL)
    big = "segmentation={'train': {'epochs': 100, 'steps_per_epoch': 500, 'batch_size': 16, 'tile': 256}}"
    pixels = 16 * 256**2
    for extra, minutes, student_mb, teacher_mb in (
            ((), 10, 2005, 2004),  # 2 x 32^2 px x 2.5 (mobilenetv3) and 2 kB (resnet18)
            (("--config", big), 62, 2000 + round(pixels * 2.5 / 1000), 2000 + round(pixels * 2.0 / 1000)),
            (("--config", big, "device=cuda"), 62, 2000, 2000)):
        out = snakemake("-n", "--cores", "1", *extra, cwd=workdir).stdout
        jobs = dict(re.findall(r"rule (\w+):\n(?:    .*\n)*?    resources: (.*)", out))
        for rule, mb in (("segmentation_student", student_mb), ("segmentation_teacher", teacher_mb)):
            assert f"runtime={minutes}," in jobs[rule], (rule, jobs[rule])
            assert f"mem_mb={mb}," in jobs[rule], (rule, extra, jobs[rule])


def test_an_external_teachers_maps_are_distilled_and_scored_as_the_oracle(tmp_path):
    """segmentation.teacher external: no teacher is trained; its maps (here: the labels'
    foreground, a perfect teacher) become the cached shards the kd students read, and its row
    is scored from its maps of the test split."""
    data = tmp_path / "tn"
    splits = {s: write_tissuenet(data / f"tissuenet_v1.1_{s}.npz", 4, size=64, seed=i)
              for i, s in enumerate(("train", "test"))}
    maps = {}
    for path in splits.values():
        with np.load(path) as split:
            maps.update({f"{path.stem}:{i}": (y[..., 0] > 0).astype(np.float32) for i, y in enumerate(split["y"])})
    np.savez(data / "maps.npz", **maps)
    workdir = make_workdir(tmp_path / "w", **{**SMALL, "segmentation__teacher": "external",
                                              "segmentation__modes": ["no-kd", "kd"]})
    sheet = pd.DataFrame([{"dataset": "tn", "format": "tissuenet", "train": splits["train"], "test": splits["test"],
                           "nuclear": 0, "membrane": 1, "target": "whole-cell", "role": "train",
                           "teacher_maps": data / "maps.npz"}])
    sheet.to_csv(workdir / "config/segmentation_datasets.tsv", sep="\t", index=False)
    plan = snakemake("-n", "--cores", "1", cwd=workdir).stdout
    cuts = [b for b in plan.split("\n\n") if "rule segmentation_teacher_maps_external:" in b]
    assert len(cuts) == 2 and not any("gpu=" in b for b in cuts)  # a CPU job, under SLURM too
    snakemake("--cores", "2", cwd=workdir)
    out = workdir / "results/segmentation/tn"
    assert not (out / "teacher/multiplex/model.pt").exists()
    shards = sorted((out / "teacher/multiplex/probs").glob("*.npz"))
    cached = np.concatenate([np.load(p)["probs"][:, 0] for p in shards])
    with np.load(splits["train"]) as train:
        assert np.array_equal(cached, (train["y"][..., 0] > 0).astype(np.float32))
    table = pd.read_csv(workdir / "results/benchmark/segmentation_by_dataset.tsv", sep="\t").set_index("model")
    assert set(table.index) == {"teacher multiplex", "mobilenetv3 no-kd", "mobilenetv3 kd"}
    assert table.loc["teacher multiplex", "dice_mean"] == 1.0
    assert table.loc["mobilenetv3 kd", "recovery"] == pytest.approx(table.loc["mobilenetv3 kd", "dice_mean"])
    assert (workdir / "results/segmentation/tn/panel.png").exists()


def test_a_sam_teacher_plans_its_maps_and_is_scored_on_its_own_test_set_only(tmp_path):
    """segmentation.teacher sam (its run: tests/test_segmentation.py, and by hand on this demo):
    SAM maps per shard and view, its test maps, scores on its own test split; never trained, and
    never scored on the cross set (no maps there). A missing checkpoint stops the plan, named."""
    weights = tmp_path / "sam_vit_b.pth"
    workdir = make_workdir(tmp_path / "w", **SMALL, segmentation__teacher="sam",
                           segmentation__sam={"checkpoint": str(weights), "model_type": "vit_b"})
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert f"segmentation.sam.checkpoint: {weights} is not a file" in result.stdout + result.stderr
    weights.write_bytes(b"")
    jobs = planned_jobs(workdir)
    shards = 2  # the config's teacher_shards
    assert "segmentation_teacher" not in jobs and jobs["segmentation_teacher_probs"] == 2 * shards
    assert jobs["segmentation_sam_test_maps"] == 2 and jobs["segmentation_evaluate_external"] == 2
    assert jobs["segmentation_evaluate"] == 3 * 2  # three student modes, on the own test set and the cross set


def test_a_training_set_with_fewer_images_than_teacher_shards_plans_one_shard_per_image(tmp_path):
    """segmentation.teacher_shards is one value for every training set: a set with fewer images
    gets one teacher-maps job per image (before: empty shards, each a job that loads the model
    and writes nothing), and its kd students read just those (each job's time limit, its own
    share: test_memory_and_runtime_follow_the_splits_size)."""
    workdir = make_workdir(tmp_path / "w", **SMALL, segmentation__teacher_shards=4)
    sheet = workdir / "config/segmentation_datasets.tsv"
    rows = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
    for split, n in (("train", 3), ("test", 2)):
        rows.loc[0, split] = str(write_tissuenet(tmp_path / f"tissuenet_v1.1_{split}.npz", n, size=64, seed=n))
    rows.to_csv(sheet, sep="\t", index=False)
    plan = snakemake("-n", "--cores", "1", cwd=workdir).stdout
    shards = re.findall(r"rule segmentation_teacher_probs:\n(?:    .*\n)*?    wildcards: .*shard=(\d+)", plan)
    assert sorted(shards) == ["0", "0", "1", "1", "2", "2"]  # two distilled views (kd, kd-nuclear-teacher)
    student = [b for b in plan.split("\n\n") if "rule segmentation_student:" in b and "mode=kd," in b]
    assert len(student) == 1 and "probs/2.npz" in student[0] and "probs/3.npz" not in student[0]
