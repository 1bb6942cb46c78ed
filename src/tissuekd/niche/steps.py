"""The niche study's model steps per slide (docs/architecture.md, niche study, steps 5-8): scVI, the NOLAN-style
teacher, the H&E student and Histology NOLAN. Each reads and writes files so that a Snakemake
rule is one call. (Ingest, radius/split and features are in ingest.py, split.py and features.py;
Histology Leiden in baselines.py and the logits tables in tables.py, both without torch;
evaluation and maps in evaluate.py.)"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tissuekd import compute
from tissuekd.encoders.reduce import Reduction, reduce_file
from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.columns import CELL_ID, XY_UM
from tissuekd.logs import log_progress
from tissuekd.niche.models import NeighborhoodTransformer
from tissuekd.niche.tables import check_aligned, check_feature_ids, read_logits, write_logits
from tissuekd.niche.train import NolanConfig, StudentConfig, fit_nolan, fit_student, predict_logits
from tissuekd.spatial.neighborhoods import build_neighborhoods

log = logging.getLogger(__name__)
LOGIT_TEMP = 0.1  # cosines / 0.1 -> logits, for teacher, student and Histology NOLAN alike
FEATURE_DIM = 64  # H&E features are PCA-reduced (fitted on training rows) before the transformer


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up lines (GPU and TPU availability, a cloud-logging tip, "Seed set"), each
    twice (its own handler and ours), its hint to launch with srun (one process trains here) and a
    deprecation inside Lightning say nothing a user can act on: the step logs its device and its
    epochs itself. Warnings and errors still reach the log."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `srun` command is available")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _epoch_progress(epochs: int):
    """A Lightning callback logging about ten progress lines over the epochs, with the ELBO."""
    from lightning.pytorch.callbacks import Callback

    class EpochProgress(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            elbo = trainer.callback_metrics.get("elbo_train")
            what = "scVI epochs" if elbo is None else f"scVI epochs (ELBO {float(elbo):.2f})"
            log_progress(log, what, trainer.current_epoch + 1, epochs)

    return EpochProgress()


def fit_scvi(expression: str, out_model: str, out_latent: str, n_latent: int = 10, max_epochs: int | None = None,
             seed: int = 0, accelerator: str = "auto") -> None:
    """scVI on the slide's counts; `max_epochs` None takes scvi-tools' own heuristic for the
    number of cells (400 epochs up to 20,000 cells, fewer above: 8 at 1,000,000).

    Parameters
    ----------
    expression : str
        The slide's expression.h5ad (niche_ingest): raw counts, cells x genes.
    out_model : str
        Folder the trained scVI model is saved to.
    out_latent : str
        latent.parquet written: `cell_id`, then `z0` .. `z{n_latent - 1}`, one row per cell.
    n_latent : int, default 10
        Latent dimensions.
    max_epochs : int or None
        Training epochs (full passes over the cells); None: scvi-tools' heuristic, as above.
    seed : int, default 0
        scvi-tools' seed.
    accelerator : str, default "auto"
        Lightning accelerator: "auto", "cpu" or "gpu".
    """
    import anndata as ad
    import scvi
    from scvi.model._utils import get_max_epochs_heuristic

    adata = ad.read_h5ad(expression)
    if max_epochs is None:
        max_epochs = get_max_epochs_heuristic(adata.n_obs)
        log.info("scVI: %d epochs by the scvi-tools heuristic for %d cells", max_epochs, adata.n_obs)
    else:
        log.info("scVI: %d epochs, fixed in the config", max_epochs)
    with _quiet_lightning():
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, n_latent=n_latent)
        model.train(max_epochs=max_epochs, accelerator=accelerator, enable_progress_bar=False, early_stopping=False,
                    callbacks=[_epoch_progress(max_epochs)])
    log.info("scVI: trained on %s", model.device)
    latent = model.get_latent_representation()
    log.info("scVI: %d cells, %d genes, latent %d, final ELBO %.2f", adata.n_obs, adata.n_vars, n_latent,
             float(model.history["elbo_train"].iloc[-1, 0]))
    with atomic_path(out_model) as tmp:
        model.save(str(tmp), overwrite=True)
    frame = pd.DataFrame(latent, columns=[f"z{i}" for i in range(n_latent)])
    frame.insert(0, CELL_ID, adata.obs_names.to_numpy())
    with atomic_path(out_latent) as tmp:
        frame.to_parquet(tmp, index=False)


def standardize(x: np.ndarray, fit_rows: np.ndarray, max_dim: int | None = None) -> torch.Tensor:
    """z-score (and PCA to `max_dim`) of an in-memory table with statistics from `fit_rows`
    only (the teacher's scVI latents: N x 10). Feature files go through `reduce_features`."""
    return torch.from_numpy(Reduction.fit(x[fit_rows], max_dim).transform(x))


def reduce_features(path: str, cells: pd.DataFrame, fit_rows: np.ndarray, max_dim: int = FEATURE_DIM
                    ) -> torch.Tensor:
    """The slide's H&E features, read in chunks and reduced to `max_dim` with z-score and PCA
    fitted on (a bounded sample of) `fit_rows` only: for the student its train cells, so no
    statistic of a test cell leaks into training."""
    check_feature_ids(path, cells)
    reduced, _ = reduce_file(path, fit_rows, max_dim)
    return torch.from_numpy(reduced)


def save_model(out: str, model: NeighborhoodTransformer, cfg, k: int, in_dim: int) -> None:
    """A teacher or student checkpoint, as `load_model` reads it (the model is moved to the CPU).

    Parameters
    ----------
    out : str
        The .pt file written.
    model : NeighborhoodTransformer
        The trained model.
    cfg : NolanConfig or StudentConfig
        Its training settings, stored as a dict (`d_model` and `layers` rebuild the model).
    k : int
        Number of niches (the model's prototypes).
    in_dim : int
        Width of the per-cell features it takes (10 for scVI latents, FEATURE_DIM for H&E features).
    """
    with atomic_path(out) as tmp:
        torch.save({"state_dict": model.cpu().state_dict(), "config": asdict(cfg), "k": k, "in_dim": in_dim}, tmp)


def load_model(path: str) -> NeighborhoodTransformer:
    """A teacher or student checkpoint written by `save_model`, in eval mode on the CPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = NeighborhoodTransformer(ckpt["in_dim"], ckpt["k"], ckpt["config"]["d_model"], ckpt["config"]["layers"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def slide_inputs(cells_path: str, split_path: str, radius_path: str):
    cells = pd.read_parquet(cells_path)
    split = pd.read_parquet(split_path)
    check_aligned(cells, split[CELL_ID].to_numpy(), split_path)
    radius = json.loads(Path(radius_path).read_text())["radius_um"]
    return cells, split["role"].to_numpy(), radius


def train_teacher(latent_path: str, cells_path: str, radius_path: str, k: int, cfg: NolanConfig,
                  out_model: str, out_logits: str, max_neighbors: int = 32, seed: int = 0,
                  device: str = "auto", precision: str = "auto") -> None:
    """The teacher labels the whole slide from transcriptomics alone (it never sees H&E).

    Parameters
    ----------
    latent_path : str
        The slide's latent.parquet (fit_scvi), rows in cells.parquet's order; z-scored over every cell.
    cells_path : str
        The slide's cells.parquet (niche_ingest); neighbourhoods come from `x_um`, `y_um` (µm, Xenium frame).
    radius_path : str
        The slide's radius.json (niche.split.fit_radius): `radius_um`, the neighbourhood radius in µm.
    k : int
        Number of niches.
    cfg : NolanConfig
        Self-supervised training settings.
    out_model : str
        Checkpoint written (save_model).
    out_logits : str
        logits.parquet written: `cell_id`, `niche` (the argmax) and `logit_0` .. `logit_{k - 1}` (cosines /
        LOGIT_TEMP) for every cell.
    max_neighbors : int, default 32
        Neighbours per cell (cells), nearest first within the radius.
    seed : int, default 0
        Seed of initialisation and batches.
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    """
    run = compute.resolve(device, precision, workload="model")
    cells = pd.read_parquet(cells_path)
    radius = json.loads(Path(radius_path).read_text())["radius_um"]
    latent = pd.read_parquet(latent_path)
    check_aligned(cells, latent[CELL_ID].to_numpy(), latent_path)
    x = standardize(latent.drop(columns=CELL_ID).to_numpy(np.float32), np.arange(len(cells)))
    xy = cells[XY_UM].to_numpy()
    everyone = np.arange(len(cells))
    nb = build_neighborhoods(xy, everyone, radius, max_neighbors)
    model = fit_nolan(x, nb, torch.from_numpy(everyone), k, cfg, seed, compute=run)
    logits = predict_logits(model, x, nb, torch.from_numpy(everyone), LOGIT_TEMP, hide_centre=cfg.hide_centre,
                            compute=run).numpy()
    log.info("teacher: %d of %d niches in use", len(np.unique(logits.argmax(1))), k)
    save_model(out_model, model, cfg, k, x.shape[1])
    write_logits(out_logits, cells, logits)


def train_student(features_path: str, cells_path: str, split_path: str, radius_path: str, teacher_path: str,
                  k: int, cfg: StudentConfig, out_model: str, out_logits: str, max_neighbors: int = 32,
                  seed: int = 0, device: str = "auto", precision: str = "auto") -> None:
    """Fit on train-strip cells (neighbours from non-test cells), then predict every cell from H&E alone.

    Parameters
    ----------
    features_path : str
        The slide's H&E features (extract_cell_features), rows in cells.parquet's order; reduced to
        FEATURE_DIM with z-score and PCA fitted on the train cells only.
    cells_path : str
        The slide's cells.parquet; neighbourhoods come from `x_um`, `y_um` (µm, Xenium frame).
    split_path : str
        The encoder's split.parquet (niche.split.write_split): `role` train, buffer or test per cell.
    radius_path : str
        The slide's radius.json: `radius_um`, the neighbourhood radius in µm (the teacher's).
    teacher_path : str
        The teacher's logits table (`cell_id`, `logit_0` .. `logit_{k - 1}`): the distillation targets.
    k : int
        Number of niches; the teacher's table must have k logit columns.
    cfg : StudentConfig
        Training settings; with `select_temperature` the temperature is chosen by choose_temperature.
    out_model : str
        Checkpoint written (save_model).
    out_logits : str
        logits.parquet written for every cell, as train_teacher writes it.
    max_neighbors : int, default 32
        Neighbours per cell (cells), nearest first within the radius.
    seed : int, default 0
        Seed of initialisation and batches.
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    """
    run = compute.resolve(device, precision, workload="model")
    cells, role, radius = slide_inputs(cells_path, split_path, radius_path)
    train = np.flatnonzero(role == "train")
    if len(train) == 0:
        raise InputError(split_path, "no train cells")
    x = reduce_features(features_path, cells, train)
    teacher = torch.from_numpy(read_logits(teacher_path, cells, k))
    xy = cells[XY_UM].to_numpy()
    if cfg.select_temperature:
        cfg = replace(cfg, temperature=choose_temperature(x, xy, role, train, teacher, radius, cfg, max_neighbors,
                                                          seed, run))
    nb_train = build_neighborhoods(xy, train, radius, max_neighbors, allowed=role != "test")
    model = fit_student(x, nb_train, torch.from_numpy(train), teacher[train], cfg, seed, compute=run)
    everyone = np.arange(len(cells))
    nb_all = build_neighborhoods(xy, everyone, radius, max_neighbors)
    logits = predict_logits(model, x, nb_all, torch.from_numpy(everyone), LOGIT_TEMP, compute=run).numpy()
    save_model(out_model, model, cfg, k, x.shape[1])
    write_logits(out_logits, cells, logits)


def inner_band(y: np.ndarray, train: np.ndarray, share: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(inner-train, inner-validation) cells of `train`: validation is the horizontal band of
    the training cells with the largest y holding `share` of them; inner-train cells within
    `radius` of that band are left out, so no inner-train neighbourhood reaches into it."""
    cut = np.quantile(y[train], 1 - share)
    val = train[y[train] >= cut]
    inner = train[y[train] < cut - radius]
    return inner, val


