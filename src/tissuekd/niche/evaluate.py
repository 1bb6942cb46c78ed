"""Evaluation of one slide and K on test-strip cells — agreement with the teacher: ARI, NMI
(scikit-learn), composition JSD (scipy) with its matched coverage; a linear-SVM probe to
pathology annotations (macro-F1, annotated cells only); where the slide sheet gives known
niches, ARI and NMI against them for every method and the teacher — and the side-by-side
niche maps with each niche's cell-type composition."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC

from tissuekd.io.atomic import atomic_path
from tissuekd.io.columns import CELL_ID, UNANNOTATED, UNKNOWN_TYPE, X_UM, Y_UM
from tissuekd.niche.methods import METHODS, REFERENCE, NicheMethod

log = logging.getLogger(__name__)


def hungarian_match(labels: np.ndarray, reference: np.ndarray) -> dict:
    """Map each cluster of `labels` to the reference niche it overlaps most, one-to-one."""
    table = pd.crosstab(labels, reference)
    rows, cols = linear_sum_assignment(-table.to_numpy())
    return {table.index[r]: table.columns[c] for r, c in zip(rows, cols)}


def compositions(labels: np.ndarray, cell_types: np.ndarray, types: np.ndarray) -> pd.DataFrame:
    """Cell-type shares (rows: niches of `labels`, columns: `types`); each row sums to 1."""
    table = pd.crosstab(labels, cell_types).reindex(columns=types, fill_value=0)
    return table.div(table.sum(axis=1), axis=0)


def composition_jsd(labels: np.ndarray, reference: np.ndarray, cell_types: np.ndarray,
                    matching: dict | None = None) -> dict:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of niche cell-type compositions, scored on
    every cell from both sides and weighted by cells:

    - each cell of `labels` counts the JSD between its niche and the reference niche matched to
      it; a niche left unmatched (more clusters than reference niches, or an index the teacher
      does not use) counts against the reference niche nearest in composition;
    - each cell of `reference` counts the JSD between its niche and the niche matched to it; a
      reference niche nothing is matched to (collapsed or missing) counts the maximum, 1.

    JSD is the mean of the two sides, so over-splitting is scored on all its clusters and a
    collapsed niche is penalised. `matched_coverage` is the share of cells (both sides pooled)
    in matched niches. Identity matching when `matching` is None (a student shares the
    teacher's niche indices). JSD is NaN with fewer than two known cell types (a slide without
    annotation or clusters: every composition is the same, and the JSD would only restate the
    coverage)."""
    types = np.unique(cell_types)
    p, q = compositions(labels, cell_types, types), compositions(reference, cell_types, types)
    if matching is None:
        matching = {n: n for n in p.index if n in q.index}
    matching = {a: b for a, b in matching.items() if a in p.index and b in q.index}
    divergence = pd.DataFrame([[jensenshannon(p.loc[a], q.loc[b], base=2) ** 2 for b in q.index] for a in p.index],
                              index=p.index, columns=q.index)
    size_p, size_q = pd.Series(labels).value_counts(), pd.Series(reference).value_counts()
    forward = sum(size_p[a] * (divergence.loc[a, matching[a]] if a in matching else divergence.loc[a].min())
                  for a in p.index)
    inverse = {b: a for a, b in matching.items()}
    backward = sum(size_q[b] * (divergence.loc[inverse[b], b] if b in inverse else 1.0) for b in q.index)
    covered = size_p[list(matching)].sum() + size_q[list(inverse)].sum()
    n = len(labels)
    jsd = float((forward + backward) / (2 * n)) if len(set(types) - {UNKNOWN_TYPE}) >= 2 else float("nan")
    return {"JSD": jsd, "matched_coverage": float(covered / (2 * n))}


