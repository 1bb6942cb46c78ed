"""The benchmark tables against their inputs, and the Snakemake report as a person sees it:
opened in headless Chromium, clicked through to the summary table and a niche map."""

from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import pandas as pd
import pytest
from chromium import Chromium, find_chromium
from conftest import make_workdir, runtime_table, snakemake, uncounted_jobs

from tissuekd.niche.ingest import slides_table
from tissuekd.report.summary import ari_bars, by_tissue, paper_table, runtimes, write_html, write_niche_benchmark

CLICK = """(text => { const el = [...document.querySelectorAll('a, button, li, span, div')].reverse()
  .find(e => e.textContent.trim() === text); if (!el) return false; el.click(); return true; })(%r)"""
VIEW = """(text => { const row = [...document.querySelectorAll('tr')].find(r => r.textContent.includes(text));
  if (!row) return false; row.querySelector('a').click(); return true; })(%r)"""


def fake_summary() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"slide": f"{t}{i}", "tissue": t, "k": k, "encoder": "e", "method": m, "ARI": rng.random(),
             "NMI": rng.random(), "JSD": rng.random(), "matched_coverage": rng.random(), "probe_F1": rng.random(),
             "ARI_truth": rng.random() if t == "a" else np.nan, "NMI_truth": rng.random() if t == "a" else np.nan,
             "n_cells": 10, "n_niches": k}
            for t in ("a", "b") for i in range(3) for k in (10, 20) for m in ("student", "hist_leiden")]
    return pd.DataFrame(rows).assign(method=lambda f: pd.Categorical(f["method"], ["student", "hist_leiden"]))


def test_tables_are_mean_and_sd_over_slides():
    summary = fake_summary()
    tissue = by_tissue(summary).set_index(["tissue", "k", "method"])
    rows = summary[(summary["tissue"] == "a") & (summary["k"] == 20) & (summary["method"] == "student")]
    assert tissue.loc[("a", 20, "student"), "ARI_mean"] == pytest.approx(rows["ARI"].mean())
    assert tissue.loc[("a", 20, "student"), "ARI_std"] == pytest.approx(rows["ARI"].std(ddof=1))
    assert tissue.loc[("a", 20, "student"), "n_slides"] == 3
    paper = paper_table(summary).set_index("method")
    at10 = summary[(summary["k"] == 10) & (summary["method"] == "hist_leiden")]
    assert paper.loc["hist_leiden", "ARI K=10"] == f"{at10['ARI'].mean():.3f} ± {at10['ARI'].std(ddof=1):.3f}"
    for k in (10, 20):  # every metric at every K
        assert {f"JSD a K={k}", f"JSD b K={k}", f"probe macro-F1 K={k}", f"NMI K={k}", f"matched coverage K={k}",
                f"ARI vs truth K={k}", f"NMI vs truth K={k}"} <= set(paper.columns)
    truth = summary[(summary["k"] == 20) & (summary["method"] == "student")]["ARI_truth"].dropna()  # tissue a only
    assert paper.loc["student", "ARI vs truth K=20"] == f"{truth.mean():.3f} ± {truth.std(ddof=1):.3f} (3 of 6 slides)"


