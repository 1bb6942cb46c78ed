"""One cohort's patients: survival from a TCGA-CDR-style table, RNA from a matrix keyed by
barcode, slides with features from the sheet, and patient-level cross-validation folds.

Patients that cannot be used are dropped with a reason (no slide, no tissue on any slide,
no survival for the endpoint, no tumour RNA sample, a slide's barcode not in the clinical
table); the reasons go to `dropped.tsv` and, counted, to the log. Tables that are malformed
(missing columns, negative or unreadable times, repeated gene ids, an RNA matrix that matches
no barcode) stop the step with an error naming the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.delimited import header_separator
from tissuekd.survival import gdc
from tissuekd.survival.barcodes import normal_slide, patient_of, sample_rank
from tissuekd.survival.layout import coords_attrs, patch_geometry

log = logging.getLogger(__name__)

# how TCGA-CDR, the GDC portal ('--) and spreadsheets write a missing value: [Not Available], #N/A, NA, ...
MISSING = r"\[.*\]|#N/A|N/?A|NaN|null|none|'?--|"
ENSEMBL_VERSIONED = re.compile(r"^(ENS[A-Z]*G\d{11})\.\d+$")  # GENCODE gene ids with their version
PANCAN_ID = re.compile(r"^([^|]*)\|[^|]+$")  # TCGA PanCan gene ids: SYMBOL|ENTREZ (`?` without a symbol)


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


def read_clinical(path: str, endpoint: str) -> pd.DataFrame:
    """patient, time, event for `endpoint` (e.g. OS -> columns OS and OS.time; a GDC clinical
    table: `_gdc_overall_survival`); rows without both values are kept with NaN (dropped later,
    by name); negative times are an error."""
    return _survival(_clinical_table(path), path, endpoint)


def _survival(table: pd.DataFrame, path: str, endpoint: str) -> pd.DataFrame:
    """read_clinical's work on the table as read."""
    table = table.loc[:, ~table.columns.astype(str).str.startswith("Unnamed")]
    require_endpoint(table.columns, path, endpoint)
    if _is_gdc(table.columns):
        table = _gdc_overall_survival(table, path)
    blank = table["bcr_patient_barcode"].fillna("").str.strip() == ""
    if blank.any():  # e.g. trailing rows of commas from a spreadsheet export
        log.info("%s: %d row(s) without a bcr_patient_barcode skipped", path, int(blank.sum()))
        table = table[~blank]
    patient = table["bcr_patient_barcode"].str.strip()
    out = pd.DataFrame({
        "patient": patient,
        "time": _numbers(table[f"{endpoint}.time"], patient, path),
        "event": _numbers(table[endpoint], patient, path),
    })
    dupes = out["patient"][out["patient"].duplicated()].unique().tolist()
    if dupes:
        raise InputError(path, f"patient(s) listed twice: {dupes[:10]}")
    negative = out.loc[(out["time"] < 0) | np.isinf(out["time"]), "patient"].tolist()
    if negative:
        raise InputError(path, f"negative or infinite {endpoint}.time for patient(s) {negative[:10]}")
    bad_event = out.loc[out["event"].notna() & ~out["event"].isin([0, 1]), "patient"].tolist()
    if bad_event:
        raise InputError(path, f"{endpoint} must be 0 (censored) or 1 (event); not so for {bad_event[:10]}")
    return out.set_index("patient")


# GDC's clinical.tsv: portal v2 names (entity.field) first, then the older export's
GDC_CASE = ("cases.submitter_id", "case_submitter_id")
GDC_FIELDS = {"vital": ("demographic.vital_status", "vital_status"),
              "death": ("demographic.days_to_death", "days_to_death"),
              "follow_up": ("diagnoses.days_to_last_follow_up", "days_to_last_follow_up")}
GDC_FOLLOW_UP_DAYS = ("follow_ups.days_to_follow_up", "days_to_follow_up")  # of follow_up.tsv (gdc.follow_up_table)


def _gdc_case_column(columns) -> str | None:
    return next((c for c in GDC_CASE if c in columns), None)


def _is_gdc(columns) -> bool:
    return "bcr_patient_barcode" not in columns and _gdc_case_column(columns) is not None


