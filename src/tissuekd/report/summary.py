"""The benchmark across slides and tissues: one tidy table of every metric, summaries per
tissue and overall (mean ± SD over slides, in the layout of the paper's tables), the runtime
of each rule from Snakemake's `benchmark:` files, and a bar chart of ARI per tissue."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tissuekd.io.atomic import atomic_path

log = logging.getLogger(__name__)

REFERENCE = "teacher"  # the row the niche methods are scored against: first in every table
METRICS = ["ARI", "NMI", "JSD", "matched_coverage", "probe_F1", "ARI_truth", "NMI_truth"]


def collect_metrics(paths: list[str], methods: Sequence[str] = ()) -> pd.DataFrame:
    """Concatenate per-slide metrics tables (one row per slide × encoder × K × method). Methods
    are ordered as `methods` (the rule's script passes the study's method table), after the
    teacher; any other method after them, by name."""
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    summary = pd.concat(frames, ignore_index=True)
    order, present = [REFERENCE, *methods], set(summary["method"])
    summary["method"] = pd.Categorical(summary["method"], [m for m in order if m in present]
                                       + sorted(present - set(order)))
    return summary.sort_values(["tissue", "slide", "encoder", "k", "method"]).reset_index(drop=True)


def mean_sd(values: pd.Series) -> str:
    """`mean ± SD` over slides; a metric some slides lack (no truth, no annotation) says over how many."""
    known = values.dropna()
    if known.empty:
        return "–"
    text = f"{known.iloc[0]:.3f}" if len(known) == 1 else f"{known.mean():.3f} ± {known.std(ddof=1):.3f}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)} slides)"


TISSUE_KEYS = ["tissue", "encoder", "k", "method"]


def by_tissue(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD over slides for every tissue, encoder, K and method (numbers, for analysis)."""
    grouped = summary.groupby(TISSUE_KEYS, observed=True)[METRICS]
    table = grouped.agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table.insert(0, "n_slides", grouped.size())
    return table.reset_index()


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout, over all slides: one row per encoder and method; for every K, ARI and
    NMI against the teacher, JSD per data set (tissue) with its matched coverage, the probe's
    macro-F1 and, where slides have known niches, ARI and NMI against them (mean ± SD)."""
    columns = {}
    for k in sorted(summary["k"].unique()):
        at_k = summary[summary["k"] == k]
        by_method = lambda rows, metric: rows.groupby(["encoder", "method"], observed=True)[metric].agg(mean_sd)  # noqa: E731
        for metric in ("ARI", "NMI"):
            columns[f"{metric} K={k}"] = by_method(at_k, metric)
        for tissue in sorted(summary["tissue"].unique()):
            columns[f"JSD {tissue} K={k}"] = by_method(at_k[at_k["tissue"] == tissue], "JSD")
        columns[f"matched coverage K={k}"] = by_method(at_k, "matched_coverage")
        columns[f"probe macro-F1 K={k}"] = by_method(at_k, "probe_F1")
        if at_k["ARI_truth"].notna().any():
            columns[f"ARI vs truth K={k}"] = by_method(at_k, "ARI_truth")
            columns[f"NMI vs truth K={k}"] = by_method(at_k, "NMI_truth")
    return pd.DataFrame(columns).reset_index()


def runtimes(paths: list[str], root: str, in_process: Sequence[str] = ()) -> pd.DataFrame:
    """Wall time and peak memory per rule, from Snakemake benchmark files under `root`
    (`{root}/{study}/{step}/...` → rule `{study}_{step}`). Files whose path under `root` matches
    an `in_process` regex are of jobs that ran inside Snakemake's process, whose memory is not
    theirs: theirs is left empty."""
    rows = []
    for path in paths:
        relative = Path(path).relative_to(root)
        bench = pd.read_csv(path, sep="\t")
        in_snakemake = any(re.fullmatch(pattern, relative.as_posix()) for pattern in in_process)
        rss = np.nan if in_snakemake else bench["max_rss"].iloc[-1]
        rows.append({"rule": f"{relative.parts[0]}_{relative.parts[1]}", "s": bench["s"].iloc[-1],
                     "max_rss_mb": pd.to_numeric(rss, errors="coerce")})
    frame = pd.DataFrame(rows, columns=["rule", "s", "max_rss_mb"])
    table = frame.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"),
                                      max_s=("s", "max"), max_rss_mb=("max_rss_mb", "max"))
    return table.sort_values("total_s", ascending=False).reset_index().round(2)


def ari_bars(summary: pd.DataFrame, out: str, labels: Mapping[str, str] | None = None) -> None:
    """ARI per tissue and method (mean ± SD over slides), one panel per K; `labels`: method ->
    display name in the legend (else the name, _ as a space)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    data = summary[summary["method"] != REFERENCE]
    methods = [m for m in data["method"].cat.categories if m != REFERENCE and m in set(data["method"])]
    tissues = sorted(data["tissue"].unique())
    ks = sorted(data["k"].unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(1.6 + 1.4 * len(tissues) * len(ks), 3.6), squeeze=False,
                             sharey=True, constrained_layout=True)
    width = 0.8 / len(methods)
    for ax, k in zip(axes[0], ks):
        stats = data[data["k"] == k].groupby(["tissue", "method"], observed=True)["ARI"].agg(["mean", "std"])
        for i, method in enumerate(methods):
            rows = stats.xs(method, level="method").reindex(tissues)
            ax.bar(np.arange(len(tissues)) + (i - (len(methods) - 1) / 2) * width, rows["mean"], width,
                   yerr=rows["std"], capsize=2, label=labels.get(method, method.replace("_", " ")))
        ax.set_xticks(np.arange(len(tissues)), tissues)
        ax.set_title(f"K = {k}")
    axes[0][0].set_ylabel("ARI vs teacher (test strip)")
    axes[0][-1].legend(fontsize=8, frameon=False)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


