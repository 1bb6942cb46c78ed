"""A TCGA project fetched from the GDC API (resources/README.md): its open diagnostic slides and
STAR gene counts, laid out as a GDC cart (`<File ID>/<File Name>` beside the cart's sample sheet,
as gdc-client puts them, so survival.gdc reads them as any cart), and the survival study's two
sheets for it, with TCGA-CDR as the clinical table.

The files are listed by the API's `files` endpoint (POST, JSON; paged with `size` / `from`) and
fetched from its `data` endpoint, each checked against the MD5 the GDC lists. A file already in
place at its listed size is kept (io.download writes it there only once its MD5 matched), so a
stopped fetch resumes where it was, file by file, and a cut download from its byte.
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from tissuekd.errors import DiskSpaceError, DownloadError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.download import TIMEOUT_S, download, request_failed
from tissuekd.logs import log_progress
from tissuekd.survival.gdc import slide_rows

log = logging.getLogger(__name__)
PAGE = 5000  # files per request of the listing: a TCGA project's slides and STAR files fit one (paged all the same)
FIELDS = ("file_id", "file_name", "md5sum", "file_size", "data_category", "data_type", "cases.submitter_id",
          "cases.project.project_id", "cases.samples.submitter_id", "cases.samples.sample_type")
# the older portal sheets' columns: "Sample Type" ("Primary Tumor", "Solid Tissue Normal", ...) is
# always filled, where today's "Tissue Type" may not be, and survival.gdc reads either
SHEET = ("File ID", "File Name", "Data Category", "Data Type", "Project ID", "Case ID", "Sample ID", "Sample Type")
KINDS = {"Slide Image": "diagnostic slides", "Gene Expression Quantification": "STAR gene-count files"}


def _is(field: str, *values: str) -> dict:
    return {"op": "in", "content": {"field": field, "value": list(values)}}


def file_filter(project: str) -> dict:
    """The project's open diagnostic slides (SVS; FFPE, the `-DX` slides) and STAR gene counts."""
    slides = {"op": "and", "content": [_is("data_type", "Slide Image"),
                                       _is("experimental_strategy", "Diagnostic Slide"), _is("data_format", "SVS")]}
    star = {"op": "and", "content": [_is("data_type", "Gene Expression Quantification"),
                                     _is("analysis.workflow_type", "STAR - Counts")]}
    return {"op": "and", "content": [_is("cases.project.project_id", project), _is("access", "open"),
                                     {"op": "or", "content": [slides, star]}]}


def list_files(api: str, project: str) -> pd.DataFrame:
    """The cart's sample sheet (SHEET's columns) plus `md5` and `size`, one row per file."""
    url, hits, seen = f"{api}/files", [], set()
    while True:
        body = {"filters": file_filter(project), "fields": ",".join(FIELDS), "format": "JSON", "size": PAGE,
                "from": len(hits), "sort": "file_id:asc"}  # one order for every page
        data = _post(url, body)
        new = [h for h in data["hits"] if h["file_id"] not in seen]
        seen.update(h["file_id"] for h in new)
        hits += new
        if not new or len(hits) >= data["pagination"]["total"]:
            break
    if len(hits) < data["pagination"]["total"]:  # pages that moved under the paging: never a short cohort
        raise DownloadError(url, f"listed {len(hits)} of the {data['pagination']['total']} files it counts for "
                                 f"{project} (the listing changed while paged?); run again")
    if not hits:
        raise DownloadError(url, f"lists no open diagnostic slide or STAR gene-count file of the project {project} "
                                 "(a GDC project id, e.g. TCGA-LUAD?)")
    return pd.DataFrame([_row(h) for h in hits])


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            reply = json.load(response)
        return {"hits": reply["data"]["hits"], "pagination": reply["data"]["pagination"]}
    except OSError as err:
        raise request_failed(url, err) from None
    except (ValueError, KeyError, TypeError) as err:
        raise DownloadError(url, f"answered with no file listing ({type(err).__name__}: {err})") from None


