"""A GDC portal download: the cart's sample sheet, one STAR file per RNA-seq sample, the slides.

The sample sheet (`gdc_sample_sheet.<date>.tsv`) lists the cart's files: `File ID`, `File Name`,
…, `Case ID`, `Sample ID` (e.g. TCGA-73-4658-01A), …. gdc-client and the portal's tarball put
each file at `<File ID>/<File Name>`; a flat folder (`<File Name>` beside the sheet) is read too.
A STAR gene-count file (`*.rna_seq.augmented_star_gene_counts.tsv`) holds one sample: a
`# gene-model: GENCODE v36` line, the header `gene_id gene_name gene_type unstranded
stranded_first stranded_second tpm_unstranded fpkm_unstranded fpkm_uq_unstranded`, STAR's four
read summaries (N_unmapped, …), then one row per GENCODE gene. Genes are named by `gene_name`
(so that MSigDB-style gene sets match, as for PanCan's symbols); ids sharing a name are averaged,
and the `_PAR_Y` copies of pseudo-autosomal genes (all zero) are dropped.

The same cart's slides become rows of the survival slide sheet with

    python -m tissuekd.survival.gdc gdc_sample_sheet.<date>.tsv --cohort TCGA-LUAD [--slides-dir DIR] [--all]

(diagnostic slides, `-DX`, only, unless --all: TCGA's frozen-section slides, `-TS`/`-BS`, differ in look).

Its clinical download (`clinical.tsv`, read by survival.clinical) unpacks beside `follow_up.tsv`,
the cases' later contacts; where that file lies beside the clinical table it is read too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.delimited import header_separator
from tissuekd.logs import log_progress
from tissuekd.survival.barcodes import patient_of

log = logging.getLogger(__name__)

SHEET_STARTS = tuple(f"File ID{sep}File Name" for sep in "\t,;")  # as downloaded; re-saved as CSV
SHEET_COLUMNS = ("File ID", "File Name", "Case ID", "Sample ID")
TISSUE_COLUMNS = ("Tissue Type", "Sample Type")  # today's sheets ("Tumor", "Normal"); older ones
STAR_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
STAR_DEFAULT = "tpm_unstranded"  # depth-normalised; chosen a priori (config survival.star_value)
STAR_FILE_MB = 2.0  # memory the cohort job asks per STAR file (measured ~1 MB: python -m tissuekd.bench.gdc)


FOLLOW_UP_FILE = "follow_up.tsv"  # the clinical download's later contacts, one row per case and follow-up


def follow_up_table(clinical: str | Path) -> Path | None:
    """GDC's `follow_up.tsv` where it lies beside the clinical table, as the portal's clinical
    download unpacks them: read for later contacts, and an input of the cohort step."""
    path = Path(clinical).parent / FOLLOW_UP_FILE
    return path if path.name != Path(clinical).name and path.is_file() else None


def is_sample_sheet(path: str | Path) -> bool:
    """Whether `path` is a GDC sample sheet (its first line starts `File ID<sep>File Name`)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return fh.readline().startswith(SHEET_STARTS)
    except OSError:
        return False


def read_sheet(sheet: str | Path) -> pd.DataFrame:
    table = pd.read_csv(sheet, sep=header_separator(sheet), dtype=str, encoding="utf-8-sig").fillna("")
    absent = [c for c in SHEET_COLUMNS if c not in table.columns]
    if absent:
        raise InputError(sheet, f"a GDC sample sheet without column(s) {absent}")
    return table


def star_files(sheet: str | Path) -> pd.DataFrame:
    """`sample` (Sample ID), `case` (Case ID), `tissue` (Tissue Type, or the older Sample Type)
    and `path` of every STAR gene-count file the sheet lists; the cart's other files (slides,
    clinical XML) are skipped. Missing files are one error."""
    table = read_sheet(sheet)
    star = table[table["File Name"].str.endswith(STAR_SUFFIX)]
    if star.empty:
        raise InputError(sheet, f"lists no STAR gene-count file (*{STAR_SUFFIX}) among its {len(table)} "
                                "file(s): add the cohort's RNA-seq (Gene Expression Quantification) to the cart")
    shared = star[star["Sample ID"].str.contains(",")]
    if len(shared):
        raise InputError(sheet, f"STAR file(s) listed for several samples, e.g. {shared['File Name'].iloc[0]}: "
                                f"{shared['Sample ID'].iloc[0]}")
    paths = _located(sheet, star, Path(sheet).parent, "STAR file")
    tissue = next((star[c] for c in TISSUE_COLUMNS if c in star.columns), pd.Series("", index=star.index))
    return pd.DataFrame({"sample": star["Sample ID"].str.strip().to_numpy(),
                         "case": star["Case ID"].str.strip().to_numpy(), "tissue": tissue.to_numpy(), "path": paths})


