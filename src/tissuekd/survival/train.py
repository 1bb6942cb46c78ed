"""Patient-level cross-validation of one survival model, with an identical protocol for every
method: the same folds (from patients.tsv), time bins and RNA scaling fitted on each fold's
training patients only, the same epochs, optimiser and seeds. No early stopping, so no test
patient ever influences a model.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tissuekd.compute import CPU, Compute
from tissuekd.errors import InputError
from tissuekd.survival import losses
from tissuekd.survival import methods as survival_methods
from tissuekd.survival.bags import CohortData, Moments
from tissuekd.survival.methods import SurvivalMethod
from tissuekd.survival.models import AMKDStudent
from tissuekd.training import optimise

log = logging.getLogger(__name__)



@dataclass
class TrainConfig:
    """The survival models' protocol; defaults as workflow/schemas/config.schema.yaml's survival.train."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    dropout: float = 0.25
    n_bins: int = 4
    alpha: float = 0.0  # extra weight of uncensored patients in the NLL
    max_patches: int = 4096  # patches sampled per bag and step in training (all at prediction)
    seed: int = 0
    members: int = 3  # models per fold from different seeds, risks averaged (steadier on small cohorts)


@dataclass
class AMKDConfig:
    """The AMKD student's loss weights; defaults as the schema's survival.amkd."""

    temperature: float = 2.0
    kd: float = 0.0  # hazard distillation (README: fixed at 0 a priori)
    genomic: float = 1.0  # gene-guided enhancement: pseudo-genomic -> teacher's RNA embedding
    redundancy: float = 0.1  # adaptive redundancy reduction
    off_diagonal: float = 0.005
    sharpness: float = 1.0
    # candidates per weight, e.g. {"kd": [0.0, 0.5]}: each outer fold chooses among their
    # combinations on an inner validation split of its own training patients (select_amkd)
    select: dict[str, list[float]] | None = None
    inner_share: float = 0.25  # training patients held out for that choice


INNER_SEED = 7919  # the inner split's seed, apart from the outer folds'