def choose_temperature(x, xy, role, train, teacher, radius, cfg, max_neighbors, seed, run) -> float:
    """The distillation temperature among `cfg.select_temperature`, chosen without the test
    strip: a student per candidate on the inner-train cells, scored by ARI between its niches
    and the teacher's on the inner-validation band (the teacher's labels there are training
    targets, not test data); the first of equals wins.

    Parameters
    ----------
    x : torch.Tensor
        (cells, FEATURE_DIM) reduced H&E features of every cell.
    xy : np.ndarray
        (cells, 2) centroids in µm (Xenium frame); the inner-validation band is taken along y.
    role : np.ndarray
        (cells,) "train", "buffer" or "test"; test cells never enter a neighbourhood.
    train : np.ndarray
        Indices of the train cells, split into inner-train cells and the validation band.
    teacher : torch.Tensor
        (cells, K) teacher logits.
    radius : float
        Neighbourhood radius, µm; also the gap left between the inner-train cells and the band.
    cfg : StudentConfig
        `select_temperature` (the candidates), `inner_share` (share of train cells in the band), the rest as trained.
    max_neighbors : int
        Neighbours per cell (cells).
    seed : int
        Seed of each candidate's training.
    run : Compute
        Device and precision.

    Returns
    -------
    float
        The chosen temperature.
    """
    from sklearn.metrics import adjusted_rand_score

    inner, val = inner_band(xy[:, 1], train, cfg.inner_share, radius)
    if len(inner) == 0 or len(val) == 0:
        raise ValueError(f"too few training cells for an inner validation band ({len(train)} train cells)")
    allowed = (role != "test") & ~np.isin(np.arange(len(role)), val)
    nb_inner = build_neighborhoods(xy, inner, radius, max_neighbors, allowed=allowed)
    nb_val = build_neighborhoods(xy, val, radius, max_neighbors, allowed=role != "test")
    scores = []
    for t in cfg.select_temperature:
        model = fit_student(x, nb_inner, torch.from_numpy(inner), teacher[inner], replace(cfg, temperature=t), seed,
                            progress=False, compute=run)
        pred = predict_logits(model, x, nb_val, torch.from_numpy(val), LOGIT_TEMP, compute=run).argmax(1).numpy()
        scores.append(adjusted_rand_score(teacher[val].argmax(1).numpy(), pred))
    best = cfg.select_temperature[int(np.argmax(scores))]
    log.info("temperature %s chosen on %d inner-validation cells (ARI with the teacher: %s)", best, len(val),
             ", ".join(f"T={t}: {a:.3f}" for t, a in zip(cfg.select_temperature, scores)))
    return best