def _located(sheet: str | Path, rows: pd.DataFrame, folder: Path, what: str) -> list[str]:
    """Each row's file, absolute (a sheet written from it works from any folder), at
    `<folder>/<File ID>/<File Name>` or `<folder>/<File Name>`; files not found are one error."""
    paths, missing = [], []
    for file_id, name in zip(rows["File ID"], rows["File Name"]):
        found = next((p for p in (folder / file_id / name, folder / name) if p.is_file()), None)
        paths.append(str(found.absolute()) if found else "")
        if found is None:
            missing.append(f"{file_id}/{name}")
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InputError(sheet, f"{len(missing)} of its {len(rows)} {what}s {verb} in neither {folder}/<File ID>/"
                                f"<File Name> (gdc-client's layout) nor {folder}/<File Name>, e.g. {missing[:3]}")
    return paths


def read_star(path: str, value: str = STAR_DEFAULT) -> pd.Series:
    """One sample's `value` column per gene name (STAR's read summaries and `_PAR_Y` ids dropped,
    ids sharing a name averaged). A file cut short (an interrupted download: its last line has no
    end) is an error; one cut at a line's end is caught by `read_download`."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(fh.tell() - 1, 0))
        if fh.read(1) != b"\n":
            raise InputError(path, "does not end with a line break: cut short (an interrupted download?)")
    try:
        table = pd.read_csv(path, sep="\t", comment="#", dtype={"gene_id": str, "gene_name": str})
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(path, f"not a readable GDC STAR gene-count table ({err})") from None
    absent = [c for c in ("gene_id", "gene_name", value) if c not in table.columns]
    if absent:
        raise InputError(path, f"not a GDC STAR gene-count table: no column(s) {absent} "
                               f"(has {table.columns.tolist()[:9]})")
    genes = table[~table["gene_id"].str.startswith("N_") & ~table["gene_id"].str.endswith("_PAR_Y")]
    values = pd.to_numeric(genes[value], errors="coerce")
    if values.isna().any():
        raise InputError(path, f"column {value}: {int(values.isna().sum())} gene(s) without a number, "
                               f"e.g. {genes.loc[values.isna(), 'gene_id'].iloc[0]}")
    names = genes["gene_name"].fillna(genes["gene_id"]).to_numpy()
    return values.groupby(names, sort=False).mean().astype(np.float32)


def _require_whole(path: str, genes: pd.Index, first: str, first_genes: pd.Index) -> None:
    """Neither file's genes a leading part of the other's: a file cut at a line's end."""
    shorter, longer, name = (genes, first_genes, path) if len(genes) < len(first_genes) else \
        (first_genes, genes, first)
    if len(shorter) < len(longer) and longer[:len(shorter)].equals(shorter):
        raise InputError(name, f"its {len(shorter)} genes are the first of the {len(longer)} of another STAR file "
                               f"of the cart: cut short (an interrupted download?)")


def _keyed(files: pd.DataFrame, patients: set[str]) -> pd.DataFrame:
    """Each file's patient (from its TCGA-style Sample ID, else its Case ID: CPTAC's sample ids
    do not start with the case) and the key it is read under: the Sample ID, or
    `<case>-<Sample ID>` where that does not start with the case (so `read_rna` maps it)."""
    by_sample = [patient_of(s, patients) for s in files["sample"]]
    patient = [p or (c if c in patients else None) for p, c in zip(by_sample, files["case"])]
    key = [s if p is not None else f"{c}-{s}" for s, p, c in zip(files["sample"], by_sample, files["case"])]
    return files.assign(patient=patient, key=key)


