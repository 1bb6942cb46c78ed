"""A cohort's RNA from a GDC download at two sizes: the sample sheet and one STAR gene-count file
per patient (60,660 GENCODE v36 rows each, as GDC's), read as the `survival_cohort` job reads
it (`read_rna`), in a fresh process per size; prints wall time, peak RSS, their growth, the memory
each further file costs and what the rule asks (`cohort_mem_mb`).

    python -m tissuekd.bench.gdc [--patients 100 400] [--workdir results/bench_gdc]

A TCGA cohort is up to ~1,100 patients (BRCA). Files are written by repeating a few distinct
value blocks, so writing is quick; reading does the same work as on distinct files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tissuekd.bench.scale import measured
from tissuekd.survival.gdc import STAR_FILE_MB

GENES = 60_660  # GENCODE v36, as in GDC's STAR files
BLOCKS = 8  # distinct value blocks cycled over the files


def star_text(seed: int) -> str:
    """One STAR gene-count file: comment, header, read summaries, GENES rows (some names shared)."""
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(2, 0.01, GENES)
    tpm = counts / counts.sum() * 1e6
    lines = ["# gene-model: GENCODE v36",
             "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\t"
             "fpkm_unstranded\tfpkm_uq_unstranded"]
    lines += [f"{name}\t\t\t{n}\t{n}\t{n}\t\t\t" for name, n in
              zip(("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous"), rng.integers(1e6, 1e7, 4))]
    lines += [f"ENSG{j:011d}.{j % 9 + 1}\tGENE{j // 2 if j % 50 == 0 else j}\tprotein_coding\t{c}\t{c // 2}\t"
              f"{c - c // 2}\t{t:.4f}\t{t / 3:.4f}\t{t / 2:.4f}" for j, (c, t) in enumerate(zip(counts, tpm))]
    return "\n".join(lines) + "\n"


def write_download(folder: Path, patients: int) -> Path:
    """The sample sheet and `<File ID>/<File Name>` STAR files of `patients` tumour samples."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [star_text(seed) for seed in range(BLOCKS)]
    rows = ["File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type"]
    for i in range(patients):
        file_id, name = f"file-{i:05d}", f"s{i:05d}.rna_seq.augmented_star_gene_counts.tsv"
        (folder / file_id).mkdir(exist_ok=True)
        (folder / file_id / name).write_text(blocks[i % BLOCKS])
        rows.append(f"{file_id}\t{name}\tTranscriptome Profiling\tGene Expression Quantification\tTCGA-BM\t"
                    f"TCGA-BM-{i:04d}\tTCGA-BM-{i:04d}-01A\tPrimary Tumor")
    sheet = folder / "gdc_sample_sheet.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def read_step(sheet: str, patients: int) -> None:
    from tissuekd.survival.rna import read_rna

    rna = read_rna(sheet, {f"TCGA-BM-{i:04d}" for i in range(patients)})
    assert rna.shape[0] == patients, rna.shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench_gdc"))
    parser.add_argument("--patients", type=int, nargs=2, default=[100, 400])
    args = parser.parse_args(argv)
    rows = []
    for n in args.patients:
        sheet = write_download(args.workdir / f"p{n}", n)
        rows.append(measured(f"read_step({str(sheet)!r}, {n})", module="tissuekd.bench.gdc"))
        print(f"    {n} patients: {rows[-1][0]:.1f} s, {rows[-1][1]:.0f} MB peak", flush=True)
    (s0, m0), (s1, m1) = rows
    (n0, n1) = args.patients
    slope = (m1 - m0) / (n1 - n0)
    print(f"GDC download read (read_rna, {GENES:,d} genes per STAR file):")
    print(f"    x{n1 / n0:.1f} patients: {(s1 / n1) / (s0 / n0):.2f}x time per file, {m1 / m0:.2f}x memory; "
          f"{slope:.2f} MB per further file (the rule asks {STAR_FILE_MB} MB per file + 2,000 MB: "
          f"{2000 + STAR_FILE_MB * n1:,.0f} MB at {n1} against {m1:,.0f} MB used)")


if __name__ == "__main__":
    main()
