"""The segmentation study's benchmark tables, in the paper's layout: one row per model (the
teachers, then each student backbone x mode) and test set; Dice and object F1 as mean and SD
over images and seeds, teacher recovery (Dice / the multiplex teacher's Dice on the same test
set, where that teacher can see it) and parameter counts with their ratio to the teacher's."""

from __future__ import annotations

import pandas as pd

CROSS_NOTE = ("Rows whose evaluated_on differs from trained_on score a cross set without retraining, against that "
              "set's own labels: BBBC038 has nuclear masks only, so students trained for whole cells are scored "
              "there against nuclei (read those rows as transfer, not as the same task). recovery and "
              "parameter_ratio are blank where the multiplex teacher cannot see the set (one channel).")


def read_scores(paths: list[str]) -> pd.DataFrame:
    """Every per-image score file; its path says the training set, the model and the test set
    (<results>/segmentation/<trained_on>/<model>/scores_on_<evaluated_on>.tsv)."""
    frames = []
    for path in paths:
        trained_on, rest = path.split("/segmentation/", 1)[1].split("/", 1)
        model, evaluated_on = rest.rsplit("/scores_on_", 1)
        parts = model.split("/")  # teacher/<view> or students/<backbone>/<mode>/seed<n>
        backbone, mode = (parts[1], parts[2]) if parts[0] == "students" else ("", f"teacher {parts[1]}")
        table = pd.read_csv(path, sep="\t").drop(columns=["backbone", "mode"], errors="ignore")
        frames.append(table.assign(trained_on=trained_on, evaluated_on=evaluated_on.removesuffix(".tsv"),
                                   model=mode if not backbone else f"{backbone} {mode}", backbone=backbone,
                                   mode=mode))
    return pd.concat(frames, ignore_index=True)


def summarise(scores: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and SD of Dice and F1 over images and seeds per `by` + model, recovery and parameters."""
    table = scores.groupby([*by, "model", "backbone", "mode"], sort=False).agg(
        dice_mean=("dice", "mean"), dice_sd=("dice", "std"), f1_mean=("f1", "mean"), f1_sd=("f1", "std"),
        seeds=("seed", "nunique"), images=("image", "nunique"), parameters=("parameters", "first")).reset_index()
    teacher = table.loc[table["model"] == "teacher multiplex", [*by, "dice_mean", "parameters"]]
    teacher = teacher.rename(columns={"dice_mean": "teacher_dice", "parameters": "teacher_parameters"})
    table = table.merge(teacher, on=by, how="left")
    # undefined, not infinite, where the teacher finds no foreground (e.g. SAM without cell weights)
    table["recovery"] = table["dice_mean"] / table["teacher_dice"].where(table["teacher_dice"] > 0)
    table["parameter_ratio"] = table["teacher_parameters"] / table["parameters"]
    return table.drop(columns=["teacher_dice", "teacher_parameters"]).round(4)


def by_dataset(scores: pd.DataFrame) -> pd.DataFrame:
    return summarise(scores, ["trained_on", "evaluated_on"])


def overall(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model over every set it was trained on and tested on (its own test splits only)."""
    own = scores[scores["trained_on"] == scores["evaluated_on"]].assign(scope="all")
    return summarise(own, ["scope"]).drop(columns="scope")
