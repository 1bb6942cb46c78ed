"""Public Xenium data sets fetched by rule (resources/xenium_public.tsv): each bundle's outs.zip
unpacked to the files ingest reads, and its post-Xenium H&E with the alignment, in the layout
a slide sheet names."""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import pandas as pd
import tifffile

from tissuekd.errors import DownloadError, InputError
from tissuekd.io.alignment import read_alignment
from tissuekd.io.atomic import atomic_path
from tissuekd.io.download import CHUNK, download
from tissuekd.io.wsi import check_complete
from tissuekd.io.xenium import ANALYSIS_TAR, MATRIX, MEX

log = logging.getLogger(__name__)
# what ingest and the labels read (clusters: unpacked or as the download's analysis.tar.gz), and
# two small files worth keeping; the rest (morphology images, transcripts: most of the tens of
# GB of a bundle) is left in the archive, which is removed
KEEP = ("experiment.xenium", "cells.parquet", "cells.csv.gz", MATRIX, f"{MEX[0]}/", ANALYSIS_TAR,
        "analysis/clustering/", "gene_panel.json", "metrics_summary.csv")
SHEET_COLUMNS = ["slide", "tissue", "bundle", "he_image", "he_alignment", "cell_types", "pathology"]


def fetch_bundle(url: str, outs: str) -> None:
    """A bundle's outs.zip downloaded beside `outs`, unpacked into it, and removed. A zip that
    fails to unpack is removed too (the next try downloads it anew); one whose unpacking was
    stopped (Ctrl-C, a killed job) is kept for the next try of the same URL."""
    archive = Path(outs).parent / PurePosixPath(url).name
    source = archive.with_name(archive.name + ".url")
    if not (archive.exists() and source.exists() and source.read_text() == url):
        download(url, archive)
        source.write_text(url)
    try:
        unpack_bundle(archive, outs, url)
    except InputError:
        archive.unlink(missing_ok=True)
        raise
    finally:
        if not archive.exists():
            source.unlink(missing_ok=True)
    archive.unlink()
    source.unlink()


def unpack_bundle(archive: Path, outs: str, url: str) -> None:
    """The bundle's files that the workflow reads, from wherever experiment.xenium sits in the zip."""
    try:
        with zipfile.ZipFile(archive) as zf, atomic_path(outs) as tmp:
            root, kept = bundle_root(zf, url), []
            for name, rel in members(zf, root):
                copy_member(zf, name, tmp / rel)
                kept.append(rel)
            for needed in (("cells.parquet", "cells.csv.gz"), (MATRIX, f"{MEX[0]}/{MEX[1][0]}")):
                if not set(needed) & set(kept):
                    raise DownloadError(url, f"holds no {' or '.join(needed)} beside {root / 'experiment.xenium'}")
            log.info("%s: kept %d of the bundle's files (%s)", archive.name, len(kept), ", ".join(sorted(kept)[:8]))
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        problem = f"is not a whole zip archive ({err}); removed, run again to download it anew"
        raise DownloadError(url, problem) from None


def bundle_root(zf: zipfile.ZipFile, url: str) -> PurePosixPath:
    """The folder of the zip that holds experiment.xenium (the shallowest, if several do)."""
    roots = [PurePosixPath(n).parent for n in zf.namelist() if PurePosixPath(n).name == "experiment.xenium"]
    if not roots:
        raise DownloadError(url, "holds no experiment.xenium: not a Xenium output bundle")
    return min(roots, key=lambda p: len(p.parts))


def members(zf: zipfile.ZipFile, root: PurePosixPath):
    """(member, path below root) of every file kept."""
    for name in zf.namelist():
        path = PurePosixPath(name)
        if not name.endswith("/") and path.is_relative_to(root) and kept_member(rel := str(path.relative_to(root))):
            yield name, rel


def fetch_he(urls: dict, he_image: str, he_alignment: str) -> None:
    """A data set's H&E and alignment (the small file first), checked to be what they claim."""
    download(urls["he_alignment"], he_alignment)
    download(urls["he_image"], he_image)
    check_he(he_image, he_alignment, urls)


def check_he(he_image: str, he_alignment: str, urls: dict) -> None:
    """The downloads are the files they claim to be (a login or error page comes back as HTTP 200
    too): a TIFF whose image data the file holds, and a 3x3 matrix."""
    try:
        with tifffile.TiffFile(he_image):
            pass
    except (tifffile.TiffFileError, ValueError) as err:
        raise DownloadError(urls["he_image"], f"is not a TIFF ({err})") from None
    try:
        check_complete(he_image)
        read_alignment(he_alignment)
    except InputError as err:
        url = urls["he_image"] if err.where == str(he_image) else urls["he_alignment"]
        raise DownloadError(url, err.problem) from None


def copy_member(archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    """One member of an open zip archive to `dest`, streamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def kept_member(rel: str) -> bool:
    if ".." in PurePosixPath(rel).parts:  # a crafted member must not write outside the bundle
        return False
    return any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP)


def write_sheet(slides: list[dict], bundles: list[str], he_images: list[str], he_alignments: list[str],
                sheet: str) -> None:
    """A niche slide sheet of the fetched data sets (the files in the order of `slides`), with
    absolute paths (it may be read from another working directory)."""
    files = zip(bundles, he_images, he_alignments, strict=True)
    table = pd.DataFrame([[s["slide"], s["tissue"], *map(os.path.abspath, paths), "", ""]
                          for s, paths in zip(slides, files, strict=True)], columns=SHEET_COLUMNS)
    with atomic_path(sheet) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("%s: %d slides; name it in niche.slides to run the niche study on them", sheet, len(table))
