"""Survival inputs: the demo slide as OpenSlide sees it, the tissue mask and patch grid, the
TCGA-CDR and RNA readers, and bad input stopped or dropped with the patient or slide named."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import as_gdc_download
from PIL import Image

from tissuekd.demo.survival import lymphoid_aggregates, make_cohort_tables, make_slide
from tissuekd.encoders.registry import EncoderSpec
from tissuekd.errors import InputError
from tissuekd.io.wsi import open_slide
from tissuekd.survival import clinical as clinical_module
from tissuekd.survival.clinical import clinical_barcodes, read_clinical
from tissuekd.survival.cohort import (
    Drops,
    assign_folds,
    build_cohort,
    count_patches,
    prepare_cohort,
    read_layout,
    require_one_encoder,
)
from tissuekd.survival.patches import MASK_EDGE, draw_grid, extract_patch_features, make_patches, read_patches
from tissuekd.survival.rna import complete_genes, read_gene_sets, read_rna
from tissuekd.survival.tissue import Grid, tissue_mask

PATIENTS = ["TCGA-DM-A000", "TCGA-DM-A001", "TCGA-DM-A002"]


@pytest.fixture(scope="module")
def demo_svs(tmp_path_factory):
    path = tmp_path_factory.mktemp("svs") / "TCGA-DM-A000-01Z-00-DX1.svs"
    make_slide(path, "TCGA-DM-A000", seed=0)
    return path


def test_demo_slide_is_an_aperio_svs_with_its_resolution(demo_svs):
    import openslide

    with openslide.OpenSlide(str(demo_svs)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == 0.5
        assert slide.properties["openslide.objective-power"] == "20"
        assert slide.level_count == 3


def test_demo_lymphocyte_clusters_cover_more_stroma_as_b_rises():
    """The demo's faint RNA program `b` shows as the share of stroma under lymphocyte clusters
    (the trace the AMKD student can learn from the teacher's RNA embedding), inside the region only."""
    region = np.zeros((510, 766), bool)  # any size (the cluster field is drawn at a quarter)
    region[:, 128:] = True
    shares = []
    for b in (-2.0, 0.0, 2.0):
        hema = lymphoid_aggregates(np.random.default_rng(0), region, b)
        assert not hema[:, :100].any()  # nothing outside the region (beyond the nuclei's blur)
        shares.append((hema[region] > 0.05).mean())  # under a cluster (its blurred nuclei)
    assert shares[0] < 0.06 and 0.15 < shares[1] < 0.35 < shares[2] < 0.55, shares


def test_patch_grid_at_20x_and_10x(demo_svs, tmp_path):
    make_patches(str(demo_svs), tmp_path / "p20.h5", tmp_path / "p20.jpg")
    make_patches(str(demo_svs), tmp_path / "p10.h5", tmp_path / "p10.jpg", magnification=10)
    coords20, attrs20 = read_patches(tmp_path / "p20.h5")
    coords10, attrs10 = read_patches(tmp_path / "p10.h5")
    assert attrs20["patch_size_level0"] == 256 and attrs10["patch_size_level0"] == 512
    assert 10 < len(coords20) < 70  # the demo's tissue covers about half of a 10 x 7 grid
    assert (coords20 % 256 == 0).all() and len(coords10) < len(coords20)
    with open_slide(demo_svs) as slide:  # kept patches are mostly stained, i.e. not glass
        means = [slide.read(0, x, y, 256, 256).mean() for x, y in coords20]
    assert max(means) < 235
    with Image.open(tmp_path / "p20.jpg") as drawn:  # the report holds one per slide: small
        assert drawn.format == "JPEG" and max(drawn.size) <= 1024


def test_blank_slide_gets_no_patches_and_a_warning(tmp_path, caplog):
    path = tmp_path / "blank.svs"
    from tissuekd.demo.survival import write_svs

    write_svs(path, np.full((1024, 1024, 3), 246, np.uint8))
    with caplog.at_level(logging.WARNING):
        make_patches(str(path), tmp_path / "p.h5", tmp_path / "p.jpg")
    assert len(read_patches(tmp_path / "p.h5")[0]) == 0
    assert "blank.svs: no tissue found" in caplog.text
    # the features step writes an empty file (the cohort step drops the slide), it does not crash
    spec = EncoderSpec.from_config("demo", {"model": "mobilenetv3_small_050", "mpp": 0.5, "weights": "random"})
    extract_patch_features(str(tmp_path / "p.h5"), str(path), spec, str(tmp_path / "f.h5"), device="cpu",
                           precision="fp32", progress=False)
    with h5py.File(tmp_path / "f.h5") as h5:
        assert h5["features"].shape[0] == 0 and h5["coords"].shape == (0, 2)


def test_the_thumbnail_outlines_the_mask_and_keeps_the_stain_colours():
    """A 30% green tint over H&E's pink read as grey: the tissue looked unmasked (a report reader's find)."""
    pink = np.array([230, 150, 210], np.uint8)
    thumb = np.full((200, 300, 3), 250, np.uint8)
    thumb[50:150, 60:240] = pink
    mask = np.zeros((200, 300), bool)
    mask[50:150, 60:240] = True
    grid = Grid(np.array([[0, 0]]), 16, 160, 0.5, 0.25, np.ones(1))
    drawn = np.asarray(draw_grid(thumb, mask, grid, downsample=16.0))
    assert (drawn[100, 150] == pink).all() and (drawn[10, 280] == 250).all()  # inside and outside as they were
    assert (drawn[50, 150] == MASK_EDGE).all() and (drawn[100, 60] == MASK_EDGE).all()  # the mask's edge


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_a_slide_without_a_small_level_gets_its_thumbnail_in_bands(tmp_path, caplog, backend):
    """A flat TIFF: the thumbnail is the box average of the whole level, read band by band."""
    from tissuekd.io.wsi import thumbnail

    rgb = np.random.default_rng(0).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "flat.tif", rgb, tile=(256, 256), photometric="rgb")
    expected = rgb[:699, :999].reshape(233, 3, 333, 3, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    with open_slide(tmp_path / "flat.tif", backend) as slide, caplog.at_level(logging.INFO):
        image, downsample = thumbnail(slide, max_px=400, band_bytes=50_000)  # bands of 15 rows
    np.testing.assert_array_equal(image, expected)
    assert downsample == 3 and "no level of at most 400 px (coarsest 1000 x 700)" in caplog.text


def test_slide_without_resolution_needs_the_sheet_mpp(tmp_path):
    path = tmp_path / "nores.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(InputError, match=r"nores.tif: no resolution.*`mpp` column"):
        make_patches(str(path), tmp_path / "p.h5", tmp_path / "p.jpg")
    make_patches(str(path), tmp_path / "p.h5", tmp_path / "p.jpg", mpp=0.25)  # 20x patch = 512 px here
    with pytest.raises(InputError, match=r"nores.tif: the slide sheet's mpp 250 µm per pixel, outside what a slide"):
        make_patches(str(path), tmp_path / "p.h5", tmp_path / "p.jpg", mpp=250)
    assert read_patches(tmp_path / "p.h5")[1]["patch_size_level0"] == 512


def test_a_slide_without_mpp_takes_it_from_its_magnification_and_says_so(tmp_path, caplog):
    path = tmp_path / "nompp.svs"
    head = "Aperio Image Library v12.0.15 \n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=85|AppMag = 40"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb",
                     compression="jpeg", description=head, metadata=None)
    with caplog.at_level(logging.WARNING):
        make_patches(str(path), tmp_path / "p.h5", tmp_path / "p.jpg")
    assert "nompp.svs: no mpp in the file; 0.25 µm/px assumed from its objective power (40x)" in caplog.text
    assert read_patches(tmp_path / "p.h5")[1]["patch_size_level0"] == 512


