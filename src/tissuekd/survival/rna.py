"""A cohort's RNA: patients x genes from a matrix keyed by sample or patient barcode (either
orientation; TCGA PanCan, STAR or any log-scale matrix) or a GDC download's sample sheet, and
gene sets (GMT) as column indices of that matrix.

Gene ids are made comparable across sources (Ensembl versions dropped, PanCan's SYMBOL|ENTREZ
read as symbols), linear values log-scaled; malformed matrices (text for numbers, repeated
genes or samples, no label matching the cohort) stop the step with an error naming the file.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.delimited import header_separator
from tissuekd.survival import gdc
from tissuekd.survival.barcodes import patient_of, sample_rank

log = logging.getLogger(__name__)

ENSEMBL_VERSIONED = re.compile(r"^(ENS[A-Z]*G\d{11})\.\d+$")  # GENCODE gene ids with their version
PANCAN_ID = re.compile(r"^([^|]*)\|[^|]+$")  # TCGA PanCan gene ids: SYMBOL|ENTREZ (`?` without a symbol)


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


def write_cohort_rna(rna: str, patients: set[str], star_value: str, out: str) -> None:
    """The rule survival_rna: `read_rna` of the cohort's slides' patients, written as parquet
    (patients x genes, float32, NaN where a gene is missing for a patient), once per cohort."""
    matrix = read_rna(rna, patients, star_value)
    log.info("%s: %d of the cohort's %d patients with RNA, %d genes", rna, len(matrix), len(patients), matrix.shape[1])
    with atomic_path(out) as tmp:
        matrix.astype("float32").to_parquet(tmp)