def require_endpoint(columns, path: str, endpoint: str) -> None:
    """The clinical table has what `endpoint` needs (checked while planning and when read):
    TCGA-CDR's barcode and endpoint columns, or GDC's case and vital-status columns for OS."""
    columns = list(columns)
    if not _is_gdc(columns):
        missing = [c for c in ("bcr_patient_barcode", endpoint, f"{endpoint}.time") if c not in columns]
        if missing:
            raise InputError(path, f"missing column(s) {missing} for endpoint {endpoint} (a TCGA-CDR table has "
                                   f"bcr_patient_barcode, OS, OS.time, DSS, DSS.time, PFI, PFI.time; GDC's "
                                   f"clinical.tsv has cases.submitter_id, vital_status, days_to_death, …)")
        return
    if endpoint != "OS":
        raise InputError(path, f"a GDC clinical table gives overall survival only (vital status, days to death or "
                               f"last follow-up): endpoint {endpoint} needs TCGA-CDR's columns")
    fields = dict(GDC_FIELDS)
    if gdc.follow_up_table(path) is not None:  # follow-up days may come from there alone
        fields.pop("follow_up")
    absent = [names[0] for names in fields.values() if not any(c in columns for c in names)]
    if absent:
        raise InputError(path, f"a GDC clinical table without {absent} (or their older names without the prefix)")


def _gdc_overall_survival(table: pd.DataFrame, path: str) -> pd.DataFrame:
    """GDC's clinical.tsv (one row per case and diagnosis or treatment) as TCGA-CDR's OS columns:
    dead at days_to_death, else censored at the last contact: the longest days_to_last_follow_up
    of a case's rows or, where `follow_up.tsv` lies beside it, of its follow-ups' days_to_follow_up,
    whichever is later. A vital status neither Alive nor Dead (Not Reported, '--) leaves the case
    without survival. GDC gives no DSS, DFI or PFI: those are TCGA-CDR's curation."""
    columns = {key: next((c for c in names if c in table.columns), None) for key, names in GDC_FIELDS.items()}
    case = table[_gdc_case_column(table.columns)].fillna("").astype(str).str.strip()  # blank: skipped below
    vital = table[columns["vital"]].fillna("").astype(str).str.strip().str.lower()
    follow_up = (_numbers(table[columns["follow_up"]], case, path) if columns["follow_up"]
                 else pd.Series(np.nan, index=table.index))
    per_row = pd.DataFrame({"case": case, "event": vital.map({"dead": 1.0, "alive": 0.0}),
                            "death": _numbers(table[columns["death"]], case, path), "follow_up": follow_up})
    cases = per_row.groupby("case", sort=False).max()
    log.info("%s: GDC clinical table, %d rows of %d cases: OS from vital status, days to death (Dead) or to "
             "last follow-up (Alive), the longest of each case's rows", path, len(table), len(cases))
    later = gdc.follow_up_table(path)
    if later is not None:
        cases["follow_up"] = _later_contact(cases, later)
    return pd.DataFrame({"bcr_patient_barcode": cases.index, "OS": cases["event"].to_numpy(),
                         "OS.time": np.where(cases["event"] == 1, cases["death"], cases["follow_up"])})


def _later_contact(cases: pd.DataFrame, path: Path) -> pd.Series:
    """Each case's last contact: its clinical follow-up or the longest days_to_follow_up of its rows
    in GDC's follow_up.tsv, whichever is later (logged: how many alive cases it moved)."""
    table = _clinical_table(str(path))
    case_column = _gdc_case_column(table.columns)
    days_column = next((c for c in GDC_FOLLOW_UP_DAYS if c in table.columns), None)
    if case_column is None or days_column is None:
        raise InputError(path, f"GDC's follow-up table needs {GDC_CASE[0]} and {GDC_FOLLOW_UP_DAYS[0]} "
                               f"(or their older names without the prefix)")
    case = table[case_column].fillna("").astype(str).str.strip()
    days = _numbers(table[days_column], case, str(path)).groupby(case).max().reindex(cases.index)
    latest = pd.concat([cases["follow_up"], days], axis=1).max(axis=1)
    alive = (cases["event"] == 0) & (cases.index != "")  # rows without a case are skipped later
    moved = alive & (latest > cases["follow_up"].fillna(-np.inf))
    log.info("%s: later follow-ups for %d of %d alive cases (%d without a follow-up in the clinical table)",
             path, int(moved.sum()), int(alive.sum()), int((moved & cases["follow_up"].isna()).sum()))
    return latest


