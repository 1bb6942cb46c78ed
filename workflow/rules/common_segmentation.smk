# Input functions, sheet checks and resources of the segmentation study (rules/segmentation.smk);
# the shared ones are in common.smk.
SEG = config["segmentation"]
SEG_SETS = pd.DataFrame(columns=["dataset", "role"])
SEG_TRAIN_IMAGES = {}  # training set -> its images, where planning can count them (not the demo's: rules make them)
SEG_TEACHERS = {"no-kd": "", "kd": "multiplex", "kd-nuclear-teacher": "nuclear"}  # mode -> teacher view


def external_map_columns():
    """The sheet columns an external teacher needs: its maps, and its nuclear-only maps where
    the kd-nuclear-teacher control runs."""
    if SEG["teacher"] != "external":
        return ()
    return ("teacher_maps", "teacher_maps_nuclear") if "kd-nuclear-teacher" in SEG["modes"] else ("teacher_maps",)


def seg_teacher_views():
    """The teacher views that exist: the U-Net teacher trains both (the nuclear one is a
    reference); an external or SAM teacher only those the modes distil from."""
    if SEG["teacher"] == "unet-multiplex":
        return ["multiplex", "nuclear"]
    return seg_distilled_views()


def seg_distilled_views():
    """The teacher views a mode distils from: the only ones whose maps on the training set are made."""
    return [SEG_TEACHERS[m] for m in SEG["modes"] if SEG_TEACHERS[m]]


def teacher_test_maps(dataset, view):
    """The maps an external or SAM teacher is scored from (its own test split)."""
    if SEG["teacher"] == "sam":
        return f"{RESULTS}/segmentation/{dataset}/teacher/{view}/test_maps.npz"
    return SEG_SETS.loc[dataset, "teacher_maps" if view == "multiplex" else "teacher_maps_nuclear"]


def seg_teacher_test_maps(wildcards):
    return teacher_test_maps(wildcards.dataset, wildcards.view)


def seg_test_split_of_dataset(wildcards):
    return {"test": SEG_SETS.loc[wildcards.dataset, "test"]}


def seg_external_maps(wildcards):
    """Input: the external teacher's maps of the view's channels (the sheet's column)."""
    return {"maps": teacher_test_maps(wildcards.dataset, wildcards.view)}


def check_split_row(row, split, where, training=False):
    """A split's layout, sizes and channels from its headers (every image and label file of a
    BBBC038 or TIFF folder), so a bad test or cross split stops before any model is trained on
    the others; a `training` split's images must also share one size and hold the training crops
    (else every teacher and student job would fail on its first batch). Returns its images."""
    from tissuekd.io.npz import npz_shape
    from tissuekd.io.segmentation import check_split
    from tissuekd.io.tissuenet import ONE_LABEL_CHANNEL

    membrane = int(row["membrane"]) if row["membrane"] else None
    try:
        images, side = check_split(row["format"], split, row["target"], int(row["nuclear"] or 0), membrane, training)
    except InputError as err:
        raise WorkflowError(f"{where}: {err}") from None
    if row["format"] == "tissuenet" and npz_shape(Path(split), "y")[-1] == 1:  # nothing in the file tells which
        logger.warning(f"{where}: {split}: {ONE_LABEL_CHANNEL.format(target=row['target'])}")
    tile = SEG["train"]["tile"]
    if training and tile > side:
        raise WorkflowError(
            f"{where}: {split}: its smallest image side is {side} px, less than the training crops "
            f"(segmentation.train.tile {tile}); set a tile of at most {side // 32 * 32}"
        )
    return images