@pytest.fixture
def tables(tmp_path):
    make_cohort_tables(PATIENTS, tmp_path / "clinical.tsv", tmp_path / "rna.tsv", seed=0, cancer_type="T",
                       genes_by_samples=True)
    return tmp_path


def test_clinical_table_in_tcga_cdr_form(tables):
    clinical = read_clinical(tables / "clinical.tsv", "OS")
    assert list(clinical.index) == PATIENTS and set(clinical["event"]) <= {0, 1}
    table = pd.read_csv(tables / "clinical.tsv", sep="\t").set_index("bcr_patient_barcode")
    for endpoint in ("OS", "PFI"):  # each endpoint reads its own two columns
        read = read_clinical(tables / "clinical.tsv", endpoint)
        assert read["time"].tolist() == table.loc[PATIENTS, f"{endpoint}.time"].tolist()
        assert read["event"].tolist() == table.loc[PATIENTS, endpoint].tolist()
    table["PFI.time"] = table["OS.time"] / 2  # the demo's PFI may equal OS: make them differ
    table.reset_index().to_csv(tables / "pfi.tsv", sep="\t", index=False)
    assert read_clinical(tables / "pfi.tsv", "PFI")["time"].tolist() == (table.loc[PATIENTS, "OS.time"] / 2).tolist()
    table.loc[PATIENTS[1], "PFI"] = 2  # an event coded 1/2 (as some tables do) is refused, not read
    table.reset_index().to_csv(tables / "coded.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=rf"coded.tsv: PFI must be 0 \(censored\) or 1 \(event\); not so for "
                                         rf"\['{PATIENTS[1]}'\]"):
        read_clinical(tables / "coded.tsv", "PFI")


