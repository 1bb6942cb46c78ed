"""One cohort's patients: survival from its clinical table (`survival.clinical`), RNA from its
matrix (`survival.rna`), slides with features from the sheet, and patient-level
cross-validation folds.

Patients that cannot be used are dropped with a reason (no slide, no tissue on any slide,
no survival for the endpoint, no tumour RNA sample, a slide's barcode not in the clinical
table); the reasons go to `dropped.tsv` and, counted, to the log. Feature files not in the
TRIDENT/CLAM layout or of another encoder than the rest, and too few usable patients for the
folds, stop the step with an error naming the file or cohort.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import h5py
import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.survival.barcodes import normal_slide
from tissuekd.survival.clinical import read_clinical
from tissuekd.survival.layout import coords_attrs, patch_geometry
from tissuekd.survival.rna import complete_genes

log = logging.getLogger(__name__)


LOGGED_DROPS = 20  # dropped patients logged one by one; the rest are counted (a pan-cancer table: ~11,000)


@dataclass
class Drops:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (patient, slide, reason)

    def add(self, patient: str, reason: str, slide: str = "") -> None:
        self.rows.append((patient, slide, reason))
        if len(self.rows) <= LOGGED_DROPS:
            log.warning("dropped %s%s: %s", f"slide {slide} of " if slide else "", f"patient {patient}", reason)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["patient", "slide", "reason"])

    def summary(self, examples: bool = False) -> str:
        """Counts per reason ("2 patients, no survival time…; 3 slides of 2 patients, barcode not in
        the clinical table; …"), `examples`: with one each."""
        parts = []
        for reason, rows in self.table().groupby("reason", sort=False):
            example = rows["slide"].iloc[0] or rows["patient"].iloc[0]
            patients = rows["patient"].nunique()
            count = f"{patients} patient{'s' * (patients != 1)}"
            if rows["slide"].ne("").any():  # a reason given per slide
                count = f"{len(rows)} slide{'s' * (len(rows) != 1)} of {count}"
            parts.append((len(rows), f"{count}, {reason}" + (f" (e.g. {example})" if examples else "")))
        return "; ".join(part for _, part in sorted(parts, key=lambda p: -p[0])) or "none"


class FeatureFile(NamedTuple):
    patches: int
    width: int
    encoder: str  # the file's `encoder` attribute ("" where it names none: CLAM's files)


def read_layout(path: str) -> FeatureFile:
    """Rows, width and stated encoder of a features file; checks the TRIDENT/CLAM layout
    (`features` 2-D, `coords` (n, 2)) and, where `coords` carries patch geometry (TRIDENT's
    magnifications or our mpp; CLAM's feature files carry none), that it is usable
    (layout.patch_geometry)."""
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5 or "coords" not in h5:
                raise InputError(path, f"a features file needs datasets `features` and `coords`; has {list(h5)}")
            for key in ("features", "coords"):
                if not isinstance(h5[key], h5py.Dataset):
                    raise InputError(path, f"`{key}` is a group (holding {list(h5[key])[:5]}), expected an array")
            features, shape = h5["features"].shape, h5["coords"].shape
            attrs = coords_attrs(h5)
            encoder = h5.attrs.get("encoder", h5["features"].attrs.get("encoder", ""))
    except OSError as err:
        raise InputError(path, f"not a readable HDF5 file: {err}") from None
    if len(features) != 2:  # e.g. (1, n, d), a batch axis left in by some extractors
        raise InputError(path, f"`features` has shape {features}, expected (patches, dim)")
    n = features[0]
    if len(shape) != 2 or shape[0] != n or (n and shape[1] != 2):
        raise InputError(path, f"`coords` has shape {shape}, expected ({n}, 2)")
    patch_geometry(attrs, path, required=False)
    return FeatureFile(n, features[1], encoder.decode() if isinstance(encoder, bytes) else str(encoder))


def count_patches(path: str) -> int:
    """Rows of a features file (read_layout's checks)."""
    return read_layout(path).patches


def require_one_encoder(files: list[str], layouts: list[FeatureFile]) -> None:
    """A cohort's slides must carry features of one encoder: one width, and at most one stated
    encoder name; the odd file is named (mixed files failed inside the models, naming none). A
    slide without tissue has no rows, so it states no width (ours: 0)."""
    widths = [f.width if f.patches else "" for f in layouts]
    for what, values in (("width", widths), ("encoder", [f.encoder for f in layouts])):
        stated = [v for v in values if v != ""]
        if len(set(stated)) > 1:
            usual = max(stated, key=stated.count)  # ties: the first slide's
            odd = next(i for i, v in enumerate(values) if v != "" and v != usual)
            raise InputError(files[odd], f"features of {what} {values[odd]!r}, where the cohort's other slides' "
                                         f"are {usual!r} (e.g. {files[values.index(usual)]}): a cohort's slides "
                                         "need features of one encoder")


def build_cohort(slides: pd.DataFrame, clinical: pd.DataFrame, rna: pd.DataFrame | None, *, folds: int, seed: int,
                 cross_validate: bool, drops: Drops) -> pd.DataFrame:
    """The cohort's usable patients, one row each; every patient or slide left out goes to
    `drops` with its reason.

    Parameters
    ----------
    slides : pandas.DataFrame
        One row per slide: `slide`, `patient`, `features` (its feature file), `n_patches` (0: no tissue).
    clinical : pandas.DataFrame
        `time` and `event` indexed by patient (read_clinical); NaN where the endpoint is missing.
    rna : pandas.DataFrame or None
        Patients x genes (read_rna); None: no RNA is required.
    folds : int
        Number of cross-validation folds (of patients, stratified by event).
    seed : int
        Seed of the fold assignment.
    cross_validate : bool
        Assign folds; False gives fold -1 (a cohort only evaluated on, never trained on).
    drops : Drops
        Collects the dropped patients and slides (appended to).

    Returns
    -------
    pandas.DataFrame
        patient, time, event, fold (-1 without cross-validation), slides, features (`;`-joined).
    """
    normal = np.array([normal_slide(str(r.slide), str(r.patient)) for r in slides.itertuples()], bool)
    for row, is_normal in zip(slides.itertuples(), normal):
        if row.patient not in clinical.index:
            drops.add(row.patient, "barcode not in the clinical table", row.slide)
        elif is_normal:
            drops.add(row.patient, "normal-tissue slide (TCGA sample type 10-29), not used", row.slide)
        elif row.n_patches == 0:
            drops.add(row.patient, "no tissue found on the slide", row.slide)
    usable = slides[slides["patient"].isin(clinical.index) & (slides["n_patches"] > 0) & ~normal]
    with_slides = set(usable["patient"])
    only_normal = pd.Series(normal, index=slides["patient"]).groupby(level=0).all()
    for patient in clinical.index:
        if patient not in with_slides:
            reason = ("no slide in the sheet" if patient not in only_normal.index
                      else "only normal-tissue slides" if only_normal[patient] else "no slide with tissue")
            drops.add(patient, reason)
    table = clinical.loc[sorted(with_slides)].copy()
    no_survival = table.index[table["time"].isna() | table["event"].isna()]
    for patient in no_survival:
        drops.add(patient, "no survival time or status for the endpoint")
    table = table.drop(no_survival)
    if rna is not None:
        for patient in table.index.difference(rna.index):
            drops.add(patient, "no tumour RNA sample in the matrix (normal-tissue samples are not used)")
        table = table.loc[table.index.intersection(rna.index)]
    grouped = usable.groupby("patient")
    table["slides"] = grouped["slide"].agg(";".join).reindex(table.index)
    table["features"] = grouped["features"].agg(";".join).reindex(table.index)
    table["event"] = table["event"].astype(int)
    table["fold"] = assign_folds(table["event"].to_numpy(), folds, seed) if cross_validate else -1
    return table.rename_axis("patient").reset_index()


def assign_folds(events: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Patient-level folds stratified by event, fixed by the seed: the same for every model."""
    if len(events) < 2 * folds or min(events.sum(), (1 - events).sum()) < folds:
        raise InputError("cohort", f"{len(events)} usable patients ({events.sum()} events, "
                                   f"{len(events) - events.sum()} censored) are too few for {folds}-fold "
                                   f"cross-validation, which needs at least {folds} of each")
    from sklearn.model_selection import StratifiedKFold  # here: the workflow's planning imports this module

    fold = np.empty(len(events), dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(events)), events)):
        fold[test] = k
    return fold


def prepare_cohort(name: str, slides: pd.DataFrame, clinical: str, rna: str | None, *, endpoint: str, folds: int,
                   seed: int, cross_validate: bool, out_patients: str, out_rna: str, out_dropped: str) -> None:
    """The rule survival_cohort: patients.tsv (usable patients with fold and feature files),
    rna.parquet, dropped.tsv. Here rather than in steps.py so that the rule imports no torch.

    Parameters
    ----------
    name : str
        The cohort's name, in messages.
    slides : pandas.DataFrame
        The cohort's slides: `slide`, `patient` and `features` (the slide's feature file).
    clinical : str
        TCGA-CDR-style table (CSV or TSV): `bcr_patient_barcode`, `{endpoint}` (1 event, 0 censored) and
        `{endpoint}.time` (days in TCGA-CDR).
    rna : str or None
        The cohort's RNA as `write_cohort_rna` wrote it (read from a matrix keyed by sample or
        patient barcode, or a GDC download); None: the cohort has no RNA.
    endpoint : str
        The survival endpoint's column, e.g. "OS", "DSS" or "PFI".
    folds : int
        Number of cross-validation folds (of patients, stratified by event).
    seed : int
        Seed of the fold assignment.
    cross_validate : bool
        Assign folds; False gives fold -1 (a cohort only evaluated on).
    out_patients : str
        patients.tsv written: patient, time, event, fold, slides, features.
    out_rna : str
        rna.parquet written: patients x genes, float32, in patients.tsv's order (no columns without RNA).
    out_dropped : str
        dropped.tsv written: patient, slide, reason.
    """
    table = read_clinical(clinical, endpoint)
    matrix = pd.read_parquet(rna).astype("float64") if rna else None
    layouts = [read_layout(p) for p in slides["features"]]
    require_one_encoder(list(slides["features"]), layouts)
    slides = slides.assign(n_patches=[f.patches for f in layouts])
    drops = Drops()
    try:
        patients = build_cohort(slides, table, matrix, folds=folds, seed=seed,
                                cross_validate=cross_validate, drops=drops)
    except InputError as err:  # too few patients: say why the others were dropped
        raise InputError(f"cohort {name}", f"{err.problem}; dropped: {drops.summary(examples=True)}") from None
    log.info("cohort %s: %d usable patients, %d events, %d dropped (%s; see %s)", name, len(patients),
             patients["event"].sum(), len(drops.rows), drops.summary(), out_dropped)
    with atomic_path(out_dropped) as tmp:
        drops.table().to_csv(tmp, sep="\t", index=False)
    matrix = complete_genes(matrix.loc[patients["patient"]], rna) if matrix is not None \
        else pd.DataFrame(index=patients["patient"])
    with atomic_path(out_rna) as tmp:
        matrix.astype("float32").to_parquet(tmp)
    with atomic_path(out_patients) as tmp:
        patients.to_csv(tmp, sep="\t", index=False)