def histology_nolan(features_path: str, cells_path: str, split_path: str, radius_path: str, k: int,
                    cfg: NolanConfig, out_logits: str, max_neighbors: int = 32, seed: int = 0,
                    device: str = "auto", precision: str = "auto") -> None:
    """The teacher's method on H&E features, self-supervised on exactly the student's training
    cells and neighbourhoods (buffer cells' crops and neighbourhoods reach the test strip);
    predicts every cell.

    Parameters
    ----------
    features_path : str
        The slide's H&E features (extract_cell_features), reduced as for the student (fitted on train cells).
    cells_path : str
        The slide's cells.parquet; neighbourhoods come from `x_um`, `y_um` (µm, Xenium frame).
    split_path : str
        The encoder's split.parquet: `role` train, buffer or test per cell.
    radius_path : str
        The slide's radius.json: `radius_um`, the neighbourhood radius in µm.
    k : int
        Number of niches (clusters; their indices are not the teacher's).
    cfg : NolanConfig
        Self-supervised training settings (the teacher's).
    out_logits : str
        logits.parquet written for every cell, as train_teacher writes it.
    max_neighbors : int, default 32
        Neighbours per cell (cells), nearest first within the radius.
    seed : int, default 0
        Seed of initialisation and batches.
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    """
    run = compute.resolve(device, precision, workload="model")
    cells, role, radius = slide_inputs(cells_path, split_path, radius_path)
    fit_rows = np.flatnonzero(role == "train")
    if len(fit_rows) == 0:
        raise InputError(split_path, "no train cells")
    x = reduce_features(features_path, cells, fit_rows)
    xy = cells[XY_UM].to_numpy()
    nb_fit = build_neighborhoods(xy, fit_rows, radius, max_neighbors, allowed=role != "test")
    model = fit_nolan(x, nb_fit, torch.from_numpy(fit_rows), k, cfg, seed, compute=run)
    everyone = np.arange(len(cells))
    nb_all = build_neighborhoods(xy, everyone, radius, max_neighbors)
    logits = predict_logits(model, x, nb_all, torch.from_numpy(everyone), LOGIT_TEMP, hide_centre=cfg.hide_centre,
                            compute=run)
    write_logits(out_logits, cells, logits.numpy())