def test_clinical_table_errors_name_the_file_and_the_problem(tables):
    table = pd.read_csv(tables / "clinical.tsv", sep="\t")
    table.drop(columns=["OS.time"]).to_csv(tables / "no_time.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"no_time.tsv: missing column\(s\) \['OS.time'\]"):
        read_clinical(tables / "no_time.tsv", "OS")
    table.loc[1, "OS.time"] = -5
    table.to_csv(tables / "negative.tsv", sep="\t", index=False)
    with pytest.raises(InputError,
                       match=r"negative.tsv: negative or infinite OS.time for patient\(s\) \['TCGA-DM-A001'\]"):
        read_clinical(tables / "negative.tsv", "OS")


def test_unreadable_survival_values_stop_naming_the_patient_while_missing_markers_do_not(tables):
    table = pd.read_csv(tables / "clinical.tsv", sep="\t")
    table["OS.time"] = table["OS.time"].astype(object)
    table.loc[0, "OS.time"], table.loc[2, "OS.time"] = "[Not Available]", "#N/A"
    table.to_csv(tables / "markers.tsv", sep="\t", index=False)
    clinical = read_clinical(tables / "markers.tsv", "OS")
    assert clinical["time"].isna().sum() == 2 and clinical["time"].notna().sum() == len(PATIENTS) - 2
    table.loc[2, "OS.time"] = "'--"  # the GDC portal's clinical.tsv
    table.to_csv(tables / "gdc.tsv", sep="\t", index=False)
    assert read_clinical(tables / "gdc.tsv", "OS")["time"].isna().sum() == 2
    table.loc[1, "OS.time"] = "12O"  # a typo, not a missing value
    table.to_csv(tables / "typo.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"typo.tsv: column OS.time has values that are neither numbers .*"
                                         r"TCGA-DM-A001: '12O'"):
        read_clinical(tables / "typo.tsv", "OS")


def test_linear_rna_values_are_log_scaled_and_log_or_centred_ones_kept(tmp_path, caplog):
    samples = [p + "-01A-11R-A00Z-07" for p in PATIENTS[:3]]
    counts = np.array([[0, 3, 1023], [7, 0, 15]], dtype=float)
    for values, expected in ((counts, np.log2(counts + 1)), (np.log2(counts + 1), np.log2(counts + 1)),
                             (counts - 500, counts - 500)):
        pd.DataFrame(values, index=pd.Index(["TP53", "MKI67"], name="gene_id"), columns=samples).to_csv(
            tmp_path / "rna.tsv", sep="\t")
        with caplog.at_level(logging.INFO):
            rna = read_rna(tmp_path / "rna.tsv", set(PATIENTS))
        np.testing.assert_allclose(rna.to_numpy(), expected.T)
    assert caplog.text.count("values up to 1023 look linear (counts, RSEM or TPM): used as log2(x + 1)") == 1


def test_pancan_gene_ids_become_symbols_and_a_repeated_id_stops(tmp_path, caplog):
    samples = [p + "-01A-11R-A00Z-07" for p in PATIENTS[:3]]
    ids = ["TP53|7157", "?|100130426", "SLC35E2|728661", "SLC35E2|9906", "MKI67|4288"]
    values = np.arange(15, dtype=float).reshape(5, 3)
    pd.DataFrame(values, index=pd.Index(ids, name="gene_id"), columns=samples).to_csv(tmp_path / "pancan.tsv", sep="\t")
    with caplog.at_level(logging.INFO):
        rna = read_rna(tmp_path / "pancan.tsv", set(PATIENTS))
    assert list(rna.columns) == ["TP53", "SLC35E2", "MKI67"] and "read as 3 symbols (1 without a symbol" in caplog.text
    np.testing.assert_allclose(rna["SLC35E2"], values[2:4].mean(axis=0))  # the ids sharing a symbol, averaged
    (tmp_path / "sets.gmt").write_text("PROLIFERATION\tna\tMKI67\tTOP2A\n")
    assert read_gene_sets(tmp_path / "sets.gmt", list(rna.columns)) == {"PROLIFERATION": [2]}
    for separator in (" ", ","):  # a GMT that is not tab-separated loses sets: named, with its line
        (tmp_path / "sets.gmt").write_text(f"# sets\n\nA\tna\tTP53\nPROLIFERATION{separator}na{separator}MKI67\n")
        with pytest.raises(InputError, match=r"sets.gmt: line 4 has 1 tab-separated field\(s\), 'PROLIFERATION"):
            read_gene_sets(tmp_path / "sets.gmt", list(rna.columns))

    repeated = pd.DataFrame(values, index=pd.Index(ids[:4] + ["TP53|7157"], name="gene_id"), columns=samples)
    repeated.to_csv(tmp_path / "rows.tsv", sep="\t")
    repeated.T.to_csv(tmp_path / "columns.tsv", sep="\t")  # pandas would rename the second to TP53|7157.1
    for name in ("rows.tsv", "columns.tsv"):
        with pytest.raises(InputError, match=rf"{name}: gene id\(s\) listed twice: \['TP53\|7157'\]"):
            read_rna(tmp_path / name, set(PATIENTS))


def test_pancan_missing_values_drop_their_genes_and_text_still_stops(tmp_path, caplog):
    """PanCan matrices leave some values NA: an id without a symbol is dropped before its NA
    counts; a gene missing in a patient of the cohort is dropped (logged), one missing only in a
    patient left out of the cohort is kept; a sample with no value at all is no RNA; text (a
    typo) still stops; a compressed matrix (.xz) is read as pandas infers it."""
    samples = [p + "-01A-11R-A00Z-07" for p in PATIENTS] + ["TCGA-DM-A003-01A-11R-A00Z-07"]
    ids = ["TP53|7157", "?|100130426", "MKI67|4288", "EGFR|1956"]
    table = pd.DataFrame(np.arange(16, dtype=float).reshape(4, 4), index=pd.Index(ids, name="gene_id"),
                         columns=samples).astype(object)
    table.loc["?|100130426", samples[0]] = "NA"
    table.loc["MKI67|4288", samples[1]] = ""
    table[samples[3]] = "NA"
    table.to_csv(tmp_path / "pancan.tsv.xz", sep="\t")
    with caplog.at_level(logging.INFO):
        rna = read_rna(tmp_path / "pancan.tsv.xz", set(PATIENTS) | {"TCGA-DM-A003"})
        assert list(rna.index) == PATIENTS and "1 patient(s) with no value at all" in caplog.text
        assert list(complete_genes(rna, "pancan.tsv").columns) == ["TP53", "EGFR"]
    assert "1 gene(s) with missing values" in caplog.text
    assert list(complete_genes(rna.drop(index=PATIENTS[1]), "pancan.tsv").columns) == ["TP53", "MKI67", "EGFR"]
    table.loc["EGFR|1956", samples[2]] = "1,5"
    table.to_csv(tmp_path / "typo.tsv", sep="\t")
    with pytest.raises(InputError, match=r"typo.tsv: non-numeric values in gene\(s\) \['EGFR\|1956'\] "
                                         r"\(patient\(s\) \['TCGA-DM-A002'\]\)"):
        read_rna(tmp_path / "typo.tsv", set(PATIENTS))


def test_versioned_ensembl_ids_lose_their_version(tmp_path):
    """GDC's STAR matrices carry GENCODE versions; another cohort's release must still match."""
    samples = [p + "-01A" for p in PATIENTS]
    ids = ["ENSG00000141510.17", "ENSG00000148773.14", "ENSG00000182378.14_PAR_Y"]
    pd.DataFrame(np.arange(9, dtype=float).reshape(3, 3), index=pd.Index(ids, name="gene_id"),
                 columns=samples).to_csv(tmp_path / "star.tsv", sep="\t")
    rna = read_rna(tmp_path / "star.tsv", set(PATIENTS))
    assert list(rna.columns) == ["ENSG00000141510", "ENSG00000148773", "ENSG00000182378.14_PAR_Y"]


def test_blank_rows_of_a_spreadsheet_export_are_skipped(tables):
    table = pd.read_csv(tables / "clinical.tsv", sep="\t")
    text = table.to_csv(index=False) + "," * (table.shape[1] - 1) + "\n" + "," * (table.shape[1] - 1) + "\n"
    (tables / "export.csv").write_text(text)
    assert list(read_clinical(tables / "export.csv", "OS").index) == list(table["bcr_patient_barcode"])


def test_a_cohort_without_usable_patients_says_why_they_were_dropped(tables):
    """With the sheet's patient column holding slide ids, every patient was dropped and the error
    named only the count."""
    tmp_path = tables
    slides = pd.DataFrame({"slide": [p + "-01Z-00-DX1" for p in PATIENTS], "cohort": "c"})
    slides["patient"] = slides["slide"]
    slides["features"] = [features_file(tmp_path / f"{i}.h5", 3) for i in range(len(slides))]
    out = {k: str(tmp_path / f"{k}.out") for k in ("out_patients", "out_rna", "out_dropped")}
    n = len(PATIENTS)
    with pytest.raises(InputError, match=rf"cohort c: 0 usable patients .* too few .*; dropped: {n} slides of {n} "
                                         rf"patients, barcode not in the clinical table \(e.g. {PATIENTS[0]}-01Z"):
        prepare_cohort("c", slides, str(tmp_path / "clinical.tsv"), None, endpoint="OS", folds=2, seed=0,
                       cross_validate=True, **out)


def test_too_few_censored_patients_for_the_folds_are_named_as_such():
    with pytest.raises(InputError, match=r"10 usable patients \(8 events, 2 censored\) are too few for 5-fold"):
        assign_folds(np.array([1] * 8 + [0] * 2), 5, seed=0)


def test_rna_orientation_is_detected_and_sample_barcodes_map_to_patients(tables, caplog):
    genes_by_samples = pd.read_csv(tables / "rna.tsv", sep="\t", index_col=0)
    assert list(genes_by_samples.columns) == [p + "-01A" for p in PATIENTS]
    # a normal sample (-11A) of the first patient must not replace its tumour sample
    genes_by_samples.insert(0, PATIENTS[0] + "-11A", 0.0)
    # a patient with only a normal sample has no tumour RNA: not used
    genes_by_samples = genes_by_samples.drop(columns=PATIENTS[1] + "-01A").assign(**{PATIENTS[1] + "-11A": 1.0})
    genes_by_samples.to_csv(tables / "with_normal.tsv", sep="\t")
    genes_by_samples.T.to_csv(tables / "transposed.tsv", sep="\t")
    with caplog.at_level(logging.INFO):
        a = read_rna(tables / "with_normal.tsv", set(PATIENTS))
        b = read_rna(tables / "transposed.tsv", set(PATIENTS))
    assert "genes x samples" in caplog.text and "samples x genes" in caplog.text
    pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())
    assert a.loc[PATIENTS[0]].sum() > 0  # the tumour sample, not the all-zero normal one
    assert PATIENTS[1] not in a.index and "only normal-tissue or control samples" in caplog.text
    with pytest.raises(InputError, match="no row or column label matches a patient barcode"):
        read_rna(tables / "rna.tsv", {"TCGA-XX-0000"})