def test_ari_whiskers_appear_only_where_a_tissue_has_two_slides(tmp_path, monkeypatch):
    """One slide per tissue has no SD: it drew a whisker cap at SD 0 all the same."""
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    summary = fake_summary()
    summary = summary[(summary["tissue"] == "a") | (summary["slide"] == "b0")]  # a: 3 slides, b: 1
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    ari_bars(summary, str(tmp_path / "bars.png"))
    whiskers = [c for ax in figures[0].axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(whiskers) == 4  # two methods at two K
    for whisker in whiskers:
        caps = whisker.lines[1][0].get_ydata().astype(float)  # lower caps, one per tissue (a, b)
        assert np.isfinite(caps[0]) and not np.isfinite(caps[1]), caps


def test_a_pivoted_table_keeps_each_heading_over_its_values(tmp_path):
    """A pivot's columns carry a name, which to_html(index=False) wrote as an extra header cell:
    every heading of the expression study's first table sat one column off."""
    long = pd.DataFrame({"dataset": ["COAD", "COAD", "IDC", "IDC"], "method": ["cmrcnet", "ridge"] * 2,
                         "r": [0.6, 0.5, 0.7, 0.4]})
    wide = long.pivot(index="dataset", columns="method", values="r").reset_index()
    write_html([("HVG", wide, "t")], str(tmp_path / "t.html"))
    head = (tmp_path / "t.html").read_text().split("<thead>")[1].split("</thead>")[0]
    assert re.findall(r"<th[^>]*>(.*?)</th>", head) == ["dataset", "cmrcnet", "ridge"]


def test_runtime_table_sums_benchmark_files(tmp_path):
    root = tmp_path / "benchmarks"
    for i, s in enumerate((2.0, 3.5)):
        path = root / "niche" / "features" / "enc" / f"slide{i}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\n{s}\t0:00:02\t{100 * (i + 1)}\n")
    in_process = root / "survival" / "patches" / "enc" / "slide0.tsv"  # Snakemake's process, not the job's
    in_process.parent.mkdir(parents=True)
    in_process.write_text("s\th:m:s\tmax_rss\n0.3\t0:00:00\t900\n")
    paths = [str(p) for p in sorted(root.rglob("*.tsv"))]
    table = runtimes(paths, str(root), [r"survival/patches/[^/]+/[^/]+\.tsv"]).set_index("rule")
    assert table.loc["niche_features", "jobs"] == 2 and table.loc["niche_features", "total_s"] == 5.5
    assert table.loc["niche_features", "max_rss_mb"] == 200
    assert table.loc["survival_patches", "total_s"] == 0.3 and np.isnan(table.loc["survival_patches", "max_rss_mb"])


def test_the_slide_table_flags_a_slide_whose_cells_miss_the_h_and_e_nuclei(tmp_path, caplog):
    """The ingest's warning (another slide's H&E, a wrong alignment) is repeated where the scores are read."""
    paths = []
    for slide, agreement in (("own", {"r": 0.41, "r_moved": 0.02, "z": 11.7}),
                             ("other", {"r": 0.05, "r_moved": 0.03, "z": 1.2}), ("coarse", None)):
        (tmp_path / slide).mkdir()
        (tmp_path / slide / "slide.json").write_text(json.dumps(
            {"n_cells": 3000, "n_genes": 280, "he_mpp": 0.21250001, "he_image": f"{slide}.ome.tif",
             "he_stain_agreement": agreement}))
        paths.append(str(tmp_path / slide / "slide.json"))
    with caplog.at_level(logging.WARNING):
        table = slides_table(paths).set_index("slide")
    assert table.loc["own", "he_check"] == "cells on the nuclei" and table.loc["own", "he_z"] == 11.7
    assert table.loc["other", "he_check"].startswith("CHECK: the cells hardly sit on the H&E's nuclei")
    assert table.loc["coarse", "he_check"].startswith("not measured") and np.isnan(table.loc["coarse", "he_z"])
    assert table["he_flagged"].to_dict() == {"own": False, "other": True, "coarse": False}
    assert "slide other: CHECK" in caplog.text and "other.ome.tif" in caplog.text and "slide own" not in caplog.text

    metrics = tmp_path / "metrics.tsv"
    fake_summary().assign(probe_classes="").to_csv(metrics, sep="\t", index=False)
    out = {key: str(tmp_path / f"{key}.tsv") for key in ("summary", "by_tissue", "overall", "slides")}
    out |= {"html": str(tmp_path / "tables.html"), "bars": str(tmp_path / "bars.png")}
    write_niche_benchmark([str(metrics)], out, {"student": "student", "hist_leiden": "Histology Leiden"},
                          slides=slides_table(paths))
    assert pd.read_csv(out["slides"], sep="\t")["slide"].tolist() == ["own", "other", "coarse"]
    assert "hist_leiden" in set(pd.read_csv(out["overall"], sep="\t")["method"])  # the TSVs keep the ids
    page = (tmp_path / "tables.html").read_text()
    assert "<td>Histology Leiden</td>" in page and "hist_leiden" not in page  # named as the figures name it
    assert "slide-table" in page and "CHECK: the cells hardly sit on the H&amp;E's nuclei" in page
    assert "NaN" not in page and "<td>–</td>" in page  # the coarse slide's he_z, not measured
    above_the_tables = page.split("summary-table")[0]
    assert "of 1 slide(s), other (he_z 1.2), hardly sit on their H&amp;E's nuclei" in above_the_tables


