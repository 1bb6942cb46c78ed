"""What the expression study's rules call: files in, files out, one function per rule.

torch, timm and scanpy are imported by the steps that use them: the rules run in two
environments (envs/scverse.yaml: prepare, evaluate; envs/torch-gpu.yaml: features, fits)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.expression.evaluate import dataset_table, gene_lists, score_fold
from tissuekd.expression.pseudospots import read_pseudospots
from tissuekd.io.atomic import atomic_path
from tissuekd.io.hest import HEST_PATCH_MPP, drop_empty_spots, read_hest, read_patch_index
from tissuekd.io.visium import read_spaceranger

log = logging.getLogger(__name__)
TARGET_SUM = 1e4  # total counts per spot after normalisation, before log1p
METHODS = ("cmrcnet", "contrastive", "ridge", "knn", "random")
TRAINED = ("cmrcnet", "contrastive")


# ---- per sample ----------------------------------------------------------------------------

def prepare_sample(fmt: str, image: str | None, out_spots: str, out_expression: str, out_sample: str, *,
                   st: str | None = None, metadata: str | None = None, tissue_seg: str | None = None,
                   outs: str | None = None,
                   cells: str | None = None, cell_counts: str | None = None, slide: str | None = None,
                   name: str = "", pseudo_spots: dict | None = None, backend: str = "auto",
                   markers: list[str] = (), dataset: str = "", patches: str | None = None) -> None:
    """The rule expression_prepare: spots under tissue (barcode, x, y in level-0 px), their
    expression normalised once (total counts to 1e4, then log1p; scanpy), and the sample's scale.
    `fmt` "hest" reads `st`, `metadata` and `tissue_seg` (metadata and image optional where the
    sheet gives the release's patch file: HEST-benchmark ships neither); "visium" reads Space
    Ranger's `outs` folder; "xenium" pools a niche slide's ingested `cells` and `cell_counts` into pseudo-spots.
    `markers`, the config's for the sample's `dataset`, must be measured here (each sample trains
    some fold): checked now, before the features, as well as in each fold; so is the release's
    `patches` file, where the sheet gives one (its index: img, barcode)."""
    import scanpy as sc

    if patches:
        read_patch_index(patches)
    if fmt == "hest":
        sample = read_hest(st, metadata, image, backend, tissue_seg)
    elif fmt == "visium":
        sample = read_spaceranger(outs, image, backend)
    elif fmt == "xenium":
        sample = read_pseudospots(cells, cell_counts, slide, name, **(pseudo_spots or {}))
    else:
        raise InputError(st or outs or image, f"unknown format {fmt!r} (known: hest, visium, xenium)")
    sample = drop_empty_spots(sample, st or outs or cells)
    require_markers(markers, list(sample.genes), f"dataset {dataset}", f"sample {st or outs or cells}")
    adata = ad.AnnData(sample.counts, obs=pd.DataFrame(index=sample.barcodes), var=pd.DataFrame(index=sample.genes))
    adata.uns["source"] = str(st or outs or cells)  # named in errors about this sample's genes
    sc.pp.normalize_total(adata, target_sum=TARGET_SUM)
    sc.pp.log1p(adata)
    scale = f"{sample.mpp:.3f} µm/px" if sample.mpp > 0 else "no pixel size (the release's patches are encoded)"
    log.info("%s: %d spots under tissue, %d genes, %s", st or outs or cells, adata.n_obs, adata.n_vars, scale)
    with atomic_path(out_spots) as tmp:
        pd.DataFrame({"barcode": sample.barcodes, "x": sample.xy[:, 0], "y": sample.xy[:, 1]}).to_parquet(tmp)
    with atomic_path(out_expression) as tmp:
        adata.write_h5ad(tmp)
    with atomic_path(out_sample) as tmp:
        tmp.write_text(json.dumps({"mpp": sample.mpp, "spot_diameter_um": sample.spot_diameter_um,
                                   "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars)}))


def extract_spot_features(spots: str, sample: str, image: str | None, spec, out: str, *, crop_px: int = 224,
                          batch_size: int = 64, device: str = "auto", precision: str = "auto",
                          threads: int | None = None, backend: str = "auto", progress: bool = True,
                          reuse_encoder: bool = False, patches: str | None = None,
                          patch_mpp: float = HEST_PATCH_MPP) -> None:
    """The rule expression_features: one patch per spot, centred on it, cut at the encoder's
    resolution (112 µm at 224 px and 0.5 µm/px, the HEST protocol) by the shared block crop
    reader; written as `features`, `coords` (spot centres, level-0 px) and `barcode`.
    `patches` (a HEST patch file) encodes the release's own patches instead, resized to the
    encoder's input; spots without a patch there are left out (logged). `reuse_encoder` builds
    the encoder once per process (jobs run inside Snakemake's)."""
    from tissuekd import compute
    from tissuekd.encoders.extract import Encoder, write_features
    from tissuekd.encoders.registry import build_encoder, cached_encoder

    run = compute.resolve(device, precision, threads)
    table, batches, attrs = spot_batches(spots, sample, image, spec, crop_px, batch_size, backend, run.device,
                                         patches, patch_mpp)
    log.info("%s: %d spots, %s patches for %s (%s, %s)", sample, len(table),
             "stored" if patches else f"{crop_px}-px", spec.name, run.device, run.precision)
    encoder = Encoder((cached_encoder if reuse_encoder else build_encoder)(spec), spec, run)
    write_features(out, batches, encoder, table[["x", "y"]].to_numpy().astype("f4"),
                   {**attrs, "precision": run.precision}, progress, extra={"barcode": table["barcode"].to_numpy()})


def extract_spot_patches(spots: str, sample: str, image: str | None, spec, out: str, *, crop_px: int = 224,
                         batch_size: int = 64, backend: str = "auto", patches: str | None = None,
                         patch_mpp: float = HEST_PATCH_MPP) -> None:
    """The rule expression_patches (fine-tuning only): the patches expression_features encodes,
    the same spots in the same order, as a HEST-layout patch file at the encoder's input size."""
    import torch

    from tissuekd.expression.finetune import write_patches

    table, batches, _ = spot_batches(spots, sample, image, spec, crop_px, batch_size, backend, torch.device("cpu"),
                                     patches, patch_mpp)
    write_patches(out, batches, table[["x", "y"]].to_numpy().astype("f4"), table["barcode"].to_numpy(), crop_px)


def spot_batches(spots, sample, image, spec, crop_px, batch_size, backend, device, patches, patch_mpp):
    """(the spots read, batches of their uint8 patches, attributes saying where they came from):
    cut from the image, or the sheet's HEST patch file resized to the encoder's input."""
    table = pd.read_parquet(spots)
    mpp = json.loads(Path(sample).read_text())["mpp"]
    attrs = {"encoder": spec.name, "arch": spec.arch, "mpp": spec.mpp, "crop_px": crop_px, "he_mpp": mpp,
             "coords": "spot centres, level-0 pixels (x, y)"}
    if patches:
        table, batches = stored_patches(patches, table, spec, crop_px, patch_mpp, batch_size)
        attrs["patches"] = str(patches)
    else:
        batches, attrs["level"] = cut_patches(image, table, spec, crop_px, mpp, batch_size, backend, device)
    return table, batches, attrs


def cut_patches(image: str, table: pd.DataFrame, spec, crop_px: int, mpp: float, batch_size: int, backend: str,
                device):
    """Batches of patches cut from the slide around each spot, and the pyramid level read."""
    from tissuekd.io.wsi import open_slide
    from tissuekd.spatial.crops import CropBatches, CropGeometry, crop_loader, default_workers

    with open_slide(image, backend) as slide:
        geometry = CropGeometry.for_slide(slide, mpp, spec.mpp, crop_px)
    batches = CropBatches(image, backend, table[["x", "y"]].to_numpy(), geometry, batch_size)
    return crop_loader(batches, default_workers(device)), geometry.level


def stored_patches(path: str, table: pd.DataFrame, spec, crop_px: int, patch_mpp: float, batch_size: int):
    """The spots that have a patch in the HEST patch file, and batches of their patches; the
    patches must span what the encoder reads (within 5%)."""
    from tissuekd.spatial.crops import StoredPatchBatches

    barcodes, side = read_patch_index(path)
    span, wanted = side * patch_mpp, crop_px * spec.mpp
    if abs(span - wanted) > 0.05 * wanted:
        raise InputError(path, f"its patches span {span:g} µm ({side} px at {patch_mpp:g} µm/px) but encoder "
                               f"{spec.name} reads {wanted:g} µm ({crop_px} px at {spec.mpp:g} µm/px): set "
                               "expression.patch_mpp to the patches' scale, or leave the sheet's patches column "
                               "empty to cut patches from the image")
    where = pd.Index(barcodes).get_indexer(table["barcode"])
    if (where < 0).all():
        raise InputError(path, f"none of its {len(barcodes)} barcodes is a spot of the sample "
                               f"(e.g. {barcodes[:2].tolist()} vs {table['barcode'].head(2).tolist()})")
    if (where < 0).any():
        log.info("%s: %d of %d spots have no patch there and are left out", path, (where < 0).sum(), len(table))
    kept = table[where >= 0].reset_index(drop=True)
    return kept, StoredPatchBatches(path, where[where >= 0], crop_px, batch_size)


# ---- per fold ------------------------------------------------------------------------------

def load_samples(names: list[str], features: list[str], expressions: list[str]
                 ) -> tuple[np.ndarray, list[ad.AnnData], np.ndarray]:
    """Features (rows: every sample's spots, in order), each sample's expression (rows aligned to
    its features by barcode) and each row's sample name."""
    feats, exprs, owner = [], [], []
    for name, fpath, epath in zip(names, features, expressions):
        with h5py.File(fpath, "r") as h5:
            feats.append(h5["features"][:])
            barcodes = h5["barcode"][:].astype(str)
        adata = ad.read_h5ad(epath)
        missing = ~pd.Index(barcodes).isin(adata.obs_names)
        if missing.any():
            raise InputError(epath, f"{missing.sum()} spots of {fpath} have no expression")
        exprs.append(adata[barcodes])
        owner.append(np.full(len(barcodes), name))
    return np.concatenate(feats), exprs, np.concatenate(owner)


def dense(adatas: list[ad.AnnData], genes: list[str], paths: list[str]) -> np.ndarray:
    """(spots, genes) of the samples, stacked; a gene a sample lacks is an error naming it."""
    out = []
    for adata, path in zip(adatas, paths):
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            source = adata.uns.get("source", path)
            raise InputError(source, f"{len(missing)} gene(s) the fold selected on its training samples are missing, "
                                     f"e.g. {missing[:5]}: the samples of a dataset must measure the same genes")
        x = adata[:, genes].X
        out.append(np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32))
    return np.concatenate(out)


def common_genes(adatas: list[ad.AnnData], paths: list[str]) -> list[str]:
    """The genes every training sample measures. Fewer than half of the smallest sample's genes
    means the samples name genes differently (e.g. Ensembl ids beside symbols, as some HEST
    samples do): an error naming the samples, not a fold scored on a handful of genes."""
    common = sorted(set.intersection(*(set(a.var_names) for a in adatas)))
    smallest = min(a.n_vars for a in adatas)
    if len(common) < smallest / 2:
        # the odd one first: the sample sharing fewest of its genes with the others
        shared = [len(set(a.var_names) & set().union(*(set(b.var_names) for b in adatas if b is not a)))
                  for a in adatas]
        order = np.argsort(shared, kind="stable")
        named = [f"{adatas[i].uns.get('source', paths[i])} ({adatas[i].n_vars} genes, e.g. "
                 f"{list(adatas[i].var_names[:2])})" for i in order]
        raise InputError(adatas[order[0]].uns.get("source", paths[order[0]]),
                         f"the training samples share {len(common)} genes only; do they name genes the same way "
                         f"(symbols or Ensembl ids)? {'; '.join(named)}")
    log.info("%d genes measured by every training sample (of %d to %d per sample)", len(common), smallest,
             max(a.n_vars for a in adatas))
    return common


def gene_moments(adatas: list[ad.AnnData], genes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance over every spot of the samples, from sums of x and x² taken
    sample by sample on the sparse matrices: no dense spots x all-genes matrix."""
    total, squares, n = np.zeros(len(genes)), np.zeros(len(genes)), 0
    for adata in adatas:
        x = adata[:, genes].X
        total += np.asarray(x.sum(0), dtype=np.float64).ravel()
        squares += np.asarray(x.multiply(x).sum(0) if hasattr(x, "multiply") else (x * x).sum(0),
                              dtype=np.float64).ravel()
        n += adata.n_obs
    mean = total / n
    return mean, squares / n - mean**2


def require_markers(markers: list[str], common: list[str], whose: str, by: str) -> None:
    """The configured markers must be genes every training sample measures: name the config key
    (the shipped markers are the demo's; a real dataset of the same name has other genes)."""
    measured = set(common)
    unmeasured = [g for g in markers if g not in measured]
    if unmeasured:
        raise InputError("config expression.markers",
                         f"{len(unmeasured)} of the {len(markers)} marker genes of {whose} are not measured by "
                         f"{by}, e.g. {unmeasured[:5]} (the shipped markers are the demo's: list your dataset's, "
                         "or remove its entry)")


def fit_fold(method: str, fold: str, samples: list[str], patients: list[str], features: list[str],
             expressions: list[str], markers: list[str], settings: dict, out_predictions: str, out_pcc: str,
             out_summary: str, out_model: str | None = None, seed: int = 0, device: str = "auto",
             precision: str = "auto", threads: int | None = None, patches: list[str] | None = None,
             encoder=None) -> None:
    """The rules expression_train / expression_baseline: one method on one leave-one-patient-out
    fold of a dataset. Training spots are those of the other patients; the gene lists, the
    feature standardisation and the model see them only. Writes the test spots' predictions,
    per-gene r and per-list summaries (per test sample and pooled). Fine-tuning CMRCNet
    (`settings` finetune_blocks > 0) also needs every sample's `patches` file
    (expression_patches, in the order of `samples`) and the `encoder` spec."""
    if method not in METHODS:
        raise InputError("config expression.methods", f"unknown method {method!r} (known: {list(METHODS)})")
    is_test = np.array([p == fold for p in patients])
    if is_test.all() or not is_test.any():
        raise InputError(f"fold {fold}", "a fold needs training samples of other patients and test samples of its own")
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    train_args = [pick(xs, train_idx) for xs in (samples, features, expressions)]
    x_train, ad_train, _ = load_samples(*train_args)
    x_test, ad_test, owner = load_samples(*[pick(xs, test_idx) for xs in (samples, features, expressions)])
    common = common_genes(ad_train, pick(expressions, train_idx))
    require_markers(markers, common, f"fold {fold}'s dataset", "all its training samples")
    lists = gene_lists(*gene_moments(ad_train, common), np.array(common), markers)
    genes = sorted({g for names in lists.values() for g in names})
    y_train = dense(ad_train, genes, pick(expressions, train_idx))
    y_test = pd.DataFrame(dense(ad_test, genes, pick(expressions, test_idx)), columns=genes)
    mean, sd = x_train.mean(0), x_train.std(0) + 1e-6  # training statistics only
    z_train, z_test = (x_train - mean) / sd, (x_test - mean) / sd
    log.info("fold %s, %s: %d training spots (%d samples), %d test spots (%d samples), %d genes scored",
             fold, method, len(x_train), len(train_idx), len(x_test), len(test_idx), len(genes))
    tuning = None
    if method in TRAINED and settings.get("finetune_blocks", 0):
        if not patches or encoder is None:
            raise InputError(f"fold {fold}", "fine-tuning (finetune_blocks > 0) needs the samples' patch files and "
                                             "the encoder")
        tuning = FineTuning(encoder, pick(patches, train_idx), [a.obs_names for a in ad_train],
                            pick(patches, test_idx), [a.obs_names for a in ad_test], mean, sd)
    preds, model_state = predict(method, x_train, z_train, y_train, x_test, z_test, genes, lists, settings,
                                 seed, device, precision, threads, tuning)
    per_gene, summary = score_fold(y_test, preds, owner, lists)
    for table in (per_gene, summary):
        table.insert(0, "fold", fold)
        table.insert(0, "method", method)
    barcodes = np.concatenate([np.asarray(a.obs_names) for a in ad_test])
    columns = {f"{name}:{g}": preds[name][:, i] for name, names in lists.items() for i, g in enumerate(names)}
    with atomic_path(out_predictions) as tmp:
        pd.DataFrame({"sample": owner, "barcode": barcodes, **columns}).to_parquet(tmp, index=False)
    with atomic_path(out_pcc) as tmp:
        per_gene.to_csv(tmp, sep="\t", index=False)
    if out_model:
        import torch

        with atomic_path(out_model) as tmp:
            torch.save({**model_state, "genes": genes, "feature_mean": torch.from_numpy(mean),
                        "feature_sd": torch.from_numpy(sd),
                        "train_samples": pick(samples, train_idx)}, tmp)
    with atomic_path(out_summary) as tmp:
        summary.to_csv(tmp, sep="\t", index=False)


@dataclass
class FineTuning:
    """What fine-tuning the encoder's tail needs besides the features: the encoder, and the
    training and test samples' patch files with their spots' barcodes (rows of the features)."""

    spec: object
    train_patches: list[str]
    train_barcodes: list
    test_patches: list[str]
    test_barcodes: list
    feature_mean: np.ndarray
    feature_sd: np.ndarray

    def encoder(self, blocks: int):
        from tissuekd.encoders.registry import build_encoder
        from tissuekd.expression.finetune import TunedEncoder

        return TunedEncoder(build_encoder(self.spec), self.spec, blocks, self.feature_mean, self.feature_sd)


def predict(method, x_train, z_train, y_train, x_test, z_test, genes, lists, settings, seed, device, precision,
            threads, tuning: FineTuning | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Each list's predictions (test spots, list genes) and what to save of the model."""
    import torch

    from tissuekd import compute
    from tissuekd.expression import baselines
    from tissuekd.expression.finetune import PatchBank, embed_patches
    from tissuekd.expression.retrieval import distinct_neighbourhoods, mean_of_neighbours, retrieve
    from tissuekd.expression.train import CMRCNetConfig, fit_cmrcnet

    cfg = CMRCNetConfig(**settings)
    cols = {g: i for i, g in enumerate(genes)}

    def by_list(pred: np.ndarray) -> dict[str, np.ndarray]:
        return {name: pred[:, [cols[g] for g in names]] for name, names in lists.items()}

    if method in TRAINED:
        run = compute.resolve(device, precision, threads, workload="model")
        fit = dict(reconstruct=method == "cmrcnet", seed=seed, compute=run)
        z_train_t, y_train_t = torch.from_numpy(z_train), torch.from_numpy(y_train)
        state = {}
        if tuning is None:
            model = fit_cmrcnet(z_train_t, y_train_t, cfg, **fit)
            with torch.no_grad():
                query = model.embed_image(torch.from_numpy(z_test).to(run.device))
        else:
            if run.device.type == "cpu":
                log.warning("fine-tuning the last %d blocks of %s on the CPU: slow (meant for GPU nodes)",
                            cfg.finetune_blocks, tuning.spec.name)
            encoder = tuning.encoder(cfg.finetune_blocks)
            with PatchBank(tuning.train_patches, tuning.train_barcodes) as train_patches:
                model = fit_cmrcnet(z_train_t, y_train_t, cfg, tuned=(encoder, train_patches), **fit)
            with torch.no_grad(), PatchBank(tuning.test_patches, tuning.test_barcodes) as test_patches:
                query = embed_patches(model, encoder, test_patches, run, cfg.batch_size)
            state["encoder_tail"] = encoder.tail_state()
        with torch.no_grad():
            bank = model.embed_genes(y_train_t.to(run.device))
            index = retrieve(query, bank, cfg.top_k, cfg.index, cfg.nprobe)
        if len(index) > 1 and distinct_neighbourhoods(index) == 1:
            log.warning("every one of the %d test spots retrieved the same %d training spots: the image embedding "
                        "collapsed to one point, so every prediction is the same (with fine-tuning: lower "
                        "expression.cmrcnet.finetune_lr)", len(index), index.shape[1])
        state.update(state_dict=model.state_dict(), config=asdict(cfg))
        return by_list(mean_of_neighbours(index, y_train)), state
    if method == "knn":
        return by_list(baselines.knn_predict(z_train, y_train, z_test, cfg.top_k, cfg.index, cfg.nprobe)), {}
    if method == "random":
        return by_list(baselines.random_predict(y_train, len(z_test), cfg.top_k, seed)), {}
    return {name: baselines.ridge_predict(x_train, y_train[:, [cols[g] for g in names]], x_test, seed)
            for name, names in lists.items()}, {}


# ---- per dataset ---------------------------------------------------------------------------

def evaluate_dataset(summaries: list[str], dataset: str, encoder: str, out: str) -> None:
    """The rule expression_evaluate: every method's folds -> one table (mean ± SD over folds)."""
    table = dataset_table(pd.concat([pd.read_csv(p, sep="\t") for p in summaries], ignore_index=True))
    table.insert(0, "encoder", encoder)
    table.insert(0, "dataset", dataset)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")