def features_file(path, n, width=8, encoder=None):
    with h5py.File(path, "w") as h5:
        h5["features"] = np.zeros((n, width), np.float32)
        h5["coords"] = np.zeros((n, 2), np.int64)
        if encoder:
            h5.attrs["encoder"] = encoder
    return str(path)


def test_a_cohort_of_features_from_two_encoders_is_named_by_its_odd_file(tmp_path):
    """Features of another width failed inside the models after fold 0, naming no file."""
    files = [features_file(tmp_path / f"s{i}.h5", 4, width) for i, width in enumerate([8, 8, 6])]
    with pytest.raises(InputError, match=r"s2.h5: features of width 6, where the cohort's other slides' are 8 "
                                         r"\(e.g. .*s0.h5\): a cohort's slides need features of one encoder"):
        require_one_encoder(files, [read_layout(f) for f in files])
    files = [features_file(tmp_path / f"e{i}.h5", 4, 8, name) for i, name in enumerate(["uni_v2", None, "conch"])]
    with pytest.raises(InputError, match=r"e2.h5: features of encoder 'conch', where the cohort's other slides' "
                                         r"are 'uni_v2'"):
        require_one_encoder(files, [read_layout(f) for f in files])
    require_one_encoder(files[:2], [read_layout(f) for f in files[:2]])  # one stated, one silent (CLAM): fine
    files.append(features_file(tmp_path / "blank.h5", 0, 0, "uni_v2"))  # a slide without tissue, as ours are
    require_one_encoder(files[:2] + files[3:], [read_layout(f) for f in files[:2] + files[3:]])


def test_a_clinical_table_from_a_spreadsheet_reads_with_a_bom_and_as_xlsx(tables, monkeypatch):
    """Excel's "CSV UTF-8" starts with a BOM; TCGA-CDR itself is published as an .xlsx workbook."""
    table = pd.read_csv(tables / "clinical.tsv", sep="\t")
    (tables / "bom.csv").write_bytes(b"\xef\xbb\xbf" + table.to_csv(index=False).encode())
    table.to_excel(tables / "TCGA-CDR-SupplementalTableS1.xlsx", sheet_name="TCGA-CDR")
    expected = read_clinical(tables / "clinical.tsv", "OS")
    pd.testing.assert_frame_equal(read_clinical(tables / "bom.csv", "OS"), expected)
    pd.testing.assert_frame_equal(read_clinical(tables / "TCGA-CDR-SupplementalTableS1.xlsx", "OS"), expected)
    # the plan's check reads the workbook's barcodes once; a changed workbook is read again
    workbook, cache = tables / "TCGA-CDR-SupplementalTableS1.xlsx", tables / "cache"
    assert clinical_barcodes(workbook, cache) == set(table["bcr_patient_barcode"])
    with monkeypatch.context() as patched:
        patched.setattr(clinical_module, "_clinical_table", lambda path: pytest.fail("read again"))
        assert clinical_barcodes(workbook, cache) == set(table["bcr_patient_barcode"])
    table.head(2).to_excel(workbook, sheet_name="TCGA-CDR")
    assert clinical_barcodes(workbook, cache) == set(table["bcr_patient_barcode"][:2])
    (tables / "latin1.tsv").write_bytes("bcr_patient_barcode\tOS\tOS.time\nTCGA-\x85\t1\t2\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.tsv: not a readable TSV, CSV or .xlsx table"):
        read_clinical(tables / "latin1.tsv", "OS")
    (tables / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))  # the legacy container's magic
    with pytest.raises(InputError) as err:
        read_clinical(tables / "old.xls", "OS")
    assert str(err.value) == f"{tables / 'old.xls'}: a legacy Excel .xls workbook: save it as .xlsx, TSV or CSV"