def probe_f1(labels: np.ndarray, annotation: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Macro-F1 of a linear SVM from one-hot niche assignments to the annotation, cross-validated
    over annotated cells only (cells without an annotation are not a class)."""
    annotated = (annotation != UNANNOTATED) & pd.notna(annotation)
    labels, annotation = labels[annotated], annotation[annotated]
    onehot = pd.get_dummies(pd.Series(labels).astype(str)).to_numpy(float)
    counts = pd.Series(annotation).value_counts()
    folds = int(min(folds, counts.min())) if len(counts) else 0
    if folds < 2 or len(counts) < 2:
        return float("nan")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LinearSVC(C=1.0, random_state=seed), onehot, annotation, cv=cv)
    return float(f1_score(annotation, pred, average="macro"))


def probe_classes(annotation: np.ndarray | None) -> str:
    """Annotated cells per class, as the probe saw them ('stroma:120;tumour:80')."""
    if annotation is None:
        return ""
    counts = pd.Series(annotation[(annotation != UNANNOTATED) & pd.notna(annotation)]).value_counts().sort_index()
    return ";".join(f"{name}:{n}" for name, n in counts.items())


def truth_agreement(labels: np.ndarray, truth: np.ndarray | None) -> dict:
    """ARI and NMI against the known niches, on the cells that have one (NaN without truth)."""
    if truth is None:
        return {"ARI_truth": float("nan"), "NMI_truth": float("nan")}
    known = pd.notna(truth) & (truth != "")
    return {"ARI_truth": adjusted_rand_score(truth[known], labels[known]),
            "NMI_truth": normalized_mutual_info_score(truth[known], labels[known])}


def niche_metrics(method: str, labels: np.ndarray, teacher: np.ndarray, cell_types: np.ndarray,
                  annotation: np.ndarray | None, matched: bool, truth: np.ndarray | None = None) -> dict:
    """One row of the metrics table; `matched`: Hungarian-match clusters to the teacher's niches.

    Parameters
    ----------
    method : str
        The row's `method`.
    labels : np.ndarray
        (cells,) the method's niche or cluster of each scored cell.
    teacher : np.ndarray
        (cells,) the teacher's niche of the same cells: the reference for ARI, NMI and JSD.
    cell_types : np.ndarray
        (cells,) cell types, for the niches' compositions (JSD).
    annotation : np.ndarray or None
        (cells,) pathology annotation for the probe ("unannotated" cells left out); None: `probe_F1` is NaN.
    matched : bool
        Whether cluster ids are arbitrary and are matched to the teacher's niches for the JSD; False: identity
        (a student shares the teacher's niche indices). ARI and NMI need no matching.
    truth : np.ndarray or None
        (cells,) known niche ("" where none); None: `ARI_truth` and `NMI_truth` are NaN.

    Returns
    -------
    dict
        method, ARI, NMI, JSD, matched_coverage, probe_F1, ARI_truth, NMI_truth, n_cells, n_niches.
    """
    matching = hungarian_match(labels, teacher) if matched else None
    return {
        "method": method,
        "ARI": adjusted_rand_score(teacher, labels),
        "NMI": normalized_mutual_info_score(teacher, labels),
        **composition_jsd(labels, teacher, cell_types, matching),
        "probe_F1": probe_f1(labels, annotation) if annotation is not None else float("nan"),
        **truth_agreement(labels, truth),
        "n_cells": int(len(labels)),
        "n_niches": int(len(np.unique(labels))),
    }


COLUMNS = ["slide", "tissue", "k", "encoder", "method", "ARI", "NMI", "JSD", "matched_coverage", "probe_F1",
           "ARI_truth", "NMI_truth", "n_cells", "n_niches", "probe_classes"]


def _assignments(path: str, cells: pd.DataFrame) -> np.ndarray:
    frame = pd.read_parquet(path, columns=[CELL_ID, "niche"]).set_index(CELL_ID)
    return frame.loc[cells[CELL_ID], "niche"].to_numpy()


def _labels(cells: pd.DataFrame, path: str) -> pd.DataFrame:
    """The slide's labels.parquet, whose rows must be the cells', in their order (a stale one is
    an error)."""
    table = pd.read_parquet(path)
    if not table[CELL_ID].equals(cells[CELL_ID]):
        raise ValueError(f"{path}: its cells are not those of the slide's cells.parquet (rerun niche_labels)")
    return table


def evaluate_slide(cells_path: str, split_path: str, teacher: str, predictions: dict[str, str], out: str, *,
                   labels: str, slide: str, tissue: str, k: int, encoder: str,
                   methods: Mapping[str, NicheMethod] | None = None) -> pd.DataFrame:
    """The rule niche_evaluate: the teacher's row and one row per method (niche_metrics), scored
    on the slide's test-strip cells only.

    Parameters
    ----------
    cells_path : str
        The slide's cells.parquet: `cell_id`.
    split_path : str
        The encoder's split.parquet; cells with `role` "test" are scored.
    teacher : str
        The teacher's logits.parquet; its `niche` column is the reference.
    predictions : dict of str to str
        Method (a key of `methods`) -> its table with `cell_id` and `niche` (logits.parquet or clusters.parquet).
    out : str
        metrics.tsv written, in the columns of COLUMNS.
    slide, tissue, encoder : str
        Written to the columns of the same name.
    k : int
        Number of niches, written to column `k`.
    labels : str
        The slide's labels.parquet (niche_labels: `cell_type`, and `pathology` and `truth` where the
        sheet gave them, in the cells' order).
    methods : mapping of str to NicheMethod or None
        The method table (niche/methods.py, with the config's variants); an entry's `matched` says whether
        its cluster ids are Hungarian-matched to the teacher's niches for the JSD. None: the built-in table.

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    cells = pd.read_parquet(cells_path)
    test = pd.read_parquet(split_path)["role"].to_numpy() == "test"
    reference = _assignments(teacher, cells)[test]
    given = _labels(cells, labels)
    types = given["cell_type"].to_numpy()[test]
    annotation = None
    if "pathology" in given and (given["pathology"] != UNANNOTATED).any():
        annotation = given["pathology"].to_numpy()[test]
    truth = given["truth"].to_numpy()[test] if "truth" in given and (given["truth"] != "").any() else None
    methods = METHODS if methods is None else methods
    rows = [niche_metrics(m, _assignments(predictions[m], cells)[test], reference, types, annotation,
                          methods[m].matched, truth) for m in predictions]
    teacher_row = niche_metrics(REFERENCE, reference, reference, types, annotation, False, truth)
    table = pd.DataFrame([teacher_row, *rows]).assign(slide=slide, tissue=tissue, k=k, encoder=encoder,
                                                      probe_classes=probe_classes(annotation))
    table = table[COLUMNS]
    log.info("\n%s", table.drop(columns="probe_classes").to_string(index=False))
    if annotation is not None:
        log.info("probe: annotated test cells per class %s", table["probe_classes"].iloc[0])
        if table["probe_F1"].isna().all():
            log.warning("probe_F1 not computed: it needs two annotated classes of at least 2 cells each on the "
                        "test strip, which has %s", table["probe_classes"].iloc[0] or "none")
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    return table


def _matched_colours(labels: np.ndarray, reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Relabel clusters to their Hungarian-matched teacher niche (matched on test cells);
    clusters left unmatched get fresh ids after the teacher's."""
    match = hungarian_match(labels[test], reference[test])
    fresh = iter(range(int(reference.max()) + 1, 10**6))
    for cluster in np.unique(labels):
        if cluster not in match:
            match[cluster] = next(fresh)
    return np.array([match[v] for v in labels], dtype=int)


def niche_palette(n_teacher: int, n_ids: int) -> np.ndarray:
    """(n_ids, 3) RGB per niche id of the maps: the teacher's n_teacher niches (and the clusters
    matched to them) in distinct colours, tab20's strong ones first, then its pale partners,
    then tab20b's and tab20c's, greys left out (54 in all, repeated beyond); clusters matched to
    no teacher niche (ids from n_teacher on, `_matched_colours`) in greys, so that none passes
    for a teacher niche (at K=20 they took tab20's colours again, from niche 0)."""
    import matplotlib

    tab20, tab20c = (np.array(matplotlib.colormaps[name].colors) for name in ("tab20", "tab20c"))
    colours = np.concatenate([tab20[np.r_[0:14:2, 16:20:2, 1:14:2, 17:20:2]],  # 14, 15: tab20's greys
                              matplotlib.colormaps["tab20b"].colors, tab20c[:16]])  # 16-19: tab20c's greys
    greys = np.array([0.35, 0.55, 0.72])[np.arange(max(n_ids - n_teacher, 0)) % 3]
    return np.concatenate([np.resize(colours, (n_teacher, 3)), np.repeat(greys[:, None], 3, axis=1)])


def plot_maps(cells_path: str, split_path: str, teacher: str, predictions: dict[str, str], out: str, *,
              labels: str, title: str, methods: Mapping[str, NicheMethod] | None = None) -> None:
    """Teacher, student and baselines side by side; matched niches share a colour. Below each
    map, its niches' cell-type compositions on the test strip (what the JSD compares), rows
    in the teacher's niche order.

    Parameters
    ----------
    cells_path : str
        The slide's cells.parquet: `x_um`, `y_um` (µm, Xenium frame; the maps' axes, y downwards).
    split_path : str
        The encoder's split.parquet; the test strip is marked with dashed lines.
    teacher : str
        The teacher's logits.parquet (`niche` per cell).
    predictions : dict of str to str
        Method (a key of `methods`) -> its table with `cell_id` and `niche`; the clusters of methods whose
        entry is `matched` take the colour of the teacher niche they match on the test strip.
    out : str
        PNG written.
    title : str
        Start of the figure's title.
    labels : str
        The slide's labels.parquet (`cell_type`).
    methods : mapping of str to NicheMethod or None
        The method table (niche/methods.py, with the config's variants): `matched`, and `label` as the
        panel's title. None: the built-in table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = pd.read_parquet(cells_path)
    cell_types = _labels(cells, labels)["cell_type"].to_numpy()
    role = pd.read_parquet(split_path)["role"].to_numpy()
    reference = _assignments(teacher, cells)
    methods = METHODS if methods is None else methods
    panels = {"teacher (transcriptomics)": reference}
    for method, path in predictions.items():
        niches = _assignments(path, cells)
        if methods[method].matched:
            niches = _matched_colours(niches, reference, role == "test")
        panels[methods[method].label] = niches
    palette = niche_palette(int(reference.max()) + 1, max(int(np.max(v)) for v in panels.values()) + 1)
    y = cells[Y_UM].to_numpy()
    test = role == "test"
    types = np.unique(cell_types[test])
    heatmap_height = 0.25 * (int(reference.max()) + 4)  # a row per teacher niche, plus the labels
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 4.6 + heatmap_height),
                             constrained_layout=True, height_ratios=[4.6, heatmap_height])
    for ax, heat, (name, niches) in zip(axes[0], axes[1], panels.items()):
        niches = np.asarray(niches)
        ax.scatter(cells[X_UM], y, c=palette[niches], s=1.2, linewidths=0, rasterized=True)
        for edge in (y[test].min(), y[test].max()):
            ax.axhline(edge, color="black", lw=0.8, ls="--")
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        image = _composition_heatmap(heat, compositions(niches[test], cell_types[test], types), palette)
    fig.colorbar(image, ax=axes[1, -1], label="share of the niche's cells", fraction=0.08)
    fig.suptitle(f"{title} (test strip between dashed lines; below: cell-type share per niche on it)", fontsize=11)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _composition_heatmap(ax, shares: pd.DataFrame, palette: np.ndarray):
    image = ax.imshow(shares.to_numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(shares.shape[1]), shares.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(np.arange(shares.shape[0]), [f"niche {n}" for n in shares.index], fontsize=7)
    for tick, niche in zip(ax.get_yticklabels(), shares.index):
        tick.set_color(palette[int(niche)])
    return image