XLSX, XLS = b"PK\x03\x04", b"\xd0\xcf\x11\xe0"  # a zip archive (.xlsx); the legacy .xls container


def _first_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def clinical_barcodes(path: str, cache_dir: str | None = None, endpoint: str | None = None) -> set[str] | None:
    """The patient barcodes of a clinical table, for checks while planning; None where the table
    has no bcr_patient_barcode nor GDC case id. With `endpoint`, the table is also read as the
    cohort job reads it (read_clinical), so that what it would refuse (the endpoint's columns
    missing, a patient listed twice, a negative time, text for a number) stops the plan. A
    workbook takes openpyxl seconds to parse (TCGA-CDR: ~2.5 s): with `cache_dir` its barcodes
    are kept there, per endpoint, until the file's size or modification time changes."""
    if cache_dir is None or not _first_bytes(path).startswith(XLSX):
        return _barcodes(path, endpoint)
    stat = Path(path).stat()
    stamp = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, endpoint]
    cached = Path(cache_dir) / f"{hashlib.sha1(stamp[0].encode()).hexdigest()}.json"
    try:
        kept = json.loads(cached.read_text())
        if kept["stamp"] == stamp:
            return None if kept["barcodes"] is None else set(kept["barcodes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    barcodes = _barcodes(path, endpoint)
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({"stamp": stamp, "barcodes": None if barcodes is None else sorted(barcodes)}))
    return barcodes


def _barcodes(path: str, endpoint: str | None) -> set[str] | None:
    table = _clinical_table(path)
    if endpoint is not None:  # what the cohort job would refuse, refused before any slide is encoded
        _survival(table, path, endpoint)
    columns = [str(c) for c in table.columns]
    column = "bcr_patient_barcode" if "bcr_patient_barcode" in columns else _gdc_case_column(columns)
    if column is None:
        return None
    return set(table[column].dropna().astype(str).str.strip())


def _clinical_table(path: str) -> pd.DataFrame:
    """The table as text: TSV or CSV (separator sniffed, a spreadsheet's UTF-8 BOM dropped), or
    TCGA-CDR as published, an Excel workbook (its first sheet, TCGA-CDR)."""
    magic = _first_bytes(path)
    if magic.startswith(XLS):
        raise InputError(path, "a legacy Excel .xls workbook: save it as .xlsx, TSV or CSV")
    try:
        if magic.startswith(XLSX):
            return pd.read_excel(path, sheet_name=0, dtype={"bcr_patient_barcode": str})
        return pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig",
                           dtype={"bcr_patient_barcode": str})
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error,
            zipfile.BadZipFile) as err:
        raise InputError(path, f"not a readable TSV, CSV or .xlsx table ({err})") from None


def _numbers(column: pd.Series, patient: pd.Series, path: str) -> pd.Series:
    """A column as numbers, its missing-value markers (`[Not Available]`, `#N/A`, `NA`, empty) as
    NaN; any other text (a typo such as `12O` or `1,234`) is an error naming the patients."""
    values = pd.to_numeric(column, errors="coerce").astype(float)  # float whatever the reader inferred
    text = column.astype(str).str.strip()
    bad = values.isna() & column.notna() & ~text.str.fullmatch(MISSING, case=False)
    if bad.any():
        shown = [f"{p}: {v!r}" for p, v in zip(patient[bad][:5], column[bad][:5])]
        raise InputError(path, f"column {column.name} has values that are neither numbers nor missing-value "
                               f"markers ({int(bad.sum())}, e.g. {', '.join(shown)})")
    return values