def test_stars_read_summaries_are_not_genes(tmp_path):
    samples = [p + "-01A" for p in PATIENTS]
    ids = ["N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous", "ENSG00000141510.17"]
    pd.DataFrame(np.arange(15, dtype=float).reshape(5, 3), index=pd.Index(ids, name="gene_id"),
                 columns=samples).to_csv(tmp_path / "star.tsv", sep="\t")
    assert list(read_rna(tmp_path / "star.tsv", set(PATIENTS)).columns) == ["ENSG00000141510"]


def test_unusable_patients_are_dropped_with_their_reason(tmp_path):
    clinical = pd.DataFrame({"time": [10.0, 20.0, np.nan, 40.0, 50.0], "event": [1, 0, 1, 1, 0]},
                            index=pd.Index(["P1", "P2", "P3", "P4", "P5"], name="patient"))
    rna = pd.DataFrame(np.ones((4, 3)), index=["P1", "P2", "P3", "P5"])
    slides = pd.DataFrame({"slide": ["s1", "s2", "s3", "s4", "s5", "s6"],
                           "patient": ["P1", "P2", "P3", "P4", "P9", "P1"],
                           "features": ["a", "b", "c", "d", "e", "f"], "n_patches": [5, 0, 5, 5, 5, 7]})
    drops = Drops()
    table = build_cohort(slides, clinical, rna, folds=2, seed=0, cross_validate=False, drops=drops)
    reasons = drops.table().set_index("patient")["reason"]
    assert list(table["patient"]) == ["P1"] and table["slides"].iloc[0] == "s1;s6"
    assert reasons["P2"].tolist() == ["no tissue found on the slide", "no slide with tissue"]
    assert reasons["P3"] == "no survival time or status for the endpoint"
    assert reasons["P4"] == "no tumour RNA sample in the matrix (normal-tissue samples are not used)"
    assert reasons["P5"] == "no slide in the sheet"
    assert reasons["P9"] == "barcode not in the clinical table"


def test_a_tcga_normal_tissue_slide_is_dropped_not_mixed_into_the_bag():
    clinical = pd.DataFrame({"time": [10.0, 20.0, 30.0], "event": [1, 0, 1]},
                            index=pd.Index(["TCGA-AA-0001", "C3L-00100", "TCGA-AA-0002"], name="patient"))
    slides = pd.DataFrame({"slide": ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-11A-01-TS1", "C3L-00100-21",
                                     "TCGA-AA-0002-11A-01-TS1"],
                           "patient": ["TCGA-AA-0001", "TCGA-AA-0001", "C3L-00100", "TCGA-AA-0002"],
                           "features": ["a", "b", "c", "d"], "n_patches": [5, 5, 5, 5]})
    drops = Drops()
    table = build_cohort(slides, clinical, None, folds=2, seed=0, cross_validate=False, drops=drops)
    assert table.set_index("patient")["slides"].to_dict() == {"TCGA-AA-0001": "TCGA-AA-0001-01Z-00-DX1",
                                                              "C3L-00100": "C3L-00100-21"}
    reasons = drops.table().groupby("patient")["reason"].apply(list).to_dict()
    assert reasons == {"TCGA-AA-0001": ["normal-tissue slide (TCGA sample type 10-29), not used"],
                       "TCGA-AA-0002": ["normal-tissue slide (TCGA sample type 10-29), not used",
                                        "only normal-tissue slides"]}


def test_features_files_must_have_the_trident_clam_layout(tmp_path):
    assert count_patches(features_file(tmp_path / "ok.h5", 4)) == 4
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        h5["feats"] = np.zeros((3, 8))
    with pytest.raises(InputError, match=r"bad.h5: a features file needs datasets `features` and `coords`"):
        count_patches(str(tmp_path / "bad.h5"))
    with h5py.File(tmp_path / "batch.h5", "w") as h5:
        h5["features"], h5["coords"] = np.zeros((1, 3, 8)), np.zeros((3, 2))
    with pytest.raises(InputError, match=r"batch.h5: `features` has shape \(1, 3, 8\), expected \(patches, dim\)"):
        count_patches(str(tmp_path / "batch.h5"))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="text.h5: not a readable HDF5 file"):
        count_patches(str(tmp_path / "text.h5"))


def test_a_non_tcga_sample_id_is_used_and_a_normal_only_patient_is_not(tmp_path):
    """Only TCGA's normal and control codes (-10..-29) are refused: a CPTAC-style suffix (`-T`)
    is still a patient's sample; a gzipped matrix is read (and checked for repeats) as well."""
    table = pd.DataFrame({"G1": [1.0, 2.0, 3.0], "G2": [4.0, 5.0, 6.0]}, index=["C3L-00001-T", "C3L-00002-11A",
                                                                           "C3L-00003"])
    table.to_csv(tmp_path / "rna.tsv.gz", sep="\t")
    rna = read_rna(tmp_path / "rna.tsv.gz", {"C3L-00001", "C3L-00002", "C3L-00003"})
    assert sorted(rna.index) == ["C3L-00001", "C3L-00003"] and rna.loc["C3L-00001", "G2"] == 4.0
    table.set_axis(["G1", "G1"], axis=1).to_csv(tmp_path / "twice.tsv.gz", sep="\t")
    with pytest.raises(InputError, match=r"twice.tsv.gz: gene id\(s\) listed twice: \['G1'\]"):
        read_rna(tmp_path / "twice.tsv.gz", {"C3L-00001"})


