"""Public data sets fetched by rule: downloads over real HTTP from a local server (resumed after a
cut, refused when short or missing), a Xenium outs.zip unpacked to what ingest reads, and the
slide sheet written for the fetched sets, on which the niche study plans."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, as_gdc_download, he_alignment, he_image, job_stats, make_workdir, snakemake

from tissuekd.errors import DownloadError, InputError
from tissuekd.io.download import download, partial_path
from tissuekd.logs import run_in_process
from tissuekd.niche.public import fetch_bundle, fetch_he

pytestmark = pytest.mark.workflow


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files as 10x's CDN does: whole, or from a byte offset (Range: bytes=N-) unless
    If-Range names another version (ETag) of the file. A file named in `cut` is sent short once:
    its full Content-Length announced, half its bytes written."""

    cut: set[str] = set()

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404, "Not Found")
        data = path.read_bytes()
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        fresh = self.headers["If-Range"] in (None, etag)
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers["Range"] and fresh else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if path.name in self.cut:
            self.cut.discard(path.name)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/served; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    RangeHandler.cut.clear()


def test_a_download_cut_off_is_refused_kept_and_resumed(server, tmp_path):
    folder, url = server
    payload = bytes(range(256)) * 40_000  # 10 MB: more than one read
    (folder / "big.bin").write_bytes(payload)
    RangeHandler.cut.add("big.bin")
    dest = tmp_path / "got" / "big.bin"
    with pytest.raises(InputError, match=r"big.bin: the download stopped at 4.9 MiB of 9.8 MiB; run again"):
        download(f"{url}/big.bin", dest)
    assert not dest.exists() and partial_path(dest).stat().st_size == len(payload) // 2
    download(f"{url}/big.bin", dest)  # asks for the rest only
    assert dest.read_bytes() == payload and not partial_path(dest).exists()


def test_a_partial_download_of_another_url_or_an_older_file_is_never_spliced_in(server, tmp_path):
    folder, url = server
    (folder / "v1").mkdir()
    (folder / "v2").mkdir()
    (folder / "v1/outs.zip").write_bytes(b"1" * 3_000_000)
    (folder / "v2/outs.zip").write_bytes(b"2" * 1_000_000)
    dest = tmp_path / "outs.zip"
    RangeHandler.cut.add("outs.zip")
    with pytest.raises(InputError, match="stopped at"):
        download(f"{url}/v1/outs.zip", dest)
    download(f"{url}/v2/outs.zip", dest)  # the list now names another file of the same name
    assert dest.read_bytes() == b"2" * 1_000_000
    dest.unlink()
    RangeHandler.cut.add("outs.zip")
    with pytest.raises(InputError, match="stopped at"):
        download(f"{url}/v1/outs.zip", dest)
    (folder / "v1/outs.zip").write_bytes(b"3" * 2_000_000)  # replaced on the server meanwhile
    download(f"{url}/v1/outs.zip", dest)
    assert dest.read_bytes() == b"3" * 2_000_000 and not list(tmp_path.glob("*.part*"))