def read_rna(path: str, patients: set[str], star_value: str = "") -> pd.DataFrame:
    """Patients x genes, from a matrix keyed by barcode or a GDC download (its sample sheet; the
    STAR files' `star_value` column, "": the default). A matrix's orientation is detected from
    which axis holds the barcodes and logged; with several samples per patient the tumour sample
    (-01..-09) sorting first is used."""
    matrix = gdc.read_download(path, patients, star_value) if gdc.is_sample_sheet(path) \
        else _read_matrix(path, patients)
    matrix.index = matrix.index.astype(str)
    twice = matrix.index[matrix.index.duplicated()].unique().tolist()
    if twice:
        raise InputError(path, f"sample(s) listed twice: {twice[:10]}")
    owner = pd.Series({s: patient_of(s, patients) for s in matrix.index}).dropna()
    rank = [(sample_rank(s[len(p):]) if s != p else 0, s) for s, p in owner.items()]
    chosen = pd.DataFrame(rank, index=owner.index, columns=["rank", "sample"]).assign(patient=owner)
    chosen = chosen.sort_values(["rank", "sample"]).drop_duplicates("patient")
    normal_only = chosen.loc[chosen["rank"] == 2, "patient"].tolist()
    if normal_only:
        log.warning("%s: %d patient(s) have only normal-tissue or control samples (types 10-29), not used: %s",
                    path, len(normal_only), normal_only[:10])
    chosen = chosen[chosen["rank"] < 2]
    given = matrix.loc[chosen["sample"]]
    # a numeric frame (a GDC download's float32 rows, a numeric TSV) skips the column-by-column pass
    numeric = all(pd.api.types.is_numeric_dtype(t) for t in given.dtypes)
    out = given if numeric else given.apply(pd.to_numeric, errors="coerce")  # (.loc made a new frame)
    out.index = pd.Index(chosen["patient"].to_numpy(), name="patient")
    out.columns = out.columns.astype(str).rename("gene")
    # read_csv has already made NA, #N/A and '' NaN: what to_numeric made NaN besides was text
    if not numeric and (text := out.isna().to_numpy() & given.notna().to_numpy()).any():
        bad = out.columns[text.any(axis=0)].tolist()
        samples = out.index[text.any(axis=1)].tolist()
        raise InputError(path, f"non-numeric values in gene(s) {bad[:10]} (patient(s) {samples[:10]})")
    infinite = np.isinf(out.to_numpy())
    if infinite.any():  # log2(0) as -inf, or +inf: scaling would zero the gene, or take the matrix for linear
        raise InputError(path, f"infinite values in gene(s) {out.columns[infinite.any(axis=0)][:10].tolist()} "
                               f"(patient(s) {out.index[infinite.any(axis=1)][:10].tolist()}); give NA for a "
                               "missing value")
    out = _log_scale(_unversioned(_symbols(_without_star_summaries(out, path), path), path), path)
    empty = out.index[out.isna().all(axis=1)]
    if len(empty):  # a sample column of NAs: that patient has no RNA (dropped later, with the reason)
        log.warning("%s: %d patient(s) with no value at all, not used: %s", path, len(empty), empty[:10].tolist())
    return out.drop(index=empty)  # genes missing for some patients stay NaN: complete_genes, per cohort


def _read_matrix(path: str, patients: set[str]) -> pd.DataFrame:
    """Samples x genes of a matrix in either orientation (a repeated gene id is an error)."""
    sep = header_separator(path, fallback=r"\s+")  # tab, comma, semicolon or whitespace
    try:  # the C parser: a PanCan matrix is ~2e8 values; the labels as text (sample id 0123 is not 123)
        raw = pd.read_csv(path, sep=sep, index_col=0, dtype={0: str})
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(path, f"not a readable TSV or CSV matrix ({err})") from None
    raw, header = _without_blank_lines(raw, path, sep)
    if raw.empty:
        raise InputError(path, f"no values: {raw.shape[0]} row(s), {raw.shape[1]} column(s) besides the labels")
    by_columns = sum(patient_of(str(c), patients) is not None for c in raw.columns)
    by_rows = sum(patient_of(str(i), patients) is not None for i in raw.index)
    if max(by_columns, by_rows) == 0:
        raise InputError(path, f"no row or column label matches a patient barcode of the cohort "
                               f"(e.g. {sorted(patients)[:3]}); is this the cohort's RNA matrix?")
    matrix = raw.T if by_columns > by_rows else raw
    log.info("%s: %s (%d genes, %d samples); %d samples match a patient", path,
             "genes x samples" if by_columns > by_rows else "samples x genes", matrix.shape[1], matrix.shape[0],
             max(by_columns, by_rows))
    genes = header if by_columns <= by_rows else matrix.columns.astype(str)
    repeated = genes[genes.duplicated()].unique().tolist()
    if repeated:
        raise InputError(path, f"gene id(s) listed twice: {repeated[:10]}")
    return matrix