def inner_split(events: np.ndarray, train: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner-train, inner-validation) patients of `train`, stratified by event."""
    rng = np.random.default_rng([seed, INNER_SEED])
    held = []
    for value in (0, 1):
        group = rng.permutation(train[events[train] == value])
        held.append(group[: int(round(share * len(group)))])
    val = np.sort(np.concatenate(held))
    return np.setdiff1d(train, val), val


def candidates(amkd: AMKDConfig) -> list[AMKDConfig]:
    """Every combination of the candidate weights in `amkd.select` (the config itself if none)."""
    if not amkd.select:
        return [amkd]
    names = sorted(amkd.select)
    return [replace(amkd, select=None, **dict(zip(names, values)))
            for values in itertools.product(*(amkd.select[n] for n in names))]


def select_amkd(data: CohortData, train: np.ndarray, cfg: TrainConfig, fold: int, compute, teacher: dict,
                amkd: AMKDConfig, method: str | SurvivalMethod = "student") -> tuple[AMKDConfig, list[dict]]:
    """Choose the AMKD weights for one outer fold without its test patients: train one student
    per candidate on the inner-train patients, score the C-index on the inner-validation
    patients (both drawn from the fold's training patients only), keep the best (the first of
    equals). Returns the choice and every candidate's score.

    Parameters
    ----------
    data : CohortData
        The cohort.
    train : np.ndarray
        Rows of `data.patients` of the outer fold's training patients.
    cfg : TrainConfig
        Training settings of every candidate.
    fold : int
        The outer fold (seeds the inner split and the candidates' training).
    compute : Compute
        Device and precision.
    teacher : dict
        {"model": the fold's frozen teacher}.
    amkd : AMKDConfig
        `select` (candidate values per weight) and `inner_share` (training patients held out for validation).

    Returns
    -------
    chosen : AMKDConfig
        The best combination, `select` cleared.
    scores : list of dict
        Each candidate's weights and `inner_c_index`.
    """
    from tissuekd.survival.evaluate import c_index

    times, events = data.patients["time"].to_numpy(float), data.patients["event"].to_numpy(int)
    inner, val = inner_split(events, train, amkd.inner_share, cfg.seed * 1000 + fold)
    options, scores = candidates(amkd), []
    for option in options:
        ckpt = fit_fold(method, data, inner, cfg, fold, compute, teacher, option)
        risk = predict(build_model(method, data, cfg), data, ckpt, compute, val)
        scores.append({**{n: getattr(option, n) for n in sorted(amkd.select)},
                       "inner_c_index": c_index(events[val], times[val], risk)})
    best = int(np.argmax([row["inner_c_index"] for row in scores]))
    log.info("fold %d: AMKD weights chosen on %d inner-validation patients: %s", fold, len(val), scores[best])
    return options[best], scores


def build_model(method: str | SurvivalMethod, data: CohortData, cfg: TrainConfig) -> torch.nn.Module:
    """The method's model (its entry of survival/methods.py): the factory called with the feature
    dimension if it reads pathology, the gene count if it reads RNA, then the shared settings."""
    method = survival_methods.get(method)
    sizes = ([data.dim] if method.pathology else []) + ([len(data.genes)] if method.rna else [])
    extra = {"gene_sets": data.gene_sets} if method.rna else {}
    return method.factory()(*sizes, n_bins=cfg.n_bins, hidden=cfg.hidden, dropout=cfg.dropout, **extra)


def bundle_method(bundle: dict) -> SurvivalMethod:
    """The method a models.pt bundle holds (its stored entry; older bundles: the built-in of its name)."""
    return SurvivalMethod(**bundle["spec"]) if "spec" in bundle else survival_methods.get(bundle["method"])


class Inputs:
    """Per-patient model inputs of one fold: bags (sampled in training) and scaled RNA."""

    def __init__(self, data: CohortData, scaling: dict, compute: Compute, max_patches: int):
        self.data, self.compute, self.max_patches = data, compute, max_patches
        rna_mean, rna_std = scaling.get("rna_mean"), scaling.get("rna_std")
        self.feat_mean = self.feat_std = None
        if scaling.get("feat_mean") is not None:
            self.feat_mean = torch.as_tensor(scaling["feat_mean"], dtype=torch.float32, device=compute.device)
            self.feat_std = torch.as_tensor(scaling["feat_std"], dtype=torch.float32, device=compute.device)
        self.rna = None
        if data.rna is not None and rna_mean is not None:
            scaled = np.nan_to_num((data.rna - rna_mean) / rna_std)  # a gene missing from a cohort: its mean
            self.rna = torch.tensor(scaled, dtype=torch.float32, device=compute.device)

    def bag(self, i: int, rng: np.random.Generator | None = None) -> torch.Tensor | None:
        bags = self.data.bags
        if bags is None:
            return None
        n = bags.count(i)
        idx = None
        if rng is not None and n > self.max_patches:
            idx = np.sort(rng.choice(n, self.max_patches, replace=False))
        bag = bags.rows(i, idx).to(self.compute.device, torch.float32)  # a new tensor (rows' contract)
        # scaled in place: new bag-sized tensors per patient fragmented glibc's heap (64-byte-aligned blocks
        # do not fit the holes the last patient's left): 9.6 GB over 800 patients of 2,000 patches
        return bag.sub_(self.feat_mean).div_(self.feat_std) if self.feat_mean is not None else bag

    def __call__(self, model, idx, rng=None, encode=False):
        """Stacked outputs over patients `idx`: logits (B, bins) and embeddings (B, hidden)."""
        with self.compute.autocast():
            outs = [(model.encode if encode else model)(*self.args(model, i, rng)) for i in idx]
        outs = [(o[0].float(), o[1].float()) for o in outs]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def args(self, model, i, rng):
        rna = self.rna[i] if self.rna is not None else None
        if isinstance(model, AMKDStudent):
            return (self.bag(i, rng),)
        return self.bag(i, rng), rna


def fit_fold(method: str | SurvivalMethod, data: CohortData, train: np.ndarray, cfg: TrainConfig, fold: int, compute,
             teacher: dict | None = None, amkd: AMKDConfig | None = None, member: int = 0) -> dict:
    """Train one model on the patients `train`; returns a checkpoint (weights, bin edges, scaling).

    Parameters
    ----------
    method : str
        "teacher", "student", "pathology" or "rna".
    data : CohortData
        The cohort.
    train : np.ndarray
        Rows of `data.patients` trained on; time bins and scaling are fitted on them only.
    cfg : TrainConfig
        Training settings.
    fold : int
        The fold predicted by this model (seeds it).
    compute : Compute
        Device and precision.
    teacher : dict or None
        {"model": the frozen teacher} for the student; None otherwise.
    amkd : AMKDConfig or None
        The student's loss weights.
    member : int, default 0
        Ensemble member (seeds it).

    Returns
    -------
    dict
        fold, member, state (CPU weights), edges (inner time-bin edges, in patients.tsv's time unit: days) and
        the scaling (feat_mean, feat_std; rna_mean, rna_std where RNA is used).
    """
    method = survival_methods.get(method)
    torch.manual_seed(cfg.seed * 1_000_000 + member * 1000 + fold)
    rng = np.random.default_rng([cfg.seed, fold, member])
    times, events = data.patients["time"].to_numpy(float), data.patients["event"].to_numpy(int)
    edges = losses.time_bins(times[train], events[train], cfg.n_bins)
    bins = torch.tensor(losses.to_bin(times, edges), device=compute.device)
    event_t = torch.tensor(events, device=compute.device)
    scaling = fit_scaling(data, train, method.rna or method.distilled)  # distilled: the teacher's RNA
    inputs = Inputs(data, scaling, compute, cfg.max_patches)
    model = build_model(method, data, cfg).to(compute.device)
    targets = distillation_targets(teacher, data, inputs, train, compute) if method.distilled else None

    def batches(_epoch: int):
        model.train()
        order = rng.permutation(train)
        return (order[start : start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size))

    def loss_of(idx: np.ndarray) -> torch.Tensor | None:
        if len(idx) < 2:  # a lone patient has no pair to rank against
            return None
        return step_loss(model, inputs, idx, rng, bins, event_t, cfg, targets, amkd)

    optimise(model.parameters(), cfg.epochs, batches, loss_of, lr=cfg.lr, weight_decay=cfg.weight_decay,
             compute=compute, desc=f"{method.name} fold {fold}")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    return {"fold": fold, "member": member, "state": state, "edges": edges, **scaling}


def fit_scaling(data: CohortData, train: np.ndarray, rna: bool) -> dict:
    """Per-feature mean/std of the training patients' patches (combined from per-patient
    moments, one streaming pass over each bag) and RNA — never the test fold's."""
    scaling = {}
    if data.bags is not None:
        total = Moments.empty(data.dim)
        for i in train:
            total = total.merge(data.bags.moments(i))
        scaling["feat_mean"] = total.mean.astype(np.float32)
        scaling["feat_std"] = (total.std + 1e-4).astype(np.float32)
    if rna and data.rna is not None:
        scaling["rna_mean"], scaling["rna_std"] = data.rna[train].mean(0), data.rna[train].std(0) + 1e-6
    return scaling


def step_loss(model, inputs, idx, rng, bins, events, cfg, targets, amkd):
    """The loss of one batch: the survival NLL, plus for the student AMKD's hazard distillation,
    gene-guided enhancement and adaptive redundancy reduction, weighted by `amkd`.

    Parameters
    ----------
    model : torch.nn.Module
        The model trained.
    inputs : Inputs
        The fold's per-patient inputs.
    idx : np.ndarray
        Rows of the batch's patients.
    rng : np.random.Generator
        Samples at most `cfg.max_patches` patches per bag.
    bins : torch.Tensor
        (patients,) each patient's time bin.
    events : torch.Tensor
        (patients,) 1 event, 0 censored.
    cfg : TrainConfig
        `alpha`, the extra weight of uncensored patients.
    targets : dict or None
        The teacher's outputs (distillation_targets) for the student; None: the NLL alone.
    amkd : AMKDConfig or None
        The student's loss weights; read only with `targets`.

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    if targets is None:
        logits, _ = inputs(model, idx, rng)
        return losses.nll_survival(logits, bins[idx], events[idx], cfg.alpha)
    z, pseudo = inputs(model, idx, rng, encode=True)
    logits = model.head(z)
    t_logits, t_z, t_genomic = (targets[k][idx] for k in ("logits", "z", "genomic"))
    discrepancy = (losses.risk_score(logits) - losses.risk_score(t_logits)).abs()
    return (losses.nll_survival(logits, bins[idx], events[idx], cfg.alpha)
            + amkd.kd * losses.hazard_distillation(logits, t_logits, amkd.temperature)
            + amkd.genomic * losses.genomic_alignment(pseudo, t_genomic)
            + amkd.redundancy * losses.adaptive_redundancy_reduction(z, t_z, discrepancy, amkd.off_diagonal,
                                                                     amkd.sharpness))


@torch.no_grad()
def distillation_targets(teacher: dict, data: CohortData, inputs: Inputs, train, compute) -> dict:
    """The frozen teacher's logits, fused embedding and RNA embedding for the training patients
    (eval mode: no dropout); rows of other patients stay zero and are never read.

    Parameters
    ----------
    teacher : dict
        {"model": the frozen teacher of the fold}.
    data : CohortData
        The cohort.
    inputs : Inputs
        The fold's inputs (bags and RNA scaled on its training patients).
    train : np.ndarray
        Rows of `data.patients` of the training patients.
    compute : Compute
        Device and precision.

    Returns
    -------
    dict
        `logits` (patients, bins), `z` (patients, hidden) and `genomic` (patients, hidden).
    """
    model = teacher["model"].to(compute.device).eval()
    n = len(data.patients)
    out = {k: torch.zeros(n, d, device=compute.device) for k, d in
           (("logits", model.head.out_features), ("z", model.head.in_features), ("genomic", model.head.in_features))}
    for i in train:
        with compute.autocast():
            z, genomic = model.encode(inputs.bag(i), inputs.rna[i])
        z, genomic = z.float(), genomic.float()
        out["logits"][i], out["z"][i], out["genomic"][i] = model.head(z), z, genomic
    return out


@torch.no_grad()
def predict_logits(model, data: CohortData, checkpoint: dict, compute, idx=None) -> torch.Tensor:
    """Hazard logits (patients, bins) for patients `idx` (default all) with one fold's checkpoint.

    Parameters
    ----------
    model : torch.nn.Module
        The method's architecture (build_model); the checkpoint's weights are loaded into it.
    data : CohortData
        The cohort predicted.
    checkpoint : dict
        One fold model's checkpoint (fit_fold): weights and the scaling applied to the inputs.
    compute : Compute
        Device and precision.
    idx : np.ndarray or None
        Rows of `data.patients` to predict; None: every patient.

    Returns
    -------
    torch.Tensor
        (patients, bins) on the CPU.
    """
    model.load_state_dict(checkpoint["state"])
    model.to(compute.device).eval()
    inputs = Inputs(data, checkpoint, compute, 0)
    idx = np.arange(len(data.patients)) if idx is None else idx
    return torch.cat([inputs(model, [i])[0] for i in idx]).cpu()


def predict(model, data: CohortData, checkpoint: dict, compute, idx=None) -> np.ndarray:
    """Risk (higher = worse) for patients `idx` (default all) with one fold's checkpoint.

    Parameters
    ----------
    model, data, checkpoint, compute, idx
        As in `predict_logits`.

    Returns
    -------
    np.ndarray
        (patients,) minus the expected number of time bins survived.
    """
    return losses.risk_score(predict_logits(model, data, checkpoint, compute, idx)).numpy()


def cross_validate(method: str | SurvivalMethod, data: CohortData, cfg: TrainConfig, compute: Compute = CPU,
                   teacher_ckpt: dict | None = None, amkd: AMKDConfig | None = None) -> tuple[dict, pd.DataFrame]:
    """Every fold of patients.tsv: train `cfg.members` models on the other folds, predict the
    fold with their mean risk. Returns the checkpoint bundle (with each fold's median training
    risk, the cut for risk groups) and out-of-fold predictions (patient, fold, time, event, risk).

    Parameters
    ----------
    method : str
        "teacher", "student", "pathology" or "rna".
    data : CohortData
        The cohort, with each patient's `fold` in `data.patients`.
    cfg : TrainConfig
        Training settings, the same for every method.
    compute : Compute, default CPU
        Device and precision.
    teacher_ckpt : dict or None
        The teacher's bundle (its models.pt), for the student: each student member distils from the teacher
        of the same fold and member.
    amkd : AMKDConfig or None
        The student's loss weights; with `select`, chosen per fold by select_amkd.

    Returns
    -------
    bundle : dict
        method, config, dim, genes, gene_sets, every fold's checkpoints, train_median_risk per fold (and
        `selection` where AMKD weights were chosen).
    predictions : pandas.DataFrame
        patient, fold, time, event, risk.
    """
    method = survival_methods.get(method)
    folds = sorted(data.patients["fold"].unique())
    bundle = {"method": method.name, "spec": asdict(method), "config": asdict(cfg),
              "dim": data.dim if data.bags else None, "genes": data.genes, "gene_sets": data.gene_sets, "folds": [],
              "train_median_risk": {}}
    frames = []
    for fold in tqdm(folds, desc=method.name, unit="fold"):
        test = np.flatnonzero(data.patients["fold"].to_numpy() == fold)
        train = np.flatnonzero(data.patients["fold"].to_numpy() != fold)
        members, chosen = [], amkd
        if method.distilled and amkd is not None and amkd.select:
            first_teacher = {"model": load_fold_model(teacher_ckpt, fold, 0, data)}
            chosen, scores = select_amkd(data, train, cfg, int(fold), compute, first_teacher, amkd, method)
            bundle.setdefault("selection", {})[int(fold)] = scores
        for member in range(cfg.members):
            teacher = {"model": load_fold_model(teacher_ckpt, fold, member, data)} if method.distilled else None
            ckpt = fit_fold(method, data, train, cfg, fold, compute, teacher, chosen, member)
            if method.distilled and not method.rna:  # the student's inputs never include RNA
                ckpt.pop("rna_mean", None), ckpt.pop("rna_std", None)
            members.append(ckpt)
        bundle["folds"] += members
        model = build_model(method, data, cfg)
        bundle["train_median_risk"][int(fold)] = float(np.median(predict_mean(model, data, members, compute, train)))
        risk = predict_mean(model, data, members, compute, test)
        frames.append(data.patients.iloc[test][["patient", "fold", "time", "event"]].assign(risk=risk))
        log.info("%s fold %d: %d models trained on %d patients, predicted %d", method.name, fold, len(members),
                 len(train), len(test))
    return bundle, pd.concat(frames, ignore_index=True)


def predict_mean(model, data: CohortData, checkpoints: list[dict], compute, idx=None) -> np.ndarray:
    """The mean risk of several checkpoints (a fold's members, or a whole bundle's models).

    Parameters
    ----------
    model : torch.nn.Module
        The method's architecture (build_model); each checkpoint's weights are loaded into it in turn.
    data : CohortData
        The cohort predicted.
    checkpoints : list of dict
        Checkpoints of fit_fold.
    compute : Compute
        Device and precision.
    idx : np.ndarray or None
        Rows of `data.patients` to predict; None: every patient.

    Returns
    -------
    np.ndarray
        (patients,) risk, higher = worse.
    """
    return np.mean([predict(model, data, ckpt, compute, idx) for ckpt in checkpoints], axis=0)


def load_fold_model(bundle: dict, fold: int, member: int, data: CohortData) -> torch.nn.Module:
    """One trained model of a bundle (the teacher a student member distils from)."""
    cfg = TrainConfig(**bundle["config"])
    ckpt = next(c for c in bundle["folds"] if c["fold"] == fold and c["member"] == member % cfg.members)
    model = build_model(bundle_method(bundle), data, cfg)
    model.load_state_dict(ckpt["state"])
    return model


def predict_external(bundle: dict, data: CohortData, compute: Compute = CPU) -> np.ndarray:
    """Risk on another cohort without retraining: the mean risk of all the bundle's models. The
    cohort's features must have the width the models were trained on (one encoder)."""
    if data.bags is not None and bundle.get("dim") and data.dim != bundle["dim"]:
        files = getattr(data.bags, "files", None)
        raise InputError(files[0][0] if files else "external cohort",
                         f"features are {data.dim}-d, the {bundle['method']} models take {bundle['dim']}-d: an "
                         "external cohort needs features of the training cohort's encoder")
    model = build_model(bundle_method(bundle), data, TrainConfig(**bundle["config"]))
    return predict_mean(model, data, bundle["folds"], compute)