def test_a_missing_file_or_server_is_named_with_its_url_as_a_failed_download(server, tmp_path):
    _, url = server
    log = tmp_path / "fetch.log"
    failed = r"^tissuekd: download failed: http://\S+/nothing.zip: the server answered HTTP 404"
    with pytest.raises(RuntimeError, match=failed):
        run_in_process(str(log), lambda: download(f"{url}/nothing.zip", tmp_path / "nothing.zip"))
    assert "bad input" not in log.read_text()  # the user's files are not at fault
    with pytest.raises(DownloadError, match=r"cannot be reached .*internet"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip")  # the discard port: refused
    assert not list(tmp_path.glob("*.zip"))


def test_a_download_whose_md5_differs_from_the_published_one_is_removed(server, tmp_path):
    folder, url = server
    (folder / "cdr.xlsx").write_bytes(b"clinical table")
    with pytest.raises(InputError, match=r"cdr.xlsx: the download's MD5 is [0-9a-f]{32}, not the 0{32} published"):
        download(f"{url}/cdr.xlsx", tmp_path / "cdr.xlsx", md5="0" * 32)
    assert not list(tmp_path.glob("cdr.xlsx*"))  # neither the file nor its .part: a retry starts anew
    download(f"{url}/cdr.xlsx", tmp_path / "cdr.xlsx", md5=hashlib.md5(b"clinical table").hexdigest())
    assert (tmp_path / "cdr.xlsx").read_bytes() == b"clinical table"


def test_the_shipped_list_plans_a_bundle_and_an_he_job_per_set_and_nothing_in_the_default_run(tmp_path):
    workdir = make_workdir(tmp_path)
    listed = pd.read_csv(REPO / "resources" / "xenium_public.tsv", sep="\t", comment="#")
    planned = job_stats(snakemake("-n", "--cores", "1", "fetch_xenium_public", cwd=workdir).stdout)
    assert planned == {"fetch_xenium_bundle": len(listed), "fetch_xenium_he": len(listed), "fetch_xenium_public": 1}
    assert not {rule for rule in job_stats(snakemake("-n", "--cores", "1", cwd=workdir).stdout) if "fetch" in rule}


def test_a_damaged_zip_or_an_error_page_for_the_he_is_named_with_its_url_and_not_kept(demo_slide, server, tmp_path):
    folder, url = server
    as_outs_zip(demo_slide, folder / "X_outs.zip", "outs", compression=zipfile.ZIP_STORED)
    data = bytearray((folder / "X_outs.zip").read_bytes())
    at = data.find(b"PAR1") + 100  # inside cells.parquet's stored bytes: its CRC no longer holds
    data[at:at + 8] = b"damaged!"
    (folder / "X_outs.zip").write_bytes(bytes(data))
    outs = tmp_path / "set" / "outs"
    with pytest.raises(InputError, match=r"X_outs.zip: is not a whole zip archive \(Bad CRC-32 .*run again"):
        fetch_bundle(f"{url}/X_outs.zip", str(outs))
    assert not list(outs.parent.iterdir())  # no outs, and no archive a retry would reuse
    (folder / "denied.html").write_text("<html>Access denied</html>")
    (folder / "he.ome.tif").write_bytes(he_image(demo_slide).read_bytes())
    (folder / "al.csv").write_bytes(he_alignment(demo_slide).read_bytes())
    for urls, message in [({"he_image": f"{url}/denied.html", "he_alignment": f"{url}/al.csv"},
                           r"denied.html: is not a TIFF"),
                          ({"he_image": f"{url}/he.ome.tif", "he_alignment": f"{url}/denied.html"},
                           r"denied.html: expected a 3x3 affine matrix")]:
        with pytest.raises(InputError, match=message):
            fetch_he(urls, str(tmp_path / "he.ome.tif"), str(tmp_path / "al.csv"))


def test_a_whole_zip_whose_unpacking_was_stopped_is_reused_for_its_url_only(demo_slide, server, tmp_path):
    _, url = server
    folder = tmp_path / "set"
    folder.mkdir()
    as_outs_zip(demo_slide, folder / "X_outs.zip", "outs")  # left by a try stopped while unpacking
    (folder / "X_outs.zip.url").write_text(f"{url}/X_outs.zip")
    with pytest.raises(InputError, match="Y/X_outs.zip: the server answered HTTP 404"):
        fetch_bundle(f"{url}/Y/X_outs.zip", str(folder / "outs"))  # another URL: not this zip
    fetch_bundle(f"{url}/X_outs.zip", str(folder / "outs"))  # the server has none: the zip kept is used
    assert (folder / "outs" / "experiment.xenium").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["outs"]


def as_outs_zip(slide: Path, zip_path: Path, inner: str, compression: int = zipfile.ZIP_DEFLATED) -> None:
    """The slide's bundle zipped as 10x publishes it (under `inner/`), with files the workflow
    never reads."""
    with zipfile.ZipFile(zip_path, "w", compression) as zf:
        for f in (slide / "outs").rglob("*"):
            zf.write(f, f"{inner}/{f.relative_to(slide / 'outs')}")
        zf.writestr(f"{inner}/morphology_focus/ch0000_dapi.ome.tif", b"\0" * 1000)
        zf.writestr(f"{inner}/transcripts.parquet", b"\0" * 1000)


def test_listed_xenium_sets_are_fetched_into_a_sheet_the_niche_study_plans_on(demo_slide, server, tmp_path):
    folder, url = server
    as_outs_zip(demo_slide, folder / "Xenium_Demo_outs.zip", "Xenium_Demo_outs")
    (folder / "he.ome.tif").write_bytes(he_image(demo_slide).read_bytes())
    (folder / "he_alignment.csv").write_bytes(he_alignment(demo_slide).read_bytes())
    (folder / "not_a_bundle.zip").write_bytes(b"")
    with zipfile.ZipFile(folder / "not_a_bundle.zip", "w") as zf:
        zf.writestr("outs/cells.parquet", b"")
    workdir = make_workdir(tmp_path / "work")
    rows = [["xenium_demo", "breast", f"{url}/Xenium_Demo_outs.zip"], ["broken", "lung", f"{url}/not_a_bundle.zip"]]
    listing = pd.DataFrame([[*r, f"{url}/he.ome.tif", f"{url}/he_alignment.csv"] for r in rows],
                           columns=["slide", "tissue", "outs", "he_image", "he_alignment"])
    listing.iloc[:1].to_csv(workdir / "public.tsv", sep="\t", index=False)
    public = "public={'xenium': 'public.tsv'}"

    snakemake("--cores", "1", "fetch_xenium_public", "--config", public, cwd=workdir)
    outs = workdir / "data/public/xenium/xenium_demo/outs"
    kept = {str(f.relative_to(outs)) for f in outs.rglob("*") if f.is_file()}
    assert {"experiment.xenium", "cells.parquet", "cell_feature_matrix.h5"} <= kept
    assert not {k for k in kept if k.startswith(("morphology", "transcripts"))}  # left in the zip
    assert not list(outs.parent.glob("*.zip*"))  # the archive is removed once unpacked
    sheet = pd.read_csv(workdir / "data/public/xenium/niche_slides.tsv", sep="\t")
    assert sheet[["slide", "tissue"]].values.tolist() == [["xenium_demo", "breast"]]
    assert Path(sheet["bundle"][0]) == outs.resolve()

    listing.loc[0, "tissue"] = "breast_tumour"  # a label: only the sheet is written again
    listing.iloc[:1].to_csv(workdir / "public.tsv", sep="\t", index=False)
    assert job_stats(snakemake("-n", "--cores", "1", "fetch_xenium_public", "--config", public, cwd=workdir).stdout
                     ) == {"fetch_xenium_public": 1}
    plan = snakemake("-n", "--cores", "1", "--config",
                     f"niche={{'slides': '{workdir / 'data/public/xenium/niche_slides.tsv'}'}}", cwd=workdir)
    assert job_stats(plan.stdout)["niche_ingest"] == 1

    listing.to_csv(workdir / "public.tsv", sep="\t", index=False)
    failed = snakemake("--cores", "1", "fetch_xenium_public", "--config", public, cwd=workdir, check=False)
    assert failed.returncode != 0
    assert "not_a_bundle.zip: holds no experiment.xenium" in failed.stdout + failed.stderr
    assert not (workdir / "data/public/xenium/broken/outs").exists()


# ---- a TCGA project from the GDC API ----

class GdcHandler(RangeHandler):
    """The GDC API's two endpoints used: POST /files lists `hits` (paged by the body's `size` and
    `from`, as the API does), GET /data/<File ID> serves the file (from served/data/)."""

    hits: list[dict] = []
    unlisted = 0  # files counted in the total but on no page (as when the order moves while paging)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/files" or "filters" not in body:
            return self.send_error(400, "Bad Request")
        start = int(body["from"])
        page = {"hits": self.hits[start:start + int(body["size"])],
                "pagination": {"total": len(self.hits) + self.unlisted, "from": start, "size": int(body["size"])}}
        data = json.dumps({"data": page, "warnings": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def gdc(tmp_path):
    """A GDC-like server of project TCGA-XY: three patients' STAR files and two of their
    diagnostic slides (demo SVS); yields (hits, base URL, served data folder)."""
    from tissuekd.demo.survival import make_slide

    data = tmp_path / "served" / "data"
    data.mkdir(parents=True)
    samples = [f"TCGA-XY-000{i}-01A" for i in (1, 2, 3)]
    rna = pd.DataFrame(np.arange(1, 31, dtype=float)[None] * [[1], [2], [3]], index=samples,
                       columns=[f"G{j}" for j in range(30)])
    cart = pd.read_csv(as_gdc_download(rna, tmp_path / "cart"), sep="\t")
    stars = cart[cart["Data Type"] == "Gene Expression Quantification"]
    files = [(r["File ID"], r["File Name"], r["Sample ID"], tmp_path / "cart" / r["File ID"] / r["File Name"])
             for _, r in stars.iterrows()]
    for i, sample in enumerate(samples[:2]):
        slide = tmp_path / "cart" / f"{sample[:-4]}-01Z-00-DX1.{i:04d}.svs"
        make_slide(slide, sample[:-4], seed=0)
        files.append((f"slide-{i}", slide.name, f"{sample[:-4]}-01Z", slide))
    hits = []
    for file_id, name, sample, path in files:
        (data / file_id).write_bytes(path.read_bytes())
        hits.append({"file_id": file_id, "file_name": name, "file_size": path.stat().st_size,
                     "md5sum": hashlib.md5(path.read_bytes()).hexdigest(),
                     "data_type": "Slide Image" if name.endswith(".svs") else "Gene Expression Quantification",
                     "cases": [{"submitter_id": sample[:12], "project": {"project_id": "TCGA-XY"},
                                "samples": [{"submitter_id": sample, "sample_type": "Primary Tumor"}]}]})
    GdcHandler.hits = hits
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(GdcHandler, directory=str(data.parent)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield hits, f"http://127.0.0.1:{httpd.server_address[1]}", data
    httpd.shutdown()
    RangeHandler.cut.clear()
    GdcHandler.unlisted = 0


def test_a_tcga_project_is_fetched_as_a_gdc_cart_in_pages_and_resumed_file_by_file(gdc, tmp_path, monkeypatch):
    from tissuekd.survival import public
    from tissuekd.survival.gdc import star_files

    hits, url, data = gdc
    monkeypatch.setattr(public, "PAGE", 2)  # three pages for five files
    out = tmp_path / "TCGA-XY"
    paths = [str(out / f) for f in ("gdc_sample_sheet.tsv", "survival_slides.tsv", "survival_cohorts.tsv")]
    RangeHandler.cut = {"slide-1"}  # sent short once
    with pytest.raises(DownloadError, match=r"/data/slide-1: the download stopped at .*; 1 of 5 files failed"):
        public.fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *paths, threads=2)
    assert not any(Path(p).exists() for p in paths)  # no sheet names a cohort not yet whole
    kept = {f: f.stat().st_mtime_ns for f in out.glob("*/*") if not f.name.endswith((".part", ".json"))}
    assert len(kept) == 4
    public.fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *paths, threads=2)
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())  # in place: not fetched again
    assert (out / "slide-1" / hits[4]["file_name"]).read_bytes() == (data / "slide-1").read_bytes()
    assert sorted(star_files(paths[0])["sample"]) == [f"TCGA-XY-000{i}-01A" for i in (1, 2, 3)]
    slides = pd.read_csv(paths[1], sep="\t")
    assert slides[["slide", "cohort", "patient"]].values.tolist() == [
        ["TCGA-XY-0001-01Z-00-DX1", "TCGA-XY", "TCGA-XY-0001"], ["TCGA-XY-0002-01Z-00-DX1", "TCGA-XY", "TCGA-XY-0002"]]
    cohort = pd.read_csv(paths[2], sep="\t", keep_default_na=False).iloc[0]
    assert (cohort["cohort"], cohort["rna"]) == ("TCGA-XY", str(Path(paths[0]).absolute()))


def test_a_tcga_file_whose_md5_differs_a_disk_too_small_or_a_project_with_no_files_stop_the_fetch(gdc, tmp_path):
    from tissuekd.survival.public import fetch_cohort

    hits, url, _ = gdc
    hits[0]["md5sum"] = "0" * 32
    out = tmp_path / "TCGA-XY"
    paths = [str(out / f) for f in ("sheet.tsv", "slides.tsv", "cohorts.tsv")]
    with pytest.raises(DownloadError, match=rf"/data/{hits[0]['file_id']}: the download's MD5 is .*1 of 5 files"):
        fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *paths)
    hits[0]["file_size"] = 10**18  # an exabyte: more than any disk here holds
    too_big = r"TCGA-XY: the files still to fetch need 1,000,000,000.0 GB, and [0-9,.]+ GB are free"
    with pytest.raises(RuntimeError, match=rf"^tissuekd: not enough disk space: \S+/{too_big}"):
        run_in_process(str(tmp_path / "fetch.log"), lambda: fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *paths))
    GdcHandler.unlisted = 1
    with pytest.raises(DownloadError, match=r"/files: listed 5 of the 6 files it counts for TCGA-XY"):
        fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *paths)
    GdcHandler.unlisted = 0
    GdcHandler.hits = hits[:3]  # STAR files only: nothing fetched
    elsewhere = [str(tmp_path / "star_only" / Path(p).name) for p in paths]
    with pytest.raises(DownloadError, match=r"/files: lists 0 diagnostic slides and 3 STAR gene-count files of "
                                            r"TCGA-XY: the survival study needs both"):
        fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *elsewhere)
    assert not (tmp_path / "star_only").exists()
    GdcHandler.hits = []
    with pytest.raises(DownloadError, match=r"/files: lists no open diagnostic slide .* TCGA-XY"):
        fetch_cohort(url, "TCGA-XY", "cdr.xlsx", *paths)
    with pytest.raises(DownloadError, match=r"/files: the server answered HTTP 400"):
        fetch_cohort(f"{url}/nowhere", "TCGA-XY", "cdr.xlsx", *paths)