def check_segmentation_sheet(sheet, path):
    """Names unique, a training set with a membrane channel and a train split, files present
    (demo files are made by rules)."""
    require_unique(sheet, "dataset", path)
    require_distinct_files(
        sheet, ("train", "test"), path, "a model would be scored on images it was trained on (or one set twice)"
    )
    for row_no, row in zip(sheet.index, sheet.to_dict("records")):
        where = f"{path} line {row_no} (dataset {row['dataset']})"
        if row["role"] == "train":
            if row["format"] not in ("tissuenet", "tiff"):
                raise WorkflowError(
                    f"{where}: only tissuenet and tiff sets can be trained on (role train); {row['format']} is role cross"
                )
            if not row["train"] or not row["membrane"]:
                raise WorkflowError(
                    f"{where}: role train needs a `train` split and a `membrane` channel for the teacher"
                )
            if row["membrane"] == row["nuclear"]:
                raise WorkflowError(f"{where}: the membrane channel is the nuclear one ({row['nuclear']})")
            for column in external_map_columns():
                if not row.get(column):
                    raise WorkflowError(f"{where}: segmentation.teacher external needs column {column!r}")
        if row["format"] == "bbbc038" and (row["target"] != "nuclear" or row["membrane"] or row["nuclear"] != "0"):
            raise WorkflowError(
                f"{where}: bbbc038 images are one nuclear channel with nuclear labels: set target nuclear, nuclear 0 "
                "and no membrane"
            )
        for column in ("train", "test", *external_map_columns()):
            value = row[column]
            if value and not os.path.exists(value) and not made_by_demo(value):
                raise WorkflowError(f"{where}: column {column!r} names {value}, {not_there(value)}")
            if value and column in ("train", "test") and not made_by_demo(value):
                training = column == "train" and row["role"] == "train"
                images = check_split_row(row, value, where, training)
                if training:
                    SEG_TRAIN_IMAGES[row["dataset"]] = images
    if not (sheet["role"] == "train").any():
        raise WorkflowError(f"{path}: no data set with role train")
    sam_weights = SEG["sam"]["checkpoint"]
    if SEG["teacher"] == "sam" and not os.path.isfile(sam_weights):
        raise WorkflowError(
            f"segmentation.sam.checkpoint: {sam_weights or '(empty)'} is not a file; SAM weights are never "
            "downloaded: name a local checkpoint (e.g. sam_vit_h_4b8939.pth)"
        )


if SEG["enabled"]:
    SEG_SETS = load_sheet(SEG["datasets"], "../schemas/segmentation_datasets.schema.yaml")
    check_segmentation_sheet(SEG_SETS, SEG["datasets"])
    SEG_SETS = SEG_SETS.set_index("dataset", drop=False)
SEG_TRAIN = list(SEG_SETS.loc[SEG_SETS["role"] == "train", "dataset"])


wildcard_constraints:
    dataset="|".join(map(re.escape, SEG_TRAIN)) or "NO_DATASETS",
    on="|".join(map(re.escape, SEG_SETS["dataset"])) or "NO_DATASETS",
    backbone="|".join(map(re.escape, SEG["students"])),
    mode="|".join(map(re.escape, SEG["modes"])),
    seed=r"\d+",
    model=r"teacher/(multiplex|nuclear)|students/[a-z0-9-]+/[a-z-]+/seed\d+",


def seg_split_kwargs(dataset, split):
    """read_split's arguments for a split ("train" or "test") of a sheet row; a folder's
    `contents` (its files' fingerprint) makes the jobs that read it rerun when one changes."""
    row = SEG_SETS.loc[dataset]
    return {
        "fmt": row["format"],
        "path": row[split],
        "target": row["target"],
        "nuclear": int(row["nuclear"] or 0),
        "membrane": int(row["membrane"]) if row["membrane"] else None,
        **({"contents": folder_fingerprint(row[split])} if os.path.isdir(row[split]) else {}),
    }


@functools.cache
def folder_fingerprint(folder):
    """A digest of the names, sizes and modification times of every file under `folder`: a folder
    as an input changes only when a file is added or removed, not when one is rewritten."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def seg_split(split):
    """Param: read_split's arguments for the job's training set, whose contents the job's check
    input (segmentation_check_train) has read: it need not scan them again."""
    return lambda wildcards: {**seg_split_kwargs(wildcards.dataset, split), "checked": True}


def seg_split_inputs(wildcards):
    """A training job's split, its check, and the checks of the test splits its models will be
    scored on."""
    train_check = f"{RESULTS}/segmentation/checked/train/{wildcards.dataset}.txt"
    return {
        "train": SEG_SETS.loc[wildcards.dataset, "train"],
        "checked": [train_check, *seg_test_checks(wildcards.dataset)],
    }


def seg_train_to_check(wildcards):
    """The training split's check reads it as an input: a rewritten split is checked again."""
    return {"train": SEG_SETS.loc[wildcards.dataset, "train"]}


def seg_scored_sets(dataset):
    """The sets a data set's models are scored on: its own and every cross set."""
    return [on for on in SEG_SETS["dataset"] if on == dataset or SEG_SETS.loc[on, "role"] == "cross"]


def seg_test_checks(dataset):
    return [f"{RESULTS}/segmentation/checked/{on}.txt" for on in seg_scored_sets(dataset)]


def seg_test_to_check(wildcards):
    """The check's input: a demo test split only (a rule makes it, so it must come first). A
    user's split is no input and its arguments no params, so the check runs once: neither a
    rewritten split nor a new path in the sheet reruns it, hence no training job (the scoring
    reruns and reads the split again)."""
    path = seg_test_path(wildcards)
    return {"test": ancient(path)} if made_by_demo(path) else {}


