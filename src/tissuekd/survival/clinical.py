"""A cohort's clinical table: survival for an endpoint, from TCGA-CDR's columns (a TSV, CSV or
its published .xlsx workbook) or a GDC portal clinical download (overall survival from vital
status, days to death and last follow-up, with `follow_up.tsv` where it lies beside it).

Malformed tables (missing columns, negative or unreadable times, a patient listed twice) stop
the step with an error naming the file; planning reads the table the same way
(`clinical_barcodes`), so what the cohort job would refuse stops the plan.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.survival import gdc

log = logging.getLogger(__name__)

# how TCGA-CDR, the GDC portal ('--) and spreadsheets write a missing value: [Not Available], #N/A, NA, ...
MISSING = r"\[.*\]|#N/A|N/?A|NaN|null|none|'?--|"


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