@pytest.mark.parametrize("transposed", [False, True])
def test_a_spreadsheets_empty_trailing_rows_and_columns_are_skipped(tables, tmp_path, caplog, transposed):
    """Saved from Excel: a BOM, CRLF, three rows of tabs and an empty column; they read as a gene
    `nan` listed twice."""
    matrix = pd.read_csv(tables / "rna.tsv", sep="\t", index_col=0)
    matrix = matrix.T if transposed else matrix
    lines = matrix.to_csv(sep="\t").splitlines()
    width = len(lines[0].split("\t"))
    text = "\r\n".join([lines[0] + "\t"] + [line + "\t" for line in lines[1:]] + ["\t" * width] * 3) + "\r\n"
    (tmp_path / "excel.tsv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    with caplog.at_level(logging.INFO):
        read = read_rna(tmp_path / "excel.tsv", set(PATIENTS))
    pd.testing.assert_frame_equal(read, read_rna(tables / "rna.tsv", set(PATIENTS)))
    assert "excel.tsv: 3 empty row(s) and 1 empty column(s) without a label skipped" in caplog.text


def test_rna_sample_ids_are_text_and_bad_matrices_are_named(tmp_path):
    """Sample ids that look like numbers keep their leading zeros (0123 is not 123); an empty
    file, a header without values, a sample listed twice and infinite values (log2 of 0 as -inf:
    scaling would zero the gene; +inf would make a log-scale matrix look linear) are named."""
    table = pd.DataFrame({"G1": [1.0, 2.0], "G2": [3.0, 4.0]}, index=pd.Index(["0123", "0456"], name="sample"))
    table.to_csv(tmp_path / "rna.tsv", sep="\t")
    assert sorted(read_rna(tmp_path / "rna.tsv", {"0123", "0456"}).index) == ["0123", "0456"]
    cases = {
        "empty.tsv": ("", "empty.tsv: not a readable TSV or CSV matrix"),
        "header.tsv": ("sample\tG1\tG2\n", r"header.tsv: no values: 0 row\(s\)"),
        "twice.tsv": (table.iloc[[0, 0, 1]].to_csv(sep="\t"), r"twice.tsv: sample\(s\) listed twice: \['0123'\]"),
        "inf.tsv": (table.assign(G2=[3.0, -np.inf]).to_csv(sep="\t"),
                    r"inf.tsv: infinite values in gene\(s\) \['G2'\] \(patient\(s\) \['0456'\]\)"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=message):
            read_rna(tmp_path / name, {"0123", "0456"})


def test_an_empty_clinical_table_and_an_infinite_time_are_named(tables, tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(InputError, match="empty.tsv: not a readable TSV, CSV or .xlsx table"):
        read_clinical(tmp_path / "empty.tsv", "OS")
    table = pd.read_csv(tables / "clinical.tsv", sep="\t")
    table.loc[0, "OS.time"] = np.inf
    table.to_csv(tmp_path / "inf.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=rf"inf.tsv: negative or infinite OS.time for patient\(s\) "
                                         rf"\['{table.loc[0, 'bcr_patient_barcode']}'\]"):
        read_clinical(tmp_path / "inf.tsv", "OS")


def test_gene_sets_name_each_set_once_and_each_gene_once(tmp_path):
    genes = ["A", "B", "C"]
    (tmp_path / "sets.gmt").write_text("S1\tx\tA\tC\tA\nS2\tx\tB\n")
    assert read_gene_sets(tmp_path / "sets.gmt", genes) == {"S1": [0, 2], "S2": [1]}
    (tmp_path / "twice.gmt").write_text("S1\tx\tA\nS2\tx\tB\nS1\tx\tC\n")
    with pytest.raises(InputError, match="twice.gmt: line 3: gene set 'S1' is named twice"):
        read_gene_sets(tmp_path / "twice.gmt", genes)
    (tmp_path / "latin.gmt").write_bytes("S1\tcaf\xe9\tA\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.gmt: not a UTF-8 text GMT file"):
        read_gene_sets(tmp_path / "latin.gmt", genes)


def test_a_features_file_whose_features_are_a_group_is_named(tmp_path):
    with h5py.File(tmp_path / "grouped.h5", "w") as h5:
        h5.create_group("features").create_dataset("uni", data=np.zeros((3, 4), np.float32))
        h5["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(InputError, match=r"grouped.h5: `features` is a group \(holding \['uni'\]\), expected an array"):
        read_layout(str(tmp_path / "grouped.h5"))


def gdc_download(tables, folder, flat=False):
    """The fixture's RNA as a GDC download (linear TPM, as STAR files hold it), plus a normal
    sample of the first patient and a second aliquot of the last one's tumour sample."""
    rna = 2 ** pd.read_csv(tables / "rna.tsv", sep="\t", index_col=0).T - 1
    extra = pd.concat([rna.iloc[[0]].rename(index=lambda s: s.replace("-01A", "-11A")) * 0 + 7, rna.iloc[[-1]]])
    return as_gdc_download(pd.concat([rna, extra]), folder, flat=flat)


@pytest.mark.parametrize("flat", [False, True])
def test_a_gdc_download_reads_as_its_matrix_does(tables, tmp_path, caplog, flat):
    sheet = gdc_download(tables, tmp_path / "gdc", flat=flat)
    with caplog.at_level(logging.INFO):
        given = read_rna(sheet, set(PATIENTS))
    expected = read_rna(tables / "rna.tsv", set(PATIENTS))
    pd.testing.assert_frame_equal(given.sort_index(), expected.sort_index(), atol=1e-4, check_dtype=False)
    assert "reading 4 of 5 STAR files" in caplog.text  # the cart's slide is no STAR file; the normal not read
    assert f"1 STAR file(s) of normal tissue not read (e.g. {PATIENTS[0]}-11A)" in caplog.text
    assert f"1 sample(s) with several STAR files (aliquots), their mean used: ['{PATIENTS[-1]}-01A']" in caplog.text
    for sep in (",", ";"):  # re-saved by a spreadsheet as CSV
        pd.read_csv(sheet, sep=None, engine="python").to_csv(sheet, sep=sep, index=False)
        pd.testing.assert_frame_equal(read_rna(sheet, set(PATIENTS)), given)
    counts = read_rna(sheet, set(PATIENTS), "unstranded")  # another column of the STAR files
    linear = 2 ** pd.read_csv(tables / "rna.tsv", sep="\t", index_col=0)[PATIENTS[0] + "-01A"] - 1
    np.testing.assert_allclose(counts.loc[PATIENTS[0]], np.log2((linear * 10).round() + 1), atol=1e-4)


def test_a_gdc_download_whose_sample_ids_are_not_barcodes_maps_by_case(tables, tmp_path):
    """CPTAC's sample ids (e.g. CPT0001540001) do not start with the case (C3L-00001): the
    Case ID names the patient, the Tissue Type column tells tumour from normal."""
    rna = 2 ** pd.read_csv(tables / "rna.tsv", sep="\t", index_col=0).T - 1
    rna.index = [f"CPT{i:07d}" for i in range(len(rna))]
    normal = rna.iloc[[0]].rename(index={rna.index[0]: "CPT0"}) * 0 + 3  # sorts before the tumour
    sheet = as_gdc_download(pd.concat([rna, normal]), tmp_path / "gdc")
    table = pd.read_csv(sheet, sep="\t", dtype=str)
    cases = [f"C3L-0000{i}" for i in range(len(rna))]
    table["Case ID"] = cases + cases[:1] + ["C3L-00000"]  # STAR files, then the slide
    table["Tissue Type"] = ["Tumor"] * len(rna) + ["Normal", "Tumor"]
    table.to_csv(sheet, sep="\t", index=False)
    given = read_rna(sheet, set(cases))
    expected = read_rna(tables / "rna.tsv", set(PATIENTS)).rename(index=dict(zip(PATIENTS, cases)))
    pd.testing.assert_frame_equal(given.sort_index(), expected.sort_index(), atol=1e-4, check_dtype=False)


@pytest.mark.parametrize("cut", ["mid_line", "line_end", "first_file"])
def test_a_star_file_cut_short_is_named_not_read_as_fewer_genes(tables, tmp_path, cut):
    sheet = gdc_download(tables, tmp_path / "gdc")
    order = pd.read_csv(sheet, sep="\t")["File ID"]  # the sheet's order: the first is the reference
    files = [next((tmp_path / "gdc" / i).glob("*.tsv")) for i in order[:5]]
    target = files[0] if cut == "first_file" else files[2]
    text = target.read_text()
    target.write_text(text[:len(text) // 2] if cut == "mid_line" else text[:text.index("\n", len(text) // 2) + 1])
    problem = "does not end with a line break" if cut == "mid_line" else "genes are the first of the 200"
    with pytest.raises(InputError, match=rf"{target}: .*{problem}"):
        read_rna(sheet, set(PATIENTS))


def test_a_gdc_download_with_a_missing_or_foreign_file_is_named(tables, tmp_path):
    sheet = gdc_download(tables, tmp_path / "gdc")
    files = sorted((tmp_path / "gdc").glob("*/*.tsv"))
    star = pd.read_csv(files[1], sep="\t", comment="#").drop(columns="tpm_unstranded")
    star.to_csv(files[1], sep="\t", index=False)
    with pytest.raises(InputError, match=rf"{files[1]}: not a GDC STAR gene-count table: no column\(s\) "
                                         r"\['tpm_unstranded'\]"):
        read_rna(sheet, set(PATIENTS))
    files[0].unlink()
    with pytest.raises(InputError, match=rf"{sheet}: 1 of its 5 STAR files is in neither {tmp_path}/gdc/<File ID>/"
                                         r"<File Name> \(gdc-client's layout\) nor"):
        read_rna(sheet, set(PATIENTS))
    table = pd.read_csv(sheet, sep="\t")
    table[table["Data Type"] == "Slide Image"].to_csv(sheet, sep="\t", index=False)
    with pytest.raises(InputError, match="lists no STAR gene-count file"):
        read_rna(sheet, set(PATIENTS))


def gdc_clinical(path, older=False):
    """GDC's clinical.tsv: a row per case and diagnosis or treatment, '-- for missing values."""
    rows = [  # case, vital status, days to death, days to last follow-up
        ("TCGA-DM-A000", "Dead", "400", "'--"), ("TCGA-DM-A000", "Dead", "400", "120"),
        ("TCGA-DM-A001", "Alive", "'--", "800"), ("TCGA-DM-A001", "Alive", "'--", "950"),
        ("TCGA-DM-A002", "Not Reported", "'--", "300"), ("TCGA-DM-A003", "Dead", "'--", "'--"),
        (None, "Alive", "'--", "10")]  # a trailing row without a case
    names = (["case_submitter_id", "vital_status", "days_to_death", "days_to_last_follow_up"] if older else
             ["cases.submitter_id", "demographic.vital_status", "demographic.days_to_death",
              "diagnoses.days_to_last_follow_up"])
    table = pd.DataFrame(rows, columns=names).assign(**{"project.project_id": "TCGA-DM", "treatments.days": "'--"})
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("older", [False, True])
def test_a_gdc_clinical_table_gives_overall_survival_per_case(tmp_path, older):
    clinical = read_clinical(gdc_clinical(tmp_path / "clinical.tsv", older), "OS")
    assert clinical.loc["TCGA-DM-A000"].tolist() == [400, 1]  # dead: days to death
    assert clinical.loc["TCGA-DM-A001"].tolist() == [950, 0]  # alive: the longest follow-up of its rows
    assert sorted(clinical.index) == [f"TCGA-DM-A00{i}" for i in range(4)]  # the row without a case skipped
    assert clinical.loc[["TCGA-DM-A002", "TCGA-DM-A003"], "event"].isna().tolist() == [True, False]
    assert clinical.loc[["TCGA-DM-A002", "TCGA-DM-A003"], "time"].isna().tolist() == [False, True]
    assert clinical_barcodes(str(tmp_path / "clinical.tsv")) == {f"TCGA-DM-A00{i}" for i in range(4)}
    with pytest.raises(InputError, match="a GDC clinical table gives overall survival only .* endpoint PFI"):
        read_clinical(tmp_path / "clinical.tsv", "PFI")
    table = pd.read_csv(tmp_path / "clinical.tsv", sep="\t").iloc[:, [0, 1, 2]]
    table.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"without \['diagnoses.days_to_last_follow_up'\]"):
        read_clinical(tmp_path / "clinical.tsv", "OS")


def test_gdc_follow_ups_beside_the_clinical_table_give_later_censoring(tmp_path, caplog):
    clinical = gdc_clinical(tmp_path / "clinical.tsv")
    follow_ups = pd.DataFrame({"cases.submitter_id": ["TCGA-DM-A001", "TCGA-DM-A001", "TCGA-DM-A000", "TCGA-DM-A002",
                                                      "TCGA-DM-A004", "TCGA-DM-A001"],
                               "follow_ups.days_to_follow_up": ["1200", "300", "900", "500", "700", "'--"]})
    follow_ups.to_csv(tmp_path / "follow_up.tsv", sep="\t", index=False)
    table = pd.read_csv(clinical, sep="\t")
    alive_without = table.iloc[[2]].assign(**{"cases.submitter_id": "TCGA-DM-A004",
                                              "diagnoses.days_to_last_follow_up": "'--"})
    pd.concat([table, alive_without]).to_csv(clinical, sep="\t", index=False)
    with caplog.at_level("INFO"):
        read = read_clinical(clinical, "OS")
    assert read.loc["TCGA-DM-A001"].tolist() == [1200, 0]  # alive: the later of 950 and its follow-ups
    assert read.loc["TCGA-DM-A004"].tolist() == [700, 0]  # no follow-up in clinical.tsv, one in follow_up.tsv
    assert read.loc["TCGA-DM-A000"].tolist() == [400, 1]  # dead: days to death, whatever follow-ups say
    assert read.loc["TCGA-DM-A002", "event"] != read.loc["TCGA-DM-A002", "event"]  # vital status unknown: NaN
    assert "later follow-ups for 2 of 2 alive cases (1 without a follow-up in the clinical table)" in caplog.text
    pd.read_csv(clinical, sep="\t").drop(columns="diagnoses.days_to_last_follow_up").to_csv(clinical, sep="\t",
                                                                                             index=False)
    assert read_clinical(clinical, "OS").loc["TCGA-DM-A001"].tolist() == [1200, 0]  # follow-ups alone suffice
    follow_ups.rename(columns={"follow_ups.days_to_follow_up": "days"}).to_csv(tmp_path / "follow_up.tsv", sep="\t")
    with pytest.raises(InputError, match=r"follow_up.tsv: GDC's follow-up table needs cases.submitter_id and "
                                         r"follow_ups.days_to_follow_up"):
        read_clinical(clinical, "OS")


def test_a_gdc_carts_slides_become_slide_sheet_rows(tables, tmp_path):
    sheet = gdc_download(tables, tmp_path / "gdc")
    table = pd.read_csv(sheet, sep="\t", dtype=str)
    frozen = table.iloc[[-1]].assign(**{"File ID": "f-ts", "File Name": "TCGA-XY-0000-01A-01-TS1.abc.svs"})
    pd.concat([table, frozen]).to_csv(sheet, sep="\t", index=False)
    for file_id, name in (("00000000-0000-0000-0000-00000000270f", "TCGA-XY-0000-01Z-00-DX1.svs"),
                          ("f-ts", "TCGA-XY-0000-01A-01-TS1.abc.svs")):
        (tmp_path / "gdc" / file_id).mkdir()
        (tmp_path / "gdc" / file_id / name).write_bytes(b"II*\0")
    command = [sys.executable, "-m", "tissuekd.survival.gdc", str(sheet), "--cohort", "mine"]
    rows = pd.read_csv(io.StringIO(subprocess.run(command, check=True, capture_output=True, text=True).stdout),
                       sep="\t", dtype=str).fillna("")
    assert rows.to_dict("records") == [{
        "slide": "TCGA-XY-0000-01Z-00-DX1", "cohort": "mine", "patient": "TCGA-XY-0000",
        "image": f"{tmp_path}/gdc/00000000-0000-0000-0000-00000000270f/TCGA-XY-0000-01Z-00-DX1.svs", "mpp": "",
        "features": ""}]
    every = subprocess.run(command + ["--all", "--no-header"], check=True, capture_output=True, text=True).stdout
    assert [line.split("\t")[0] for line in every.splitlines()] == ["TCGA-XY-0000-01Z-00-DX1",
                                                                     "TCGA-XY-0000-01A-01-TS1"]
    (tmp_path / "gdc" / "f-ts" / "TCGA-XY-0000-01A-01-TS1.abc.svs").unlink()
    result = subprocess.run(command + ["--all"], capture_output=True, text=True)
    assert result.returncode != 0 and f"tissuekd: bad input: {sheet}: 1 of its 2 slides is in neither" in result.stderr


def test_the_cohorts_rna_rows_follow_its_patients_whatever_the_matrix_order(tables):
    """rna.parquet is read by position beside patients.tsv: prepare_cohort writes it in that order."""
    tmp_path = tables
    matrix = read_rna(str(tmp_path / "rna.tsv"), set(PATIENTS))
    matrix.iloc[::-1].to_parquet(tmp_path / "reversed.parquet")  # patients in the other order
    slides = pd.DataFrame({"slide": [p + "-01Z-00-DX1" for p in PATIENTS], "cohort": "c", "patient": PATIENTS})
    slides["features"] = [features_file(tmp_path / f"{i}.h5", 3) for i in range(len(slides))]
    out = {k: str(tmp_path / f"{k}.out") for k in ("out_patients", "out_rna", "out_dropped")}
    prepare_cohort("c", slides, str(tmp_path / "clinical.tsv"), str(tmp_path / "reversed.parquet"), endpoint="OS",
                   folds=2, seed=0, cross_validate=False, **out)
    patients = pd.read_csv(out["out_patients"], sep="\t")["patient"].tolist()
    rna = pd.read_parquet(out["out_rna"])
    assert list(rna.index) == patients and patients != list(matrix.index[::-1])
    assert np.allclose(rna.to_numpy(), matrix.loc[patients, rna.columns].to_numpy(), atol=1e-5)


def test_the_tissue_mask_cuts_between_stain_and_a_tinted_background():
    """Otsu's cut on saturation, above the fixed floor: a faintly tinted glass (saturation 0.12,
    above the floor of 0.08) is not tissue beside stained tissue (0.5)."""
    from skimage import color

    def hsv(s, v):
        return (color.hsv2rgb(np.array([[[0.85, s, v]]]))[0, 0] * 255).astype(np.uint8)

    rgb = np.tile(hsv(0.12, 0.95), (200, 200, 1))
    rgb[50:150, 40:120] = hsv(0.5, 0.8)
    mask = tissue_mask(rgb)
    inside = np.zeros(mask.shape, bool)
    inside[50:150, 40:120] = True
    assert not mask[~inside].any() and mask[inside].mean() > 0.99