def seg_test_path(wildcards):
    return SEG_SETS.loc[wildcards.on, "test"]


def seg_test_split(wildcards):
    """Param: read_split's arguments for the test split of the set evaluated on ({on})."""
    return seg_split_kwargs(wildcards.on, "test")


def seg_test_inputs(wildcards):
    return {"test": SEG_SETS.loc[wildcards.on, "test"]}


def seg_shards(dataset):
    """The teacher-maps jobs of a training set: segmentation.teacher_shards, or one per image
    where the set has fewer (an empty shard would be a job that writes nothing)."""
    return min(SEG["teacher_shards"], SEG_TRAIN_IMAGES.get(dataset, SEG["teacher_shards"]))


def seg_shards_of_job(wildcards):
    return seg_shards(wildcards.dataset)


def seg_teacher_probs(wildcards):
    """A kd student's teacher maps: every shard of its teacher's (none for no-kd)."""
    view = SEG_TEACHERS[wildcards.mode]
    if not view:
        return []
    return [
        f"{RESULTS}/segmentation/{wildcards.dataset}/teacher/{view}/probs/{s}.npz"
        for s in range(seg_shards(wildcards.dataset))
    ]


def split_bytes(path):
    """Bytes of a split: its file, or every file of its folder (BBBC038, TIFF); 0 before the demo makes it."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


@functools.cache
def split_whole(path):
    """Whether a job reading one image of the split holds all of it (a compressed npz)."""
    from tissuekd.io.segmentation import split_read_whole

    return os.path.exists(path) and split_read_whole(path)


@functools.cache
def split_held_bytes(path):
    """Bytes of a split's arrays (tissuekd.io.segmentation.split_array_bytes; 0 before the demo
    makes it), once per split however many jobs ask."""
    from tissuekd.io.segmentation import split_array_bytes

    return split_array_bytes(path) if os.path.exists(path) else 0


def split_of_job(wildcards, input, split, path_of):
    """The split a job reads: its input named `split`, or `path_of(wildcards)` for a job that
    has it as no input (segmentation_check_test)."""
    return path_of(wildcards) if path_of else getattr(input, split)


def mem_per_image(base_mb, split="train", path_of=None, sharded=False):
    """mem_mb = (base + 2 x the split's arrays) x attempt: training, inference and scoring read one
    image at a time (bounded caches), so the split counts only through its mapped or decompressed
    pages; measured 1.1-1.6 MB per MB of split (2026-12-04, 5-302 MB TissueNet-layout splits).
    `sharded` (a teacher-maps job): its shard's share, unless the split is decompressed whole."""

    def mem(wildcards, input, attempt):
        path = split_of_job(wildcards, input, split, path_of)
        shards = seg_shards(wildcards.dataset) if sharded and not split_whole(path) else 1
        return round(base_mb + 2 * split_held_bytes(path) / 1e6 / shards) * attempt

    return mem


# kB of host memory a training step holds per pixel of its batch (batch x tile^2) where it runs on
# the CPU: activations kept for the backward pass; on a GPU they are on the card. Measured with
# `python -m tissuekd.bench.train_memory` (fp32, smp's default decoder, kd; 2026-12-07: 4.6, 3.0,
# 2.2, 1.8), ~10% added: at 16 x 256 px Swin-Tiny peaked at 6.3 GB, ResNet18 at 3.0 (16 x 512: 7.7).
TRAIN_KB_PER_PIXEL = {"swin-tiny": 5.0, "efficientnet-b0": 3.3, "mobilenetv3": 2.5, "resnet18": 2.0}


def batch_pixels():
    """Pixels of one training batch in the config: batch x tile^2."""
    return SEG["train"]["batch_size"] * SEG["train"]["tile"] ** 2


def mem_per_step(base_mb, backbone_of):
    """A training job's mem_mb: mem_per_image's, plus its steps' activations (TRAIN_KB_PER_PIXEL of
    the backbone `backbone_of(wildcards)`) unless `device` is cuda; x attempt."""
    split_mb = mem_per_image(base_mb)
    pixels = batch_pixels()

    def mem(wildcards, input, attempt):
        per_pixel = 0 if config["device"] == "cuda" else TRAIN_KB_PER_PIXEL[backbone_of(wildcards)]
        return round(split_mb(wildcards, input, 1) + pixels * per_pixel / 1000) * attempt

    return mem


TRAIN_PIXELS_PER_MINUTE = 1e9  # a U-Net's training pixels per minute, set low for a modest GPU (~17 Mpx/s)


def minutes_per_step(base_min):
    """runtime (minutes): base + the pixels the config's training steps see (epochs x steps x
    batch x tile^2) at TRAIN_PIXELS_PER_MINUTE, x attempt (the demo's 100 steps of 8 x 64^2: base)."""
    pixels = SEG["train"]["epochs"] * SEG["train"]["steps_per_epoch"] * batch_pixels()
    return lambda wildcards, attempt: round(base_min + pixels / TRAIN_PIXELS_PER_MINUTE) * attempt


def minutes_per_gb(base_min, per_gb, split="train", sharded=False, path_of=None):
    """runtime (minutes) = base + per GB of the split a job predicts (where `sharded`, its shard's
    share), x attempt: inference time follows the pixels (split_held_bytes: the split's arrays)."""

    def runtime(wildcards, input, attempt):
        held = split_held_bytes(split_of_job(wildcards, input, split, path_of))
        shards = seg_shards(wildcards.dataset) if sharded else 1
        return round(base_min + per_gb * held / 1e9 / shards) * attempt

    return runtime


def seg_models(with_membrane=True):
    """The models of a training set: the teachers (the multiplex one only where the test set has
    a membrane channel; external and SAM teachers only on their own test set, from their maps)
    and every student."""
    views = seg_teacher_views()
    if not with_membrane:
        views = [v for v in views if v == "nuclear"] if SEG["teacher"] == "unet-multiplex" else []
    models = [f"teacher/{v}" for v in views]
    return models + expand("students/{b}/{m}/seed{s}", b=SEG["students"], m=SEG["modes"], s=SEG["seeds"])


def segmentation_evaluations():
    """(training set, model, test set): every model on its own set's test split and, the
    nuclear-input ones, on every cross set."""
    runs = []
    for dataset in SEG_TRAIN:
        for on in seg_scored_sets(dataset):
            runs += [(dataset, m, on) for m in seg_models(with_membrane=on == dataset)]
    return runs


def segmentation_scores():
    return [
        str(rules.segmentation_evaluate.output[0]).format(dataset=d, model=m, on=on)
        for d, m, on in segmentation_evaluations()
    ]


def seg_panel_models(dataset):
    """Column title -> checkpoint of the report's panel: the multiplex teacher, then the first
    student backbone at the first seed in each mode."""
    teacher = f"{RESULTS}/segmentation/{dataset}/teacher/multiplex/model.pt"
    if SEG["teacher"] != "unet-multiplex":
        teacher = teacher_test_maps(dataset, "multiplex")
    models = {"teacher (multiplex)": teacher}
    backbone, seed = SEG["students"][0], SEG["seeds"][0]
    for mode in SEG["modes"]:
        models[f"{backbone} {mode}"] = (
            f"{RESULTS}/segmentation/{dataset}/students/{backbone}/{mode}/seed{seed}/model.pt"
        )
    return models


def seg_panel_inputs(wildcards):
    return {
        "test": SEG_SETS.loc[wildcards.dataset, "test"],
        "models": list(seg_panel_models(wildcards.dataset).values()),
    }


def seg_panel_titles(wildcards):
    return list(seg_panel_models(wildcards.dataset))


def segmentation_benchmarks():
    """Benchmark files of every segmentation job, for the runtime table."""
    if not SEG["enabled"]:
        return []
    files, views = [], seg_teacher_views()
    if SEG["teacher"] == "unet-multiplex":
        files += expand(str(rules.segmentation_teacher.benchmark), dataset=SEG_TRAIN, view=views)
    if SEG["teacher"] == "sam":
        files += expand(str(rules.segmentation_sam_test_maps.benchmark), dataset=SEG_TRAIN, view=views)
    external = SEG["teacher"] == "external"
    probs = rules.segmentation_teacher_maps_external if external else rules.segmentation_teacher_probs
    for dataset in SEG_TRAIN:
        files += expand(
            str(probs.benchmark), dataset=dataset, view=seg_distilled_views(), shard=range(seg_shards(dataset))
        )
    files += expand(
        str(rules.segmentation_student.benchmark),
        dataset=SEG_TRAIN,
        backbone=SEG["students"],
        mode=SEG["modes"],
        seed=SEG["seeds"],
    )
    files += expand(str(rules.segmentation_panel.benchmark), dataset=SEG_TRAIN)
    files += expand(
        str(rules.segmentation_check_test.benchmark), on=sorted({on for d in SEG_TRAIN for on in seg_scored_sets(d)})
    )
    files += expand(str(rules.segmentation_check_train.benchmark), dataset=SEG_TRAIN)
    bench = str(rules.segmentation_evaluate.benchmark)
    return files + [bench.format(dataset=d, model=m, on=on) for d, m, on in segmentation_evaluations()]