def _row(hit: dict) -> dict:
    cases = hit.get("cases", [])
    samples = [s for c in cases for s in c.get("samples", [])]
    joined = lambda values: ", ".join(dict.fromkeys(v for v in values if v))  # noqa: E731 (the portal's way)
    return {"File ID": hit["file_id"], "File Name": hit["file_name"], "Data Category": hit.get("data_category", ""),
            "Data Type": hit.get("data_type", ""),
            "Project ID": joined(c.get("project", {}).get("project_id") for c in cases),
            "Case ID": joined(c.get("submitter_id") for c in cases),
            "Sample ID": joined(s.get("submitter_id") for s in samples),
            "Sample Type": joined(s.get("sample_type") for s in samples),
            "md5": hit["md5sum"], "size": int(hit["file_size"])}


def fetch_files(api: str, files: pd.DataFrame, folder: Path, threads: int) -> None:
    """Every listed file to `<folder>/<File ID>/<File Name>`, `threads` at a time; one already
    there at its listed size is kept. The others are all tried before the first failure is raised."""
    rows = files.to_dict("records")
    todo = [r for r in rows if not _in_place(folder, r)]
    needed = sum(r["size"] for r in todo)
    log.info("%d of %d files (%.1f GB) in place; fetching %d (%.1f GB)", len(rows) - len(todo), len(rows),
             (sum(r["size"] for r in rows) - needed) / 1e9, len(todo), needed / 1e9)
    _require_space(folder, needed)
    failed = []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        jobs = [pool.submit(download, f"{api}/data/{r['File ID']}", _place(folder, r), md5=r["md5"]) for r in todo]
        for done, job in enumerate(as_completed(jobs), 1):
            if isinstance(err := job.exception(), DownloadError):
                log.warning("%s", err)
                failed.append(err)
            elif err is not None:
                raise err
            log_progress(log, "files fetched", done, len(jobs))
    if failed:
        raise DownloadError(failed[0].where, f"{failed[0].problem}; {len(failed)} of {len(todo)} files failed "
                                             "(the log lists them); run again to fetch them, the others are kept")


def _require_space(folder: Path, needed: int) -> None:
    """Stop before fetching what the disk cannot hold (a project's slides are hundreds of GB)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskSpaceError(folder, f"the files still to fetch need {needed / 1e9:,.1f} GB, and {free / 1e9:,.1f} "
                                     "GB are free there: free space, or set public.outdir to a larger disk")


def _place(folder: Path, row: dict) -> Path:
    return folder / row["File ID"] / row["File Name"]


def _in_place(folder: Path, row: dict) -> bool:
    path = _place(folder, row)
    return path.is_file() and path.stat().st_size == row["size"]


def fetch_cohort(api: str, project: str, clinical: str, sample_sheet: str, slides: str, cohorts: str,
                 threads: int = 4) -> None:
    """The project's files, then its sample sheet and the survival sheets (written last, so a
    stopped fetch leaves none of them)."""
    folder = Path(sample_sheet).parent
    files = list_files(api, project)
    counts = {kind: int((files["Data Type"] == kind).sum()) for kind in KINDS}
    listed = " and ".join(f"{n} {KINDS[kind]}" for kind, n in counts.items())
    log.info("%s: %s of %d cases listed", project, listed, files["Case ID"].nunique())
    if not all(counts.values()):  # nothing to distil: stop before fetching the other half
        raise DownloadError(f"{api}/files", f"lists {listed} of {project}: the survival study needs both")
    fetch_files(api, files, folder, threads)
    with atomic_path(sample_sheet) as tmp:
        files[list(SHEET)].to_csv(tmp, sep="\t", index=False)
    with atomic_path(slides) as tmp:
        slide_rows(sample_sheet, project).to_csv(tmp, sep="\t", index=False)
    with atomic_path(cohorts) as tmp:
        rows = [{"cohort": project, "clinical": str(Path(clinical).absolute()),
                 "rna": str(Path(sample_sheet).absolute()), "gene_sets": "", "cross_validate": "yes"}]
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)