LINEAR_ABOVE = 50.0  # log2(TPM + 1) stays below ~20 (a million TPM); counts, RSEM and TPM exceed this


def _log_scale(rna: pd.DataFrame, path: str) -> pd.DataFrame:
    """Linear values (STAR counts, PanCan's RSEM, TPM: none negative, some above LINEAR_ABOVE)
    become log2(x + 1), logged: the models z-score each gene, which on linear values a few
    patients' outliers would dominate. Log-scale and centred matrices are used as given."""
    values = rna.to_numpy()
    top = np.nanmax(values) if np.isfinite(values).any() else 0.0
    if top <= LINEAR_ABOVE or np.nanmin(values) < 0:
        return rna
    log.info("%s: values up to %.4g look linear (counts, RSEM or TPM): used as log2(x + 1); give log-scale "
             "values to have them used as they are", path, top)
    return np.log2(rna + 1)


STAR_SUMMARIES = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")


def _without_star_summaries(rna: pd.DataFrame, path: str) -> pd.DataFrame:
    """GDC's STAR gene counts start with four read summaries (N_unmapped, …), not genes: a
    matrix built from them keeps those rows, which are dropped here (logged)."""
    summaries = rna.columns.intersection(STAR_SUMMARIES)
    if len(summaries):
        log.info("%s: STAR's read summaries %s are not genes: dropped", path, summaries.tolist())
    return rna.drop(columns=summaries)


def _unversioned(rna: pd.DataFrame, path: str) -> pd.DataFrame:
    """Ensembl ids without their version (ENSG00000141510.17 -> ENSG00000141510), so that cohorts
    quantified with different GENCODE releases (GDC's STAR matrices carry versions) share genes;
    ids that then coincide are averaged. Other matrices are returned unchanged."""
    names = _renamed(rna.columns, ENSEMBL_VERSIONED)
    if names is None:
        return rna
    out = _averaged(rna, names)
    log.info("%s: %d gene ids read as %d (Ensembl versions dropped, ids then shared averaged)", path, rna.shape[1],
             out.shape[1])
    return out


def _renamed(columns: pd.Index, pattern: re.Pattern) -> np.ndarray | None:
    """Each column's first group of `pattern` (the column itself where it does not match); None
    when fewer than half match: the matrix does not use that kind of id."""
    parts = columns.str.extract(pattern)[0]
    if parts.notna().mean() < 0.5:
        return None
    return parts.fillna(pd.Series(columns, index=parts.index)).to_numpy()


def _averaged(rna: pd.DataFrame, names: np.ndarray) -> pd.DataFrame:
    """Columns renamed to `names`, those that share a name averaged."""
    return rna.T.groupby(names, sort=False).mean().T.rename_axis(columns="gene")


def complete_genes(rna: pd.DataFrame, path: str) -> pd.DataFrame:
    """The genes measured in every patient of the cohort (PanCan matrices leave some NA); the
    others dropped and logged, since a model cannot be scaled or trained on a gene some patients
    lack. Called on the cohort's usable patients, so a patient without slides costs no gene."""
    missing = rna.columns[rna.isna().any()]
    if len(missing) == rna.shape[1]:
        raise InputError(path, f"every gene has missing values in some patient (e.g. {missing[:5].tolist()})")
    if len(missing):
        log.warning("%s: %d gene(s) with missing values in some patient dropped, e.g. %s", path, len(missing),
                    missing[:10].tolist())
    return rna.drop(columns=missing)