def test_a_fetched_tcga_project_is_a_cohort_the_survival_study_plans_on(gdc, tmp_path):
    hits, url, _ = gdc
    workdir = make_workdir(tmp_path / "work")
    cdr = workdir / "data/public/tcga/TCGA-CDR-SupplementalTableS1.xlsx"  # as fetched (no internet here)
    cdr.parent.mkdir(parents=True)
    pd.DataFrame({"bcr_patient_barcode": [f"TCGA-XY-000{i}" for i in (1, 2, 3)], "type": "XY",
                  "OS": [1, 0, 1], "OS.time": [300, 2000, 900]}).to_excel(cdr, sheet_name="TCGA-CDR", index=False)
    snakemake("--cores", "2", "data/public/tcga/TCGA-XY/survival_slides.tsv", "--config",
              f"public={{'gdc_api': '{url}'}}", cwd=workdir)
    tcga = workdir / "data/public/tcga/TCGA-XY"
    studies = ("niche={'enabled': False}", "segmentation={'enabled': False}", "expression={'enabled': False}",
               f"survival={{'enabled': True, 'cohorts': '{tcga}/survival_cohorts.tsv', "
               f"'slides': '{tcga}/survival_slides.tsv', "
               "'external': [], 'folds': 2}")
    jobs = job_stats(snakemake("-n", "--cores", "2", "--config", *studies, cwd=workdir).stdout)
    assert jobs["survival_patches"] == 2 and jobs["survival_rna"] == 1