@pytest.mark.workflow
def test_a_run_ends_by_naming_the_slides_whose_cells_missed_their_nuclei(tmp_path):
    """The slide table's CHECK rows are said on the console after any run (here one demo table's)."""
    workdir = make_workdir(tmp_path, studies=("niche", "survival"))
    (workdir / "results/benchmark").mkdir(parents=True)
    check = "CHECK: the cells hardly sit on the H&E's nuclei (he_z < 3): is the H&E or the alignment another slide's?"
    pd.DataFrame([{"slide": "breast_demo", "he_z": 1.2, "he_flagged": True, "he_check": check},
                  {"slide": "colon_demo", "he_z": 9.6, "he_flagged": False, "he_check": "cells on the nuclei"}]).to_csv(
        workdir / "results/benchmark/niche_slides.tsv", sep="\t", index=False)
    result = snakemake("--cores", "1", "data/demo/survival/demo_tcga/clinical.tsv", cwd=workdir)
    output = result.stdout + result.stderr
    assert ("slide breast_demo: its cells hardly sit on its H&E's nuclei (he_z 1.2, below 3; right slides give "
            "about 9-18): is its he_image or he_alignment in the niche sheet another slide's?") in output
    assert "Table: results/benchmark/niche_slides.tsv" in output
    assert "slide colon_demo" not in output


@pytest.mark.workflow
def test_summary_has_a_row_per_slide_k_and_method(demo_run):
    summary = pd.read_csv(demo_run / "results" / "benchmark" / "summary.tsv", sep="\t")
    assert len(summary) == 3 * 1 * 4 and summary.groupby(["slide", "k", "method"]).size().eq(1).all()
    assert {"ARI", "NMI", "JSD", "matched_coverage", "probe_F1", "ARI_truth", "tissue"} <= set(summary.columns)
    runtime = runtime_table(demo_run)
    assert runtime.loc["niche_features", "jobs"] == 3 and runtime.loc["niche_student", "total_s"] > 0
    page = (demo_run / "results/benchmark/runtime.html").read_text()  # what the report shows
    assert "runtime-table" in page and page.count("<tr>") == len(runtime)  # a row per rule, as the TSV
    assert uncounted_jobs(demo_run) == 0
    slides = pd.read_csv(demo_run / "results/benchmark/niche_slides.tsv", sep="\t")
    assert len(slides) == 3 and (slides["he_check"] == "cells on the nuclei").all() and not slides["he_flagged"].any()


@pytest.mark.workflow
def test_report_renders_the_summary_table_and_a_niche_map(demo_run, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    report = tmp_path / "report.html"
    snakemake("--report", str(report), cwd=demo_run)
    browser = Chromium(binary)
    try:
        page = browser.open(report.as_uri())
        browser.wait_for(page, "document.querySelector('#app') && document.body.innerText.includes('RESULTS')")
        landing = browser.evaluate(page, "document.body.innerText")
        assert "tissuekd distilled expensive tissue measurements" in landing
        assert "check of the workflow, not of a method" in landing and "demo-mobilenet" in landing  # random weights
        for step in ("Benchmark", "Niche study"):
            assert browser.evaluate(page, CLICK % step), step
            time.sleep(0.3)
        assert browser.evaluate(page, VIEW % "mean ± SD per tissue and overall")
        browser.wait_for(page, "document.querySelector('iframe') !== null")
        time.sleep(0.5)
        tables = " ".join(browser.frame_text(page))
        assert "Niche study: all slides" in tables and "student" in tables and "ARI K=10" in tables

        for step in ("Benchmark", "Runtime"):  # a table shown in the page, not a TSV download
            assert browser.evaluate(page, CLICK % step), step
            time.sleep(0.3)
        assert browser.evaluate(page, VIEW % "runtime per rule")
        time.sleep(0.5)
        assert "niche_features" in " ".join(browser.frame_text(page))

        for step in ("Results", "Niche maps", "breast"):
            assert browser.evaluate(page, CLICK % step), step
            time.sleep(0.3)
        assert browser.evaluate(page, VIEW % "breast_demo")
        width = browser.wait_for(page, "(img => img && img.complete && img.naturalWidth)"
                                       "(document.querySelector('img[src^=\"data:image/png\"]'))")
        assert width > 500  # the PNG decoded: a real image, not a broken link
    finally:
        browser.close()