def _without_blank_lines(raw: pd.DataFrame, path: str, sep: str) -> tuple[pd.DataFrame, pd.Index]:
    """The matrix without a spreadsheet's empty trailing rows and columns (no label, no value:
    they read as a gene `nan` listed twice), and the kept columns' labels as written (pandas
    renames a repeated column `X` to `X.1`)."""
    first = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    written = pd.Index(first.iloc[0, 1:].astype(str).str.strip())
    rows = np.asarray(raw.index.isna() | (raw.index.astype(str).str.strip() == ""))
    rows[rows] = raw[rows].isna().all(axis=1).to_numpy()  # only unlabelled rows are looked at (PanCan: 2e8 values)
    columns = np.asarray(written == "") if len(written) == raw.shape[1] else np.zeros(raw.shape[1], bool)
    columns[columns] = raw.loc[:, columns].isna().all(axis=0).to_numpy()
    if rows.any() or columns.any():
        log.info("%s: %d empty row(s) and %d empty column(s) without a label skipped (a spreadsheet's)", path,
                 int(rows.sum()), int(columns.sum()))
    return raw.loc[~rows, ~columns], written[~columns]


def _symbols(rna: pd.DataFrame, path: str) -> pd.DataFrame:
    """TCGA PanCan columns (`TP53|7157`) renamed to their symbols, so that MSigDB-style gene sets
    match: ids without a symbol (`?|100130426`) dropped, ids sharing a symbol (`SLC35E2|728661`,
    `SLC35E2|9906`) averaged. Other matrices are returned unchanged."""
    symbol = _renamed(rna.columns, PANCAN_ID)
    if symbol is None:
        return rna
    keep = (symbol != "?") & (symbol != "")
    out = _averaged(rna.loc[:, keep], symbol[keep])
    log.info("%s: %d PanCan gene ids (SYMBOL|ENTREZ) read as %d symbols (%d without a symbol dropped, "
             "ids sharing a symbol averaged)", path, rna.shape[1], out.shape[1], int((~keep).sum()))
    return out


def read_gene_sets(path: str, genes: list[str]) -> dict[str, list[int]]:
    """GMT (name, description, genes..., tab-separated) -> column indices of the matrix's genes,
    each once, in the file's order; sets with no gene in the matrix are skipped (logged); none
    left is an error, and so is a line that is not tab-separated (a set would be lost, or every
    set, as no set sharing a gene) and a set named twice (the later would replace the earlier)."""
    where = {g: i for i, g in enumerate(genes)}
    sets, skipped = {}, set()
    for number, line in enumerate(_text_lines(path, "GMT"), 1):
        fields = line.rstrip("\r\n").split("\t")
        if not line.strip() or line.startswith("#"):
            continue
        if len(fields) < 3:
            raise InputError(path, f"line {number} has {len(fields)} tab-separated field(s), {line[:60]!r}: "
                                   "a GMT line is name<TAB>description<TAB>gene<TAB>gene...")
        if fields[0] in sets or fields[0] in skipped:
            raise InputError(path, f"line {number}: gene set {fields[0]!r} is named twice")
        members = list(dict.fromkeys(where[g] for g in fields[2:] if g in where))
        if members:
            sets[fields[0]] = members
        else:
            skipped.add(fields[0])
            log.warning("%s: gene set %s has no gene of the RNA matrix; skipped", path, fields[0])
    if not sets:
        raise InputError(path, f"no gene set shares a gene with the RNA matrix (its genes: e.g. {genes[:3]})")
    log.info("%s: %d gene sets, %d to %d genes of the RNA matrix each", path, len(sets),
             min(map(len, sets.values())), max(map(len, sets.values())))
    return sets


def _text_lines(path: str, kind: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except UnicodeDecodeError as err:
        raise InputError(path, f"not a UTF-8 text {kind} file ({err}); a gzipped one: unpack it") from None


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


def write_cohort_rna(rna: str, patients: set[str], star_value: str, out: str) -> None:
    """The rule survival_rna: `read_rna` of the cohort's slides' patients, written as parquet
    (patients x genes, float32, NaN where a gene is missing for a patient), once per cohort."""
    matrix = read_rna(rna, patients, star_value)
    log.info("%s: %d of the cohort's %d patients with RNA, %d genes", rna, len(matrix), len(patients), matrix.shape[1])
    with atomic_path(out) as tmp:
        matrix.astype("float32").to_parquet(tmp)


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
