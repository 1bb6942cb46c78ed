"""Public Xenium data sets fetched by rule (resources/xenium_public.tsv): each bundle's outs.zip
unpacked to the files ingest reads, and its post-Xenium H&E with the alignment, in the layout
a slide sheet names."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.download import copy_member, download
from tissuekd.io.xenium import ANALYSIS_TAR, MATRIX, MEX

log = logging.getLogger(__name__)
# what ingest and the labels read (clusters: unpacked or as the download's analysis.tar.gz), and
# two small files worth keeping; the rest (morphology images, transcripts: most of the tens of
# GB of a bundle) is left in the archive, which is removed
KEEP = ("experiment.xenium", "cells.parquet", "cells.csv.gz", MATRIX, f"{MEX[0]}/", ANALYSIS_TAR,
        "analysis/clustering/", "gene_panel.json", "metrics_summary.csv")
SHEET_COLUMNS = ["slide", "tissue", "bundle", "he_image", "he_alignment", "cell_types", "pathology"]


def fetch_bundle(url: str, outs: str) -> None:
    """A bundle's outs.zip downloaded beside `outs` and unpacked into it, then removed."""
    archive = Path(outs).parent / PurePosixPath(url).name
    if not archive.exists():  # a whole download from a try whose unpacking failed is not fetched again
        download(url, archive)
    unpack_bundle(archive, outs, url)
    archive.unlink()


def unpack_bundle(archive: Path, outs: str, url: str) -> None:
    """The bundle's files that the workflow reads, from wherever experiment.xenium sits in the zip."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        archive.unlink()  # e.g. an error page served as the file: the next try downloads it again
        raise InputError(url, "is not a zip archive (a Xenium outs.zip was expected; removed)") from None
    with zf, atomic_path(outs) as tmp:
        names = zf.namelist()
        roots = sorted((PurePosixPath(n).parent for n in names if PurePosixPath(n).name == "experiment.xenium"),
                       key=lambda p: len(p.parts))
        if not roots:
            raise InputError(url, "holds no experiment.xenium: not a Xenium output bundle")
        root, kept = roots[0], []
        for name in names:
            path = PurePosixPath(name)
            if not name.endswith("/") and path.is_relative_to(root) and kept_member(rel := str(path.relative_to(root))):
                copy_member(zf, name, tmp / rel)
                kept.append(rel)
        for needed in (("cells.parquet", "cells.csv.gz"), (MATRIX, f"{MEX[0]}/{MEX[1][0]}")):
            if not set(needed) & set(kept):
                raise InputError(url, f"holds no {' or '.join(needed)} beside {root / 'experiment.xenium'}")
        log.info("%s: kept %d of %d files (%s)", archive.name, len(kept), len(names), ", ".join(sorted(kept)[:8]))


def kept_member(rel: str) -> bool:
    if ".." in PurePosixPath(rel).parts:  # a crafted member must not write outside the bundle
        return False
    return any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP)


def write_sheet(slides: list[dict], folder: str, sheet: str) -> None:
    """A niche slide sheet of the fetched data sets, with absolute paths (it may be read from
    another working directory)."""
    table = pd.DataFrame([{"slide": s["slide"], "tissue": s["tissue"],
                           "bundle": os.path.abspath(f"{folder}/{s['slide']}/outs"),
                           "he_image": os.path.abspath(f"{folder}/{s['slide']}/he_image.ome.tif"),
                           "he_alignment": os.path.abspath(f"{folder}/{s['slide']}/he_imagealignment.csv"),
                           "cell_types": "", "pathology": ""} for s in slides], columns=SHEET_COLUMNS)
    with atomic_path(sheet) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("%s: %d slides; name it in niche.slides to run the niche study on them", sheet, len(table))