def read_download(sheet: str, patients: set[str], value: str = "") -> pd.DataFrame:
    """Samples x genes of the sheet's STAR files of `patients` (`_keyed`; the others, and those
    of normal tissue, are not read); `value`: their column ("": STAR_DEFAULT); a sample with
    several files (aliquots) gets their mean."""
    value = value or STAR_DEFAULT
    files = _keyed(star_files(sheet), patients)
    mine = files[files["patient"].notna()]
    if mine.empty:
        raise InputError(sheet, f"no Sample ID or Case ID of its {len(files)} STAR files is a patient of the cohort "
                                f"(e.g. {files['sample'].iloc[0]} vs {sorted(patients)[:3]})")
    normal = mine["tissue"].str.lower().str.contains("normal")
    if normal.any():
        log.info("%s: %d STAR file(s) of normal tissue not read (e.g. %s)", sheet, int(normal.sum()),
                 mine.loc[normal, "sample"].iloc[0])
        mine = mine[~normal]
    log.info("%s: reading %s of %d STAR files (those of the cohort's patients)", sheet, len(mine), len(files))
    genes, values, other = None, None, []
    for row, path in enumerate(mine["path"]):
        sample = read_star(path, value)
        if genes is None:  # one float32 row per file, on the first file's genes (not an index per file)
            genes, values = sample.index, np.full((len(mine), len(sample)), np.nan, dtype=np.float32)
        elif not sample.index.equals(genes):
            _require_whole(path, sample.index, mine["path"].iloc[0], genes)
            other.append(path)
            sample = sample.reindex(genes)
        values[row] = sample.to_numpy()
        log_progress(log, "STAR files read", row + 1, len(mine))
    if other:  # its genes missing elsewhere are then dropped for the cohort (complete_genes)
        log.warning("%s: %d STAR file(s) list genes other than %s's (another GENCODE release?), read on its "
                    "genes: %s", sheet, len(other), mine["path"].iloc[0], other[:3])
    matrix = pd.DataFrame(values, index=pd.Index(mine["key"].to_numpy(), name="sample"), columns=genes)
    repeated = matrix.index[matrix.index.duplicated()].unique()
    if len(repeated):
        log.warning("%s: %d sample(s) with several STAR files (aliquots), their mean used: %s", sheet,
                    len(repeated), repeated[:5].tolist())
        matrix = matrix.groupby(level=0, sort=False).mean()
    log.info("%s: %s of %d samples x %d genes", sheet, value, *matrix.shape)
    return matrix


def slide_rows(sheet: str | Path, cohort: str, slides_dir: str | Path | None = None,
               every: bool = False) -> pd.DataFrame:
    """Rows of the survival slide sheet for the sheet's slides (`.svs`): slide (the file name's
    barcode part), cohort, patient (Case ID), image; diagnostic slides only unless `every`."""
    table = read_sheet(sheet)
    slides = table[table["File Name"].str.lower().str.endswith(".svs")]
    if not every:
        slides = slides[slides["File Name"].str.split(".").str[0].str.contains("-DX")]
    if slides.empty:
        raise InputError(sheet, f"lists no {'' if every else 'diagnostic (-DX) '}slide (.svs) among its "
                                f"{len(table)} file(s)")
    images = _located(sheet, slides, Path(slides_dir) if slides_dir else Path(sheet).parent, "slide")
    return pd.DataFrame({"slide": slides["File Name"].str.split(".").str[0].to_numpy(), "cohort": cohort,
                         "patient": slides["Case ID"].str.strip().to_numpy(), "image": images, "mpp": "",
                         "features": ""})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Survival slide-sheet rows (TSV, to stdout) for the slides of "
                                                 "a GDC cart, from its sample sheet.")
    parser.add_argument("sheet", help="gdc_sample_sheet.<date>.tsv")
    parser.add_argument("--cohort", required=True, help="the cohort's name in the cohort sheet")
    parser.add_argument("--slides-dir", help="where gdc-client put the slides (default: the sheet's folder)")
    parser.add_argument("--all", action="store_true", help="frozen-section slides (-TS, -BS) too")
    parser.add_argument("--no-header", action="store_true", help="rows only, to append to a sheet")
    args = parser.parse_args(argv)
    try:
        rows = slide_rows(args.sheet, args.cohort, args.slides_dir, args.all)
    except InputError as err:
        sys.exit(f"tissuekd: bad input: {err}")
    rows.to_csv(sys.stdout, sep="\t", index=False, header=not args.no_header)


if __name__ == "__main__":
    main()