SLIDE_LEGEND = ("he_r: the correlation of cell counts and the H&E's haematoxylin in 8-µm bins, at the "
                "alignment; he_r_moved: its mean with the cells moved 24-48 µm off it; he_z: how many SDs of the "
                "moved ones he_r stands above them. A right H&E and alignment give a peak (demo slides: 8.8-17.6); "
                "below 3 the row is he_flagged and says CHECK.")


def flagged_note(slides: pd.DataFrame | None) -> str:
    """A line over the tables naming the slides whose cells missed their H&E's nuclei ('' if none)."""
    if slides is None:
        return ""
    flagged = slides[slides["he_flagged"].astype(bool)]
    if flagged.empty:
        return ""
    names = ", ".join(f"{row.slide} (he_z {row.he_z:g})" for row in flagged.itertuples())
    return (f"Check before reading these tables: the cells of {len(flagged)} slide(s), {names}, hardly sit on their "
            "H&E's nuclei (the Slides table, last): the H&E or its alignment may be another slide's. Their "
            "metrics are computed and included in the means below.")


def html_tables(summary: pd.DataFrame, paper: pd.DataFrame, out: str, slides: pd.DataFrame | None = None,
                labels: Mapping[str, str] | None = None) -> None:
    """The tables as one HTML page, for the report (which shows it in a frame); `slides`, the
    slides' inputs and checks, last, with a note over the first table when a slide is flagged;
    `labels`: method -> display name, as the figures name them (the TSVs keep the ids)."""
    grouped = summary.groupby(TISSUE_KEYS, observed=True)[METRICS]
    tissue_view = grouped.agg(mean_sd)
    tissue_view.insert(0, "n_slides", grouped.size())
    tissue_view = tissue_view.reset_index()

    def named(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(method=[(labels or {}).get(m) or m for m in frame["method"]])

    sections = [("Niche study: all slides (mean ± SD over slides)", named(paper), "summary-table",
                 flagged_note(slides)), ("Per tissue", named(tissue_view), "tissue-table", "")]
    if slides is not None:
        sections.append(("Slides: cells, genes, H&E resolution and the cells-on-nuclei check", slides, "slide-table",
                         SLIDE_LEGEND))
    write_html(sections, out)


def write_html(sections: list[tuple], out: str) -> None:
    """Tables (heading, frame, table id[, a note under the heading]) as one HTML page, for the
    report (which shows it in a frame). A value not measured (NaN) shows as –, as mean_sd writes it."""
    style = ("<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin:8px 0 24px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} p.note{max-width:60em}</style>")
    body = ""
    for heading, frame, table_id, *note in sections:
        body += f"<h2>{html.escape(heading, quote=False)}</h2>"
        if note and note[0]:
            body += f"<p class='note'>{html.escape(note[0], quote=False)}</p>"
        # a pivot's columns keep their name ("method"), which to_html(index=False) writes as one more
        # header cell, shifting every heading one column off its values
        body += frame.rename_axis(columns=None).to_html(index=False, table_id=table_id, na_rep="–")
    with atomic_path(out) as tmp:
        Path(tmp).write_text(f"<html><head><meta charset='utf-8'>{style}</head><body>{body}</body></html>")


def write_niche_benchmark(metric_paths: list[str], out: dict, methods: Mapping[str, str] | None = None,
                          slides: pd.DataFrame | None = None) -> pd.DataFrame:
    """The niche benchmark's tables and figure; `methods`: method -> display name, in the order of
    the tables (the rule's script passes niche/methods.py's table with the config's variants);
    `slides`: one row per slide (niche.ingest.slides_table), written to `out["slides"]`."""
    methods = methods or {}
    summary = collect_metrics(metric_paths, list(methods))
    tissue, paper = by_tissue(summary), paper_table(summary)
    log.info("%d slides, %d rows\n%s", summary["slide"].nunique(), len(summary), paper.to_string(index=False))
    tables = [("summary", summary), ("by_tissue", tissue), ("overall", paper)]
    for key, frame in tables + ([("slides", slides)] if slides is not None else []):
        with atomic_path(out[key]) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    html_tables(summary, paper, out["html"], slides, methods)
    ari_bars(summary, out["bars"], methods)
    return summary
