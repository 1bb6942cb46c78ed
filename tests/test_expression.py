"""The expression study's library: the contrastive loss against BLEEP's formula, Pearson r
against scipy, exact chunked retrieval against brute force, the HEST reader's errors, and that
nothing of a test sample reaches training."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from scipy import sparse

from tissuekd.demo.expression import make_sample, make_spaceranger_sample
from tissuekd.encoders.registry import EncoderSpec
from tissuekd.errors import InputError
from tissuekd.expression import steps
from tissuekd.expression.baselines import random_predict, ridge_predict
from tissuekd.expression.evaluate import dataset_table, gene_gene_agreement, gene_lists, pearson_per_gene
from tissuekd.expression.losses import contrastive_loss, reconstruction_loss
from tissuekd.expression.models import CMRCNet
from tissuekd.expression.retrieval import distinct_neighbourhoods, topk_cosine
from tissuekd.expression.train import (
    CMRCNetConfig,
    effective_rank,
    fit_cmrcnet,
    gene_reliance,
    image_side_gradients,
    token_mask,
)
from tissuekd.io.hest import read_hest
from tissuekd.io.visium import read_spaceranger

SPEC = EncoderSpec.from_config("demo-mobilenet", {"model": "mobilenetv3_small_100", "mpp": 1.0, "input_px": 112,
                                                   "weights": "random", "seed": 0})
FAST = {"stage1_epochs": 2, "stage2_epochs": 2, "top_k": 10}


def test_contrastive_loss_is_bleeps_soft_target_cross_entropy():
    """BLEEP (bowang-lab/BLEEP, models.py): targets = softmax((I Iᵀ + G Gᵀ)/2 · τ), the mean of the
    row-wise soft cross-entropies of G Iᵀ/τ and of its transpose; torch's cross_entropy with
    probability targets is the reference."""
    gen = torch.Generator().manual_seed(0)
    image, gene = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)
    for tau in (1.0, 0.5):
        logits = gene @ image.T / tau
        targets = F.softmax((image @ image.T + gene @ gene.T) / 2 * tau, dim=-1)
        reference = (F.cross_entropy(logits, targets, reduction="none")
                     + F.cross_entropy(logits.T, targets.T, reduction="none")).mean() / 2
        assert contrastive_loss(image, gene, tau).item() == pytest.approx(reference.item(), rel=1e-6)


def test_masked_tokens_are_rebuilt_from_the_genes_alone():
    """Stage 2 must read the genes: a masked token's reconstruction depends on the spot's
    expression and not on its image (entry masking let the visible half rebuild the rest); the
    loss reaches the image side through its target, whose scale it cannot shrink away."""
    torch.manual_seed(0)
    model = CMRCNet(feature_dim=32, n_genes=12).eval()
    features, expression = torch.randn(6, 32), torch.randn(6, 12)
    keep = token_mask(6, 8, 0.5, torch.Generator().manual_seed(0))
    assert (~keep).sum(1).tolist() == [4] * 6

    def rebuilt(f, y):
        return model.reconstruct(model.image_tokens(f), keep, model.gene_encoder(y)[0])

    base = rebuilt(features, expression)
    other_image, other_genes = rebuilt(torch.randn(6, 32), expression), rebuilt(features, torch.randn(6, 12))
    assert torch.equal(other_image[~keep], base[~keep]) and not torch.equal(other_image[keep], base[keep])
    assert (other_genes[~keep] - base[~keep]).abs().max() > 1e-3
    tokens = model.image_tokens(features)
    loss = reconstruction_loss(model.reconstruct(tokens, keep, model.gene_encoder(expression)[0]), tokens, keep)
    loss.backward()
    assert model.tokens.weight.grad.abs().sum() > 0 and model.gene_encoder.hidden[0].weight.grad.abs().sum() > 0
    rebuilt_tokens = base.detach()
    for scaled in (1e-3 * tokens, 50 * tokens + 2):  # a token's scale and offset are not the loss's to move
        assert reconstruction_loss(rebuilt_tokens, scaled, keep).item() == pytest.approx(
            reconstruction_loss(rebuilt_tokens, tokens, keep).item(), rel=1e-3)
    assert reconstruction_loss(base, base, torch.ones_like(keep)).item() == 0  # mask_ratio 0: nothing masked


def test_trained_reconstruction_reads_the_genes_and_says_so(caplog):
    """Features that the genes determine: after stage 2, rebuilding from another spot's genes
    costs clearly more than from the spot's own, and the fold's log says both."""
    gen = torch.Generator().manual_seed(0)
    expression = torch.randn(256, 20, generator=gen)
    features = expression @ torch.randn(20, 48, generator=gen) + 0.1 * torch.randn(256, 48, generator=gen)
    features = (features - features.mean(0)) / features.std(0)  # standardised, as fit_fold gives them
    cfg = CMRCNetConfig(stage1_epochs=5, stage2_epochs=40, batch_size=64)
    with caplog.at_level(logging.INFO, logger="tissuekd.expression.train"):
        model = fit_cmrcnet(features, expression, cfg, seed=0)
    own, shuffled = gene_reliance(model, features, expression, 0.5, seed=1)
    assert own < 0.7 * shuffled, (own, shuffled)
    assert "with their genes" in caplog.text and "shuffled" in caplog.text and "effective rank" in caplog.text
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    con, rec = image_side_gradients(model, features, expression, cfg, seed=0)  # the fold log's draw
    assert con > 0 and rec > 0 and "from the reconstruction" in caplog.text
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)  # the check touches no .grad
               for g, p in zip(before, model.parameters()))


def test_effective_rank_counts_the_directions_spots_spread_over():
    gen = torch.Generator().manual_seed(0)
    line = torch.randn(500, 1, generator=gen) * torch.randn(1, 16, generator=gen)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.ones(50, 16)) == 0.0
    assert 14 < effective_rank(torch.randn(5000, 16, generator=gen)) <= 16

def test_pearson_per_gene_equals_scipy_and_is_nan_for_a_constant_gene():
    rng = np.random.default_rng(0)
    true, pred = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    pred[:, 1] += 2 * true[:, 1]
    pred[:, 4] = 3.0
    r = pearson_per_gene(true, pred)
    for j in range(4):
        assert r[j] == pytest.approx(scipy.stats.pearsonr(true[:, j], pred[:, j]).statistic, abs=1e-12)
    assert np.isnan(r[4])
    assert gene_gene_agreement(true, true) == pytest.approx(1.0)
    # distinct sides, against scipy pair by pair; gene 4 is constant in pred, so it is left out
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    t = [scipy.stats.pearsonr(true[:, i], true[:, j]).statistic for i, j in pairs]
    p = [scipy.stats.pearsonr(pred[:, i], pred[:, j]).statistic for i, j in pairs]
    assert gene_gene_agreement(true, pred) == pytest.approx(scipy.stats.pearsonr(t, p).statistic, abs=1e-12)


def test_the_dataset_table_is_mean_and_sd_over_folds_of_each_way_of_scoring():
    # folds, methods and lists in an order that leaves the pooled index unsorted (pandas then
    # warned "indexing past lexsort depth" at every lookup)
    rows = []
    for fold, shift in (("P2", 0.2), ("P1", 0.0)):
        for method in ("ridge", "cmrcnet"):
            for gene_list in ("HVG", "HEG"):
                base = 0.5 if method == "cmrcnet" else 0.3
                rows += [{"method": method, "gene_list": gene_list, "fold": fold, "scope": scope,
                          "pcc_mean": base + shift + offset, "gene_gene_r": 0.1 + shift + offset}
                         for scope, offset in (("pooled", 0.05), (f"{fold}_a", 0.0), (f"{fold}_b", 0.02))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = dataset_table(pd.DataFrame(rows)).set_index(["method", "gene_list"])
    row = table.loc[("cmrcnet", "HVG")]
    assert row["n_folds"] == 2
    assert row["pcc_per_sample_mean"] == pytest.approx(np.mean([0.51, 0.71]))
    assert row["pcc_per_sample_sd"] == pytest.approx(np.std([0.51, 0.71], ddof=1))
    assert row["pcc_pooled_mean"] == pytest.approx(np.mean([0.55, 0.75]))
    assert row["pcc_pooled_sd"] == pytest.approx(np.std([0.55, 0.75], ddof=1))
    # gene-gene r: per test sample, averaged per fold (0.11, 0.31), then mean and SD over folds
    assert row["gene_gene_r_mean"] == pytest.approx(0.21)
    assert row["gene_gene_r_sd"] == pytest.approx(np.std([0.11, 0.31], ddof=1))
    assert table.loc[("ridge", "HEG"), "pcc_pooled_mean"] == pytest.approx(np.mean([0.35, 0.55]))


def test_chunked_top_k_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(37, 6, generator=gen), torch.randn(200, 6, generator=gen)
    brute = (F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T).argsort(dim=-1, descending=True)[:, :7]
    assert torch.equal(topk_cosine(queries, bank, 7, chunk=5), brute)


def test_collapsed_queries_retrieve_one_neighbourhood():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(100, 8, generator=gen)
    spread, collapsed = torch.randn(20, 8, generator=gen), torch.ones(20, 8) + 1e-4 * torch.randn(20, 8, generator=gen)
    assert distinct_neighbourhoods(topk_cosine(spread, bank, 10).numpy()) > 10
    assert distinct_neighbourhoods(topk_cosine(collapsed, bank, 10).numpy()) == 1


def test_the_ivf_index_visiting_every_list_finds_the_exact_top_k():
    """faiss IVF over normalised vectors with inner product is cosine search: with every list
    probed it must return the exact neighbours; with few lists probed it is approximate."""
    from tissuekd.expression.retrieval import ivf_index, topk_ivf

    rng = np.random.default_rng(0)
    bank, queries = rng.standard_normal((3000, 16)).astype(np.float32), rng.standard_normal((50, 16)).astype(np.float32)
    exact = topk_cosine(torch.from_numpy(queries), torch.from_numpy(bank), 10).numpy()
    index = ivf_index(bank, nlist=20)
    found = topk_ivf(index, queries, 10, nprobe=20)
    assert all(set(a) == set(b) for a, b in zip(found, exact))
    one_list = topk_ivf(index, queries, 10, nprobe=1)
    assert not all(set(a) == set(b) for a, b in zip(one_list, exact))


def test_ridge_is_the_hest_benchmark_regression_fitted_on_training_spots_only():
    """StandardScaler -> PCA -> Ridge, alpha = 100 / (d * n_genes), no intercept: with 40 features
    PCA keeps every dimension (a rotation, to which ridge is invariant), so the closed form on the
    standardised features is the reference. A test spot changes its own prediction only."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(260, 40)) * rng.uniform(0.1, 5, 40) + rng.uniform(-3, 3, 40)
    y = x[:, :5] @ rng.normal(size=(5, 6)) + rng.normal(size=(260, 6)) + 3.0  # an offset no intercept absorbs
    train_x, test_x, train_y = x[:200], x[200:], y[:200]
    z_train, z_test = ((v - train_x.mean(0)) / train_x.std(0) for v in (train_x, test_x))
    alpha = 100 / (40 * 6)
    reference = z_test @ np.linalg.solve(z_train.T @ z_train + alpha * np.eye(40), z_train.T @ train_y)
    pred = ridge_predict(train_x, train_y, test_x)
    assert pred == pytest.approx(reference, abs=0.02)  # lsqr's tolerance; alpha 1.0 would be 0.1 off
    moved = test_x.copy()
    moved[0] += 10
    again = ridge_predict(train_x, train_y, moved)
    assert np.array_equal(again[1:], pred[1:]) and not np.allclose(again[0], pred[0])


def test_the_random_floor_averages_k_training_spots_drawn_per_test_spot():
    train_y = np.random.default_rng(0).normal(size=(500, 3))
    pred = random_predict(train_y, 200, 10, seed=0)
    assert pred.shape == (200, 3) and len(np.unique(pred[:, 0])) > 190  # a fresh draw per test spot
    assert np.array_equal(pred, random_predict(train_y, 200, 10, seed=0))  # seeded
    assert pred.std(0) == pytest.approx(train_y.std(0) / np.sqrt(10), rel=0.25)  # means of 10 spots


def test_gene_lists_rank_by_mean_and_by_variance():
    mean, var = np.array([5.0, 1.0, 3.0, 4.0]), np.array([0.1, 9.0, 2.0, 0.5])
    lists = gene_lists(mean, var, np.array(list("abcd")), ["c"], n=2)
    assert lists == {"HEG": ["a", "d"], "HVG": ["b", "c"], "markers": ["c"]}
    # the moments the lists rank: mean and (population) variance of each gene over every training spot
    rng = np.random.default_rng(0)
    blocks = [rng.poisson(3, (n, 4)).astype(np.float32) for n in (30, 50)]
    adatas = [ad.AnnData(sparse.csr_matrix(b), var=pd.DataFrame(index=list("abcd"))) for b in blocks]
    m, v = steps.gene_moments(adatas, list("abcd"))
    assert m == pytest.approx(np.vstack(blocks).mean(0)) and v == pytest.approx(np.vstack(blocks).var(0), rel=1e-6)


@pytest.fixture(scope="module")
def hest(tmp_path_factory):
    """Three demo samples of one dataset (patients A, B, C), prepared, with features."""
    root = tmp_path_factory.mktemp("hest")
    names = {"S_A": "A", "S_B": "B", "S_C": "C"}
    for sample, patient in names.items():
        make_sample(root / "hest", sample, "IDC", patient, 0)
        prepare(root, sample)
        steps.extract_spot_features(root / f"{sample}.parquet", root / f"{sample}.json",
                                    root / f"hest/wsis/{sample}.tif", SPEC, root / f"{sample}.h5", crop_px=112,
                                    device="cpu", progress=False)
    return root, names


def prepare(root, sample):
    steps.prepare_sample("hest", root / f"hest/wsis/{sample}.tif", root / f"{sample}.parquet", root / f"{sample}.h5ad",
                         root / f"{sample}.json", st=root / f"hest/st/{sample}.h5ad",
                         metadata=root / f"hest/metadata/{sample}.json")


def fit(root, names, method, out, expression=None, markers=(), features=None, patients=None):
    """Fold A of the fixture's samples; `expression`, `features`, `patients` replace the fixture's."""
    samples = list(names)
    expression = expression or [str(root / f"{s}.h5ad") for s in samples]
    features = features or [str(root / f"{s}.h5") for s in samples]
    steps.fit_fold(method, "A", samples, patients or list(names.values()), features, expression,
                   list(markers), FAST, out / "pred.parquet", out / "pcc.tsv", out / "summary.tsv",
                   out / "model.pt" if method in steps.TRAINED else None, device="cpu")


def test_replacing_the_test_sample_leaves_the_trained_weights_bit_identical(hest, tmp_path):
    """Fold A holds out S_A: its expression is replaced by another sample's counts shuffled
    (and its spots renamed to match), then its features by noise, and the model trained on S_B
    and S_C (weights and feature standardisation) must not change."""
    root, names = hest
    fit(root, names, "cmrcnet", tmp_path / "one")
    other = ad.read_h5ad(root / "S_B.h5ad")
    own = ad.read_h5ad(root / "S_A.h5ad")
    rng = np.random.default_rng(1)
    rows = rng.integers(0, other.n_obs, own.n_obs)
    swapped = ad.AnnData(other.X[rows], obs=pd.DataFrame(index=own.obs_names), var=other.var)
    swapped.write_h5ad(tmp_path / "swapped.h5ad")
    fit(root, names, "cmrcnet", tmp_path / "two", [str(tmp_path / "swapped.h5ad"), str(root / "S_B.h5ad"),
                                                  str(root / "S_C.h5ad")])
    # and its features: noise in place of S_A's (same spots), so the standardisation cannot use them
    with h5py.File(root / "S_A.h5") as src, h5py.File(tmp_path / "noise.h5", "w") as dst:
        for key in src:
            src.copy(key, dst)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        del dst["features"]
        dst["features"] = rng.normal(50, 30, src["features"].shape).astype(src["features"].dtype)
    fit(root, names, "cmrcnet", tmp_path / "three",
        features=[str(tmp_path / "noise.h5"), str(root / "S_B.h5"), str(root / "S_C.h5")])
    one, two = torch.load(tmp_path / "one/model.pt"), torch.load(tmp_path / "two/model.pt")
    three = torch.load(tmp_path / "three/model.pt")
    assert one["genes"] == two["genes"] == three["genes"] and one["train_samples"] == ["S_B", "S_C"]
    for other in (two, three):
        for key, value in one["state_dict"].items():
            assert torch.equal(value, other["state_dict"][key]), key
        assert torch.equal(one["feature_mean"], other["feature_mean"])
        assert torch.equal(one["feature_sd"], other["feature_sd"])
    scores = pd.read_csv(tmp_path / "one/summary.tsv", sep="\t")
    assert set(scores["scope"]) == {"S_A", "pooled"} and set(scores["gene_list"]) == {"HEG", "HVG"}


def test_patches_are_cut_at_the_encoder_scale_from_the_sample_scale(hest):
    """An encoder reading 4 µm/px on a 1 µm/px sample reads the pyramid's 4x level; one at the
    sample's own scale reads level 0 (the demo pyramid: downsamples 1, 4, 16)."""
    root, _ = hest
    table = pd.read_parquet(root / "S_A.parquet")
    coarse = EncoderSpec.from_config("coarse", {"model": "mobilenetv3_small_100", "mpp": 4.0, "input_px": 112,
                                                "weights": "random", "seed": 0})
    image = str(root / "hest/wsis/S_A.tif")
    assert steps.cut_patches(image, table, coarse, 112, 1.0, 8, "auto", torch.device("cpu"))[1] == 1
    assert steps.cut_patches(image, table, SPEC, 112, 1.0, 8, "auto", torch.device("cpu"))[1] == 0
    assert steps.cut_patches(image, table, SPEC, 112, 0.25, 8, "auto", torch.device("cpu"))[1] == 1  # a finer sample


def test_a_fold_holds_out_every_sample_of_its_patient(hest, tmp_path):
    """Leave-one-patient-out: with two samples of patient A, fold A tests both and trains on C."""
    root, names = hest
    fit(root, names, "ridge", tmp_path, patients=["A", "A", "C"])
    pred = pd.read_parquet(tmp_path / "pred.parquet")
    n_test = sum(ad.read_h5ad(root / f"{s}.h5ad").n_obs for s in ("S_A", "S_B"))
    assert set(pred["sample"]) == {"S_A", "S_B"} and len(pred) == n_test


def test_cmrcnet_retrieves_training_spots_by_their_gene_embeddings(hest, tmp_path, monkeypatch):
    """BLEEP's inference, which CMRCNet keeps: the test image embeddings query a bank of the
    training spots' expression embeddings (not their image embeddings)."""
    from tissuekd.expression import retrieval

    root, names = hest
    seen, real_retrieve, real_genes = {}, retrieval.retrieve, CMRCNet.embed_genes

    def spy_genes(self, y):
        seen.setdefault("genes", []).append((len(y), out := real_genes(self, y)))
        return out

    def spy_retrieve(query, bank, *args):
        seen["query"], seen["bank"] = query, bank
        return real_retrieve(query, bank, *args)

    monkeypatch.setattr(CMRCNet, "embed_genes", spy_genes)
    monkeypatch.setattr(retrieval, "retrieve", spy_retrieve)
    fit(root, names, "cmrcnet", tmp_path)
    n_train = sum(ad.read_h5ad(root / f"{s}.h5ad").n_obs for s in ("S_B", "S_C"))
    n_test = ad.read_h5ad(root / "S_A.h5ad").n_obs
    assert len(seen["query"]) == n_test and len(seen["bank"]) == n_train
    n, last = seen["genes"][-1]
    assert n == n_train and torch.equal(seen["bank"], last)


def test_prepared_expression_is_log1p_of_counts_scaled_to_10k_per_spot(hest):
    root, _ = hest
    prepared, raw = ad.read_h5ad(root / "S_A.h5ad"), ad.read_h5ad(root / "hest/st/S_A.h5ad")
    counts = raw[prepared.obs_names, prepared.var_names].X
    counts = np.asarray(counts.todense() if sparse.issparse(counts) else counts, dtype=float)
    x = prepared.X.toarray() if sparse.issparse(prepared.X) else prepared.X
    assert np.expm1(x) == pytest.approx(counts / counts.sum(1, keepdims=True) * 1e4, rel=1e-4, abs=1e-4)


def test_every_method_writes_predictions_of_the_test_spots_only(hest, tmp_path):
    root, names = hest
    n_test = ad.read_h5ad(root / "S_A.h5ad").n_obs
    for method in steps.METHODS:
        fit(root, names, method, tmp_path / method)
        pred = pd.read_parquet(tmp_path / method / "pred.parquet")
        assert len(pred) == n_test and set(pred["sample"]) == {"S_A"}, method


def test_a_gene_the_fold_scores_missing_from_the_test_sample_is_named(hest, tmp_path):
    """Gene lists come from the training samples (genes all of them hold); a test sample
    without one of those genes cannot be scored on it."""
    root, names = hest
    full = ad.read_h5ad(root / "S_A.h5ad")
    full[:, full.var_names[-10:]].write_h5ad(tmp_path / "short.h5ad")
    with pytest.raises(InputError, match=r"\d+ gene\(s\) the fold selected on its training samples are missing, "
                                         r"e.g. .*: the samples of a dataset must measure the same genes") as err:
        fit(root, names, "ridge", tmp_path / "out", [str(tmp_path / "short.h5ad"), str(root / "S_B.h5ad"),
                                                     str(root / "S_C.h5ad")])
    assert err.value.where.endswith("hest/st/S_A.h5ad")  # the user's file, not the prepared copy


def test_markers_the_data_does_not_measure_name_the_config_key(hest, tmp_path):
    """The shipped markers are the demo's genes: a real dataset of the same name has others, and
    the fold must say so, not blame the samples."""
    root, names = hest
    genes = ad.read_h5ad(root / "S_B.h5ad").var_names
    with pytest.raises(InputError, match=r"config expression.markers: 2 of the 3 marker genes of fold A's dataset "
                                         r"are not measured by all its training samples, e.g. \['ERBB2', 'ESR1'\]"):
        fit(root, names, "ridge", tmp_path / "out", markers=[genes[0], "ERBB2", "ESR1"])
    with pytest.raises(InputError, match=r"config expression.markers: 1 of the 2 marker genes of dataset IDC are not "
                                         r"measured by sample .*S_A.h5ad, e.g. \['ERBB2'\]"):  # before its features
        steps.prepare_sample("hest", root / "hest/wsis/S_A.tif", tmp_path / "s.parquet", tmp_path / "s.h5ad",
                             tmp_path / "s.json", st=root / "hest/st/S_A.h5ad",
                             metadata=root / "hest/metadata/S_A.json", markers=[genes[0], "ERBB2"], dataset="IDC")


def test_training_samples_that_name_genes_differently_are_named(hest, tmp_path):
    """Some HEST samples name genes by Ensembl id, the others by symbol: the genes the training
    samples share would be none, and the fold is an error naming them, not scored on nothing."""
    root, names = hest
    other = ad.read_h5ad(root / "S_B.h5ad")
    other.var_names = [f"ENSG{i:011d}" for i in range(other.n_vars)]
    other.write_h5ad(tmp_path / "ensembl.h5ad")
    with pytest.raises(InputError, match=r"the training samples share 0 genes only; do they name genes the same way "
                                         r"\(symbols or Ensembl ids\)\? .*ENSG00000000000"):
        fit(root, names, "ridge", tmp_path / "out", [str(root / "S_A.h5ad"), str(tmp_path / "ensembl.h5ad"),
                                                     str(root / "S_C.h5ad")])


def test_the_sample_that_names_genes_otherwise_is_the_one_named():
    symbols = [ad.AnnData(np.zeros((2, 4), np.float32), var=pd.DataFrame(index=list("ABCD")), uns={"source": s})
               for s in ("one.h5ad", "two.h5ad")]
    ensembl = ad.AnnData(np.zeros((2, 4), np.float32), var=pd.DataFrame(index=[f"ENSG{i}" for i in range(4)]),
                         uns={"source": "odd.h5ad"})
    with pytest.raises(InputError, match=r"share 0 genes only") as err:
        steps.common_genes([symbols[0], ensembl, symbols[1]], ["a", "b", "c"])
    assert str(err.value.where) == "odd.h5ad"
    assert steps.common_genes(symbols, ["a", "c"]) == list("ABCD")


def broken(root, tmp_path, change):
    adata = ad.read_h5ad(root / "hest/st/S_A.h5ad")
    meta = json.loads((root / "hest/metadata/S_A.json").read_text())
    change(adata, meta)
    adata.write_h5ad(tmp_path / "st.h5ad")
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return read_hest(tmp_path / "st.h5ad", tmp_path / "meta.json", root / "hest/wsis/S_A.tif")


def shift(adata, dx):
    adata.obsm["spatial"] = adata.obsm["spatial"] + dx


@pytest.mark.parametrize("change, message", [
    (lambda a, m: m.pop("pixel_size_um_estimated") and m.pop("pixel_size_um_embedded"), "meta.json: no pixel size"),
    (lambda a, m: a.obsm.pop("spatial"), r'st.h5ad: no obsm\["spatial"\]'),
    (lambda a, m: m.update(pixel_size_um_estimated=float("nan"), pixel_size_um_embedded=None),
     "meta.json: no pixel size"),
    (lambda a, m: shift(a, 1e6), r"st.h5ad: (\d+) of \1 spot centres lie off the image"),
    (lambda a, m: shift(a, np.where(np.arange(a.n_obs)[:, None] % 3 > 0, 1e6, 0)), "st.h5ad: .* lie off the image"),
    (lambda a, m: setattr(a, "X", -a.X), "st.h5ad: counts must be finite and non-negative"),
    (lambda a, m: m.update(pixel_size_um_estimated=250.0), "meta.json: pixel_size_um_estimated 250 µm per pixel, "
                                                           "outside what a slide scan has"),
    (lambda a, m: m.update(pixel_size_um_estimated=0.001), "meta.json: pixel_size_um_estimated 0.001 µm per pixel"),
    (lambda a, m: a.obsm["spatial"].__setitem__((3, 1), np.nan),
     r'st.h5ad: 1 of \d+ spots have no finite obsm\["spatial"\] centre \(NaN or inf\), e.g. \[.S_A-'),
    (lambda a, m: setattr(a, "X", None), r"st.h5ad: no counts in X \(layers: none\)"),
    (lambda a, m: setattr(a, "obs_names", ["S_A-0"] * a.n_obs), r"st.h5ad: duplicate spot barcodes .*\['S_A-0'"),
])
def test_bad_hest_samples_are_named(hest, tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        broken(hest[0], tmp_path, change)


def test_an_st_file_that_is_not_an_h5ad_is_named(hest, tmp_path):
    root, _ = hest
    with h5py.File(tmp_path / "st.h5ad", "w") as h5:  # a patch file given as the counts
        h5["img"] = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(InputError, match="st.h5ad: not a readable AnnData h5ad file"):
        read_hest(tmp_path / "st.h5ad", root / "hest/metadata/S_A.json", root / "hest/wsis/S_A.tif")


def test_repeated_gene_names_are_made_unique_as_for_space_ranger(hest, tmp_path, caplog):
    full = ad.read_h5ad(hest[0] / "hest/st/S_A.h5ad")
    names = full.var_names.tolist()
    sample = broken(hest[0], tmp_path, lambda a, m: setattr(a, "var_names", [names[0]] * 2 + names[2:]))
    assert sample.genes.tolist() == [names[0], f"{names[0]}-1"] + names[2:]
    assert f"st.h5ad: 1 gene names repeated (e.g. {names[0]}): made unique" in caplog.text


def test_a_few_spots_off_the_image_are_left_out_as_hest_does(hest, tmp_path, caplog):
    """Some HEST releases list spots a little beyond the scan (TENX92: x down to -139 px);
    HEST's own patching drops them. NaN pixel sizes fall through to the next key."""
    def change(adata, meta):
        shift(adata, np.where(np.arange(adata.n_obs)[:, None] < 2, -500.0, 0))
        meta["pixel_size_um_estimated"] = float("nan")

    full = ad.read_h5ad(hest[0] / "hest/st/S_A.h5ad")
    sample = broken(hest[0], tmp_path, change)
    assert list(sample.barcodes) == list(full.obs_names[2:])
    assert sample.mpp == json.loads((hest[0] / "hest/metadata/S_A.json").read_text())["pixel_size_um_embedded"]
    assert f"2 of {full.n_obs} spot centres lie off the image" in caplog.text


def test_a_pixel_size_given_as_text_or_at_odds_with_the_spot_spacing_is_said(hest, tmp_path, caplog):
    meta = json.loads((hest[0] / "hest/metadata/S_A.json").read_text())
    with caplog.at_level("WARNING"):
        sample = broken(hest[0], tmp_path, lambda a, m: m.update(pixel_size_um_estimated="0.5 um"))
    assert sample.mpp == meta["pixel_size_um_embedded"]
    assert "meta.json: pixel_size_um_estimated is '0.5 um', not a positive number of µm per pixel: ignored" \
        in caplog.text
    assert "is the pixel size right" not in caplog.text  # the demo's spacing fits its pixel size
    broken(hest[0], tmp_path, lambda a, m: m.update(pixel_size_um_estimated=2 * meta["pixel_size_um_estimated"]))
    assert f"apart at {2 * meta['pixel_size_um_estimated']:.4g} µm per pixel, but inter_spot_dist is 100 µm: " \
           "is the pixel size right?" in caplog.text


def test_spots_without_a_count_are_left_out_and_a_matrix_of_mostly_empty_spots_is_refused(hest, tmp_path, caplog):
    root = hest[0]
    adata = ad.read_h5ad(root / "hest/st/S_A.h5ad")
    for share in (0.1, 0.6):
        changed = adata.copy()
        changed.X = sparse.csr_matrix(changed.X)
        empty = np.arange(changed.n_obs) < share * changed.n_obs
        changed.X = sparse.diags((~empty).astype(np.float32)) @ changed.X
        changed.write_h5ad(tmp_path / "st.h5ad")
        run = lambda: steps.prepare_sample(  # noqa: E731
            "hest", root / "hest/wsis/S_A.tif", tmp_path / "s.parquet", tmp_path / "s.h5ad", tmp_path / "s.json",
            st=tmp_path / "st.h5ad", metadata=root / "hest/metadata/S_A.json")
        if share < 0.5:
            with caplog.at_level("WARNING"):
                run()
            assert f"st.h5ad: {empty.sum()} of {adata.n_obs} spots under tissue have no count: left out" in caplog.text
            assert len(pd.read_parquet(tmp_path / "s.parquet")) == adata.n_obs - empty.sum()
        else:
            with pytest.raises(InputError, match=rf"st.h5ad: {empty.sum()} of {adata.n_obs} spots under tissue "
                                                 "have no count"):
                run()


def test_a_hest_benchmark_sample_reads_without_image_and_metadata(hest):
    """HEST-benchmark ships the h5ad and the patches only: no pixel size, nothing to check against."""
    root = hest[0]
    full = ad.read_h5ad(root / "hest/st/S_A.h5ad")
    sample = read_hest(root / "hest/st/S_A.h5ad", None, None)
    assert np.isnan(sample.mpp) and list(sample.barcodes) == list(full.obs_names)


def test_hest_spots_flagged_off_tissue_are_left_out(hest, tmp_path):
    root = hest[0]
    full = ad.read_h5ad(root / "hest/st/S_A.h5ad")
    off = np.arange(full.n_obs) % 3 == 0
    full.obs["in_tissue"] = np.where(off, 0, 1)
    full.write_h5ad(tmp_path / "st.h5ad")
    sample = read_hest(tmp_path / "st.h5ad", root / "hest/metadata/S_A.json", root / "hest/wsis/S_A.tif")
    assert list(sample.barcodes) == list(full.obs_names[~off])


def test_hest_pseudo_spots_keep_tissue_and_genes_only(hest, tmp_path, caplog):
    """HEST's Xenium and Visium HD samples set in_tissue for every bin and keep Xenium's control
    features as genes: the tissue_seg contours choose the spots, controls are left out, a NaN
    in_tissue is kept (logged), and counts that are not whole numbers are warned about."""
    from tissuekd.io.hest import inside_contours

    root = hest[0]
    full = ad.read_h5ad(root / "hest/st/S_A.h5ad")
    x, y = full.obsm["spatial"].T
    half = x < np.median(x)
    box = [[x.min() - 1, y.min() - 1], [np.median(x), y.min() - 1], [np.median(x), y.max() + 1],
           [x.min() - 1, y.max() + 1], [x.min() - 1, y.min() - 1]]
    hole = [[x.min() - 1, y.min() - 1], [x.max() + 1, y.min() - 1], [x.max() + 1, np.median(y) - 1e-3],
            [x.min() - 1, np.median(y) - 1e-3], [x.min() - 1, y.min() - 1]]
    geojson = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [box, hole]}}]}
    (tmp_path / "contours.geojson").write_text(json.dumps(geojson))
    expected = half & (y >= np.median(y))
    np.testing.assert_array_equal(inside_contours(full.obsm["spatial"], tmp_path / "contours.geojson"), expected)

    genes = pd.DataFrame(index=[*full.var_names[:-3], "BLANK_0001", "NegControlProbe_00042",
                                "UnassignedCodeword_0007"])
    odd = ad.AnnData(full.X.astype(np.float32) * 0.5, obs=full.obs.assign(in_tissue=np.nan), var=genes,
                     obsm={"spatial": full.obsm["spatial"]})
    odd.write_h5ad(tmp_path / "st.h5ad")
    sample = read_hest(tmp_path / "st.h5ad", root / "hest/metadata/S_A.json", root / "hest/wsis/S_A.tif",
                       tissue_seg=tmp_path / "contours.geojson")
    assert list(sample.barcodes) == list(full.obs_names[expected])
    assert list(sample.genes) == list(full.var_names[:-3])
    assert "in_tissue is missing or not a number" in caplog.text and "not whole numbers" in caplog.text
    far = {"type": "Polygon", "coordinates": [[[-9, -9], [-8, -9], [-8, -8], [-9, -9]]]}
    (tmp_path / "far.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                      "features": [{"type": "Feature", "geometry": far}]}))
    with pytest.raises(InputError, match="far.geojson: no spot centre lies inside its tissue polygons"):
        inside_contours(full.obsm["spatial"], tmp_path / "far.geojson")


def test_an_unknown_format_is_named(hest, tmp_path):
    root, _ = hest
    with pytest.raises(InputError, match="S_A.h5ad: unknown format 'visium-hd'"):
        steps.prepare_sample("visium-hd", root / "hest/wsis/S_A.tif", tmp_path / "a", tmp_path / "b", tmp_path / "c",
                             st=root / "hest/st/S_A.h5ad", metadata=root / "hest/metadata/S_A.json")


def test_a_space_ranger_sample_reads_as_its_hest_twin(tmp_path):
    """The same simulated sample written in both layouts reads to the same spots, centres,
    counts and scale; the older headerless positions list reads the same."""
    make_sample(tmp_path / "hest", "S", "IDC", "P", 0)
    make_spaceranger_sample(tmp_path / "sr", "S", "IDC", 0)
    hest = read_hest(tmp_path / "hest/st/S.h5ad", tmp_path / "hest/metadata/S.json", tmp_path / "hest/wsis/S.tif")
    outs = tmp_path / "sr/S/outs"
    visium = read_spaceranger(outs, tmp_path / "sr/S/S.tif")
    assert list(visium.barcodes) == list(hest.barcodes) and visium.mpp == pytest.approx(hest.mpp)
    np.testing.assert_allclose(visium.xy, hest.xy, atol=0.5)
    assert (visium.counts != hest.counts).nnz == 0 and list(visium.genes) == list(hest.genes)
    listed = pd.read_csv(outs / "spatial/tissue_positions.csv")
    listed.to_csv(outs / "spatial/tissue_positions_list.csv", header=False, index=False)
    (outs / "spatial/tissue_positions.csv").unlink()
    assert list(read_spaceranger(outs, tmp_path / "sr/S/S.tif").barcodes) == list(hest.barcodes)
    listed.iloc[:, :4].to_csv(outs / "spatial/tissue_positions_list.csv", header=False, index=False)
    with pytest.raises(InputError, match="tissue_positions_list.csv: expected 6 columns"):
        read_spaceranger(outs, tmp_path / "sr/S/S.tif")
    listed.assign(in_tissue=0).to_csv(outs / "spatial/tissue_positions_list.csv", header=False, index=False)
    with pytest.raises(InputError, match=r"tissue_positions_list.csv: no spot of .*filtered_feature_bc_matrix.h5 is "
                                         r"under tissue"):
        read_spaceranger(outs, tmp_path / "sr/S/S.tif")
    listed.assign(pxl_row_in_fullres=listed.pxl_row_in_fullres // 1000, pxl_col_in_fullres=listed.pxl_col_in_fullres
                  // 1000).to_csv(outs / "spatial/tissue_positions_list.csv", header=False, index=False)
    with pytest.raises(InputError, match=r"tissue_positions_list.csv: the spot pitch gives .* µm per pixel, outside "):
        read_spaceranger(outs, tmp_path / "sr/S/S.tif")


def test_a_space_ranger_folder_without_what_squidpy_reads_is_named(tmp_path):
    """squidpy.read.visium reads the positions only with the PNGs, and merges them into the
    matrix's spots: a missing image, or a barcode without a position, is named before."""
    make_spaceranger_sample(tmp_path / "sr", "S", "IDC", 0)
    outs, image = tmp_path / "sr/S/outs", tmp_path / "sr/S/S.tif"
    listed = pd.read_csv(outs / "spatial/tissue_positions.csv")
    listed.iloc[1:].to_csv(outs / "spatial/tissue_positions.csv", index=False)
    with pytest.raises(InputError, match=rf"tissue_positions.csv: 1 barcodes of .*filtered_feature_bc_matrix.h5 have "
                                         rf"no position, e.g. \['{listed.barcode[0]}'\]"):
        read_spaceranger(outs, image)
    (outs / "spatial/tissue_lowres_image.png").unlink()
    with pytest.raises(InputError, match="spatial: no tissue_lowres_image.png"):
        read_spaceranger(outs, image)


def corrupt(path):
    path.write_bytes(path.read_bytes()[:40])


def reorder(positions):
    listed = pd.read_csv(positions)
    listed[[*listed.columns[:4], "pxl_col_in_fullres", "pxl_row_in_fullres"]].to_csv(positions, index=False)


def relist(positions, change):
    listed = pd.read_csv(positions)
    change(listed).to_csv(positions, index=False)


@pytest.mark.parametrize("change, message", [
    (lambda outs: corrupt(outs / "spatial/tissue_hires_image.png"), "tissue_hires_image.png: not a readable image"),
    (lambda outs: corrupt(outs / "spatial/scalefactors_json.json"), "scalefactors_json.json: not a readable JSON"),
    (lambda outs: h5py.File(outs / "filtered_feature_bc_matrix.h5", "w").close(),
     "filtered_feature_bc_matrix.h5: not a readable 10x HDF5 matrix"),
    (lambda outs: reorder(outs / "spatial/tissue_positions.csv"),
     r"tissue_positions.csv: columns \[.*'pxl_col_in_fullres', 'pxl_row_in_fullres'\]: squidpy reads them by position"),
    (lambda outs: relist(outs / "spatial/tissue_positions.csv", lambda t: pd.concat([t, t.iloc[:1]])),
     "tissue_positions.csv: barcodes listed twice"),
    (lambda outs: relist(outs / "spatial/tissue_positions.csv",
                         lambda t: t.assign(pxl_row_in_fullres=t.pxl_row_in_fullres.where(t.index != 0))),
     r"tissue_positions.csv: 1 of \d+ spots have no finite pixel centre"),
])
def test_a_bad_space_ranger_file_is_the_one_named(tmp_path, change, message):
    """squidpy takes the positions' header and barcodes on trust and raises bare errors on a
    broken file: each is named before, or its error named after."""
    make_spaceranger_sample(tmp_path / "sr", "S", "IDC", 0)
    change(tmp_path / "sr/S/outs")
    with pytest.raises(InputError, match=message):
        read_spaceranger(tmp_path / "sr/S/outs", tmp_path / "sr/S/S.tif")


def test_space_ranger_positions_at_another_scale_than_the_image_are_said(tmp_path, caplog):
    make_spaceranger_sample(tmp_path / "sr", "S", "IDC", 0)
    positions = tmp_path / "sr/S/outs/spatial/tissue_positions.csv"
    relist(positions, lambda t: t.assign(pxl_row_in_fullres=t.pxl_row_in_fullres // 2,
                                         pxl_col_in_fullres=t.pxl_col_in_fullres // 2))
    read_spaceranger(tmp_path / "sr/S/outs", tmp_path / "sr/S/S.tif")
    assert re.search(r"tissue_positions.csv: the spot pitch gives .* µm per pixel, but .*S.tif states .* \(2.0\dx\)",
                     caplog.text)


def test_visium_pixel_size_comes_from_the_spot_spacing_else_from_a_65_um_spot(tmp_path):
    """Neighbours in an array row lie 100 µm apart; Space Ranger's spot_diameter_fullres spans a
    theoretical 65 µm spot (10x's definition), used only when no two neighbours are listed. At a
    real slide's 0.2737 µm/px both give the scale back; the 55 µm this reader took before would
    give 0.232 (pixels ~15% too small, crops ~15% too wide)."""
    from tissuekd.io.visium import pixel_size

    mpp = 0.2737
    grid = [(r, 2 * c + r % 2) for r in range(4) for c in range(5)]
    positions = pd.DataFrame({
        "in_tissue": 1, "array_row": [r for r, _ in grid], "array_col": [c for _, c in grid],
        "pxl_row_in_fullres": [round((1000 + r * 50 * np.sqrt(3)) / mpp) for r, _ in grid],
        "pxl_col_in_fullres": [round((1000 + c * 50) / mpp) for _, c in grid]})
    factors = tmp_path / "scalefactors_json.json"
    factors.write_text(json.dumps({"spot_diameter_fullres": 65 / mpp}))
    assert pixel_size(positions, factors) == pytest.approx(mpp, rel=2e-3)
    lonely = positions.drop_duplicates("array_row")  # one spot per row: no neighbours to measure
    factors.write_text(json.dumps({"spot_diameter_fullres": 65 / mpp * 1.1}))
    assert pixel_size(lonely, factors) == pytest.approx(mpp / 1.1)
    factors.write_text(json.dumps({"tissue_hires_scalef": 0.1}))
    with pytest.raises(InputError, match="scalefactors_json.json: no two neighbouring spots listed and no "
                                         "spot_diameter_fullres"):
        pixel_size(lonely, factors)


def test_xenium_pseudo_spots_sum_the_counts_of_the_cells_under_each_spot(ingested, demo_slide, tmp_path):
    """A niche slide's ingested cells pooled into 55-µm spots 100 µm apart: each spot holds the
    summed counts of exactly the cells within 27.5 µm of its centre (checked by brute force)."""
    from conftest import he_image

    from tissuekd.expression.pseudospots import read_pseudospots

    spots = read_pseudospots(ingested["cells"], ingested["expression"], ingested["slide"], "X")
    cells = pd.read_parquet(ingested["cells"])
    counts = ad.read_h5ad(ingested["expression"]).X.toarray()
    mpp = json.loads(ingested["slide"].read_text())["he_mpp"]
    xy = cells[["x_he", "y_he"]].to_numpy()
    spacing = np.linalg.norm(spots.xy[:, None] - spots.xy[None], axis=-1) * mpp
    assert spacing[spacing > 0].min() == pytest.approx(100.0, rel=1e-6)
    for i in range(0, len(spots.xy), max(1, len(spots.xy) // 15)):
        inside = np.linalg.norm(xy - spots.xy[i], axis=1) * mpp <= 27.5
        np.testing.assert_allclose(spots.counts[i].toarray()[0], counts[inside].sum(0))
    assert spots.mpp == mpp and spots.counts.sum() > 0.2 * counts.sum()
    steps.prepare_sample("xenium", he_image(demo_slide), tmp_path / "s.parquet", tmp_path / "e.h5ad",
                         tmp_path / "s.json", cells=ingested["cells"], cell_counts=ingested["expression"],
                         slide=ingested["slide"], name="X")
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == len(spots.xy)


def test_pseudo_spots_read_the_counts_a_chunk_of_cells_at_a_time(ingested):
    """Pooling chunk by chunk (a 1,000,000-cell slide's counts are never held whole) sums the
    same counts as pooling at once; a chunk of cells all between spots is skipped, not lost."""
    from tissuekd.expression.pseudospots import pooled_counts

    ids = pd.read_parquet(ingested["cells"])["cell_id"].astype(str).to_numpy()
    counts = ad.read_h5ad(ingested["expression"]).X.toarray()
    spot_of_cell = np.random.default_rng(0).integers(-1, 20, len(ids))
    spot_of_cell[100:300] = -1
    for chunk in (97, 100, len(ids)):
        pooled, genes = pooled_counts(ingested["expression"], ids, spot_of_cell, 20, "cells.parquet", chunk=chunk)
        expected = np.stack([counts[spot_of_cell == s].sum(0) for s in range(20)])
        np.testing.assert_array_equal(pooled.toarray(), expected)
    assert len(genes) == counts.shape[1]
    with pytest.raises(InputError, match="expression.h5ad: cells are not those of cells.parquet, in its order"):
        pooled_counts(ingested["expression"], ids[::-1], spot_of_cell, 20, "cells.parquet")


def write_patch_file(path, root, sample, drop=0, keep=None, order_seed=0, **replace):
    """A HEST patch file of the demo sample: 224-px patches at 0.5 µm/px around each spot (the
    1 µm/px image read at level 0 and upsampled twice), in shuffled order, `drop` spots without
    a patch; `replace` swaps whole datasets (bad files)."""
    import h5py
    from PIL import Image

    from tissuekd.io.wsi import open_slide

    spots = pd.read_parquet(root / f"{sample}.parquet")
    spots = spots.iloc[np.random.default_rng(order_seed).permutation(len(spots))[drop:keep]]
    patches = []
    with open_slide(root / f"hest/wsis/{sample}.tif") as slide:
        for x, y in spots[["x", "y"]].to_numpy():
            region = slide.read(0, int(np.floor(x - 56)), int(np.floor(y - 56)), 112, 112)  # as the crop reader
            patches.append(np.asarray(Image.fromarray(region).resize((224, 224), Image.BILINEAR)))
    data = {"img": np.stack(patches), "barcode": spots["barcode"].to_numpy().astype("S").reshape(-1, 1),
            "coords": (spots[["x", "y"]].to_numpy() - 112).astype(np.int64)}
    data.update(replace)
    with h5py.File(path, "w") as h5:
        for key, value in data.items():
            if value is not None:
                h5[key] = value
    return spots


def test_a_hest_patch_file_gives_the_features_of_patches_cut_from_the_image(hest, tmp_path):
    """The release's 224-px patches at 0.5 µm/px span the 112 µm the demo encoder reads at
    1 µm/px: resized, they must encode like the patches the crop reader cuts (same spots,
    matched by barcode whatever the file's order); spots without a patch are left out."""
    import h5py

    root, _ = hest
    kept = write_patch_file(tmp_path / "S_A.h5", root, "S_A", drop=5)
    steps.extract_spot_features(root / "S_A.parquet", root / "S_A.json", None, SPEC, tmp_path / "f.h5", crop_px=112,
                                device="cpu", progress=False, patches=str(tmp_path / "S_A.h5"))
    with h5py.File(tmp_path / "f.h5") as h5, h5py.File(root / "S_A.h5") as cut:
        barcodes = h5["barcode"][:].astype(str)
        assert sorted(barcodes) == sorted(kept["barcode"]) and len(barcodes) == len(cut["barcode"]) - 5
        ref = pd.DataFrame(cut["features"][:], index=cut["barcode"][:].astype(str)).loc[barcodes].to_numpy()
        np.testing.assert_allclose(h5["coords"][:], pd.DataFrame(cut["coords"][:], index=cut["barcode"][:].astype(
            str)).loc[barcodes].to_numpy())
        cosine = (F.normalize(torch.from_numpy(h5["features"][:]), dim=1)
                  * F.normalize(torch.from_numpy(ref), dim=1)).sum(1)
    assert cosine.min() >= 0.99, cosine.min()  # measured: 0.995 (bilinear up, antialiased down)


@pytest.mark.parametrize("replace, message", [
    ({"img": None}, "S_A.h5: no `img` dataset"),
    ({"img": np.zeros((3, 224, 224), np.uint8)}, r"S_A.h5: `img` must be square uint8 RGB"),
    ({"barcode": np.array([b"x"] * 5)}, "S_A.h5: 5 barcodes for 3 patches"),
    ({"barcode": np.array([b"x"] * 3)}, r"S_A.h5: duplicate barcodes, e.g. \['x'\]"),
    ({"barcode": None}, "S_A.h5: no `barcode` dataset"),
])
def test_a_bad_hest_patch_file_is_named(hest, tmp_path, replace, message):
    root, _ = hest
    write_patch_file(tmp_path / "S_A.h5", root, "S_A", keep=3, **replace)
    with pytest.raises(InputError, match=message):
        steps.extract_spot_features(root / "S_A.parquet", root / "S_A.json", None, SPEC, tmp_path / "f.h5",
                                    crop_px=112, device="cpu", progress=False, patches=str(tmp_path / "S_A.h5"))
    assert not (tmp_path / "f.h5").exists()


def test_a_bad_patch_file_stops_the_prepare_step_already(hest, tmp_path):
    """Found by the features job before, after the other samples' features."""
    root, _ = hest
    write_patch_file(tmp_path / "S_A.h5", root, "S_A", keep=3, img=None)
    hest_dir = root / "hest"
    out = [str(tmp_path / name) for name in ("spots.parquet", "expression.h5ad", "sample.json")]
    with pytest.raises(InputError, match="S_A.h5: no `img` dataset"):
        steps.prepare_sample("hest", str(hest_dir / "wsis/S_A.tif"), *out, st=str(hest_dir / "st/S_A.h5ad"),
                             metadata=str(hest_dir / "metadata/S_A.json"), patches=str(tmp_path / "S_A.h5"))
    assert not any(os.path.exists(path) for path in out)


def test_patches_of_another_span_or_sample_are_named(hest, tmp_path):
    root, _ = hest
    write_patch_file(tmp_path / "S_A.h5", root, "S_A", keep=3)
    run = dict(device="cpu", progress=False, patches=str(tmp_path / "S_A.h5"))
    with pytest.raises(InputError, match=r"S_A.h5: its patches span 224 µm \(224 px at 1 µm/px\) but encoder "
                                         r"demo-mobilenet reads 112 µm"):
        steps.extract_spot_features(root / "S_A.parquet", root / "S_A.json", None, SPEC, tmp_path / "f.h5",
                                    crop_px=112, patch_mpp=1.0, **run)
    with pytest.raises(InputError, match="S_A.h5: none of its .* barcodes is a spot of the sample"):
        steps.extract_spot_features(root / "S_B.parquet", root / "S_B.json", None, SPEC, tmp_path / "f.h5",
                                    crop_px=112, **run)


# ---- fine-tuning the encoder's last blocks (expression.cmrcnet.finetune_blocks) ----------------

@pytest.mark.parametrize("arch, tail", [
    ("mobilenetv3_small_100", ("blocks.5.", "conv_head.", "norm_head.")),
    ("vit_tiny_patch16_224", ("blocks.10.", "blocks.11.", "norm.", "fc_norm.", "head.")),
    ("resnet18", ("layer4.", "fc.")),
])
def test_only_the_last_blocks_and_what_follows_them_train(arch, tail):
    import timm

    from tissuekd.expression.finetune import unfreeze_tail

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    blocks = 2 if arch.startswith("vit") else 1
    trainable = {id(p) for p in unfreeze_tail(model, blocks)}
    for name, p in model.named_parameters():
        assert (id(p) in trainable) == p.requires_grad == name.startswith(tail), name
    assert trainable
    with pytest.raises(InputError, match="finetune_blocks: 99 blocks asked"):
        unfreeze_tail(model, 99)


def tuned_fit(root, names, out, patches, expression=None):
    # the tail at 1e-4: at 1e-3 two epochs under the contrastive loss alone pull every test spot's
    # embedding together (SD over spots 0.007), so all retrieve the same training spots
    samples = list(names)
    expression = expression or [str(root / f"{s}.h5ad") for s in samples]
    steps.fit_fold("cmrcnet", "A", samples, list(names.values()), [str(root / f"{s}.h5") for s in samples],
                   expression, [], {**FAST, "stage1_epochs": 1, "stage2_epochs": 1, "finetune_blocks": 1,
                                   "finetune_lr": 1e-4}, out / "pred.parquet",
                   out / "pcc.tsv", out / "summary.tsv", out / "model.pt", device="cpu", patches=patches, encoder=SPEC)
    return torch.load(out / "model.pt")


@pytest.fixture(scope="module")
def patch_files(hest, tmp_path_factory):
    """expression_patches' files of the three samples."""
    root, names = hest
    folder = tmp_path_factory.mktemp("patches")
    for sample in names:
        steps.extract_spot_patches(root / f"{sample}.parquet", root / f"{sample}.json",
                                   root / f"hest/wsis/{sample}.tif", SPEC, folder / f"{sample}.h5", crop_px=112)
    return [str(folder / f"{s}.h5") for s in names]


def test_the_patch_files_hold_what_the_features_encode(hest, patch_files, tmp_path):
    """Same spots, same order; through the untouched encoder (TunedEncoder before any step) the
    stored patches give the features (in fp32, as fine-tuning runs on the CPU), standardised."""
    import h5py

    from tissuekd.encoders.registry import build_encoder
    from tissuekd.expression.finetune import PatchBank, TunedEncoder

    root, _ = hest
    steps.extract_spot_features(root / "S_B.parquet", root / "S_B.json", root / "hest/wsis/S_B.tif", SPEC,
                                tmp_path / "S_B.h5", crop_px=112, device="cpu", precision="fp32", progress=False)
    with h5py.File(tmp_path / "S_B.h5") as h5:
        features, barcodes = h5["features"][:], h5["barcode"][:].astype(str)
    mean, sd = features.mean(0), features.std(0) + 1e-6
    encoder = TunedEncoder(build_encoder(SPEC), SPEC, 1, mean, sd).train()
    bank = PatchBank([patch_files[1]], [barcodes])
    with torch.no_grad():
        z = encoder(bank(np.arange(len(bank))[::-1].copy()))
    np.testing.assert_allclose(z.numpy(), ((features - mean) / sd)[::-1], atol=2e-3)
    with pytest.raises(InputError, match="S_A.h5: its .* patches are not the .* spots of the sample's features"):
        PatchBank([patch_files[0]], [barcodes])


def test_fine_tuning_trains_the_tail_and_never_sees_the_test_sample(hest, patch_files, tmp_path):
    """The fold holds out S_A: the encoder's tail moves from its pretrained weights; replacing
    S_A's patches with noise and its expression with another sample's changes neither the head
    nor the tuned tail, bit for bit; S_A's predictions do change (they are read from its patches)."""
    import h5py

    from tissuekd.encoders.registry import build_encoder

    root, names = hest
    one = tuned_fit(root, names, tmp_path / "one", patch_files)
    pretrained = build_encoder(SPEC).state_dict()
    moved = [k for k, v in one["encoder_tail"].items() if not torch.equal(v, pretrained[k])]
    assert one["encoder_tail"] and set(one["encoder_tail"]) <= set(pretrained)
    assert len(moved) > len(one["encoder_tail"]) // 2, moved
    with h5py.File(patch_files[0]) as src, h5py.File(tmp_path / "noise.h5", "w") as dst:
        for key in ("barcode", "coords"):
            src.copy(key, dst)
        dst["img"] = np.random.default_rng(0).integers(0, 256, src["img"].shape, dtype=np.uint8)
    other = ad.read_h5ad(root / "S_B.h5ad")
    own = ad.read_h5ad(root / "S_A.h5ad")
    swapped = ad.AnnData(other.X[np.arange(own.n_obs) % other.n_obs], obs=pd.DataFrame(index=own.obs_names),
                         var=other.var)
    swapped.write_h5ad(tmp_path / "swapped.h5ad")
    two = tuned_fit(root, names, tmp_path / "two", [str(tmp_path / "noise.h5"), *patch_files[1:]],
                    [str(tmp_path / "swapped.h5ad"), str(root / "S_B.h5ad"), str(root / "S_C.h5ad")])
    for part in ("state_dict", "encoder_tail"):
        for key, value in one[part].items():
            assert torch.equal(value, two[part][key]), (part, key)
    first, second = (pd.read_parquet(tmp_path / run / "pred.parquet") for run in ("one", "two"))
    assert not np.allclose(first.iloc[:, 2:].to_numpy(), second.iloc[:, 2:].to_numpy())


def test_the_overall_table_counts_the_datasets_each_mean_covers():
    """A dataset without markers (the demo's XENIUM) is not counted in the markers row."""
    from tissuekd.report.expression import COLUMNS, overall

    rows = [("A", "HVG", 0.6), ("B", "HVG", 0.4), ("A", "markers", 0.5)]
    table = pd.DataFrame([{"dataset": d, "encoder": "e", "method": "ridge", "gene_list": g,
                           **dict.fromkeys(COLUMNS, r)} for d, g, r in rows])
    across = overall(table).set_index("gene_list")
    assert across.loc["HVG", "n_datasets"] == 2 and across.loc["markers", "n_datasets"] == 1
    assert across.loc["HVG", "pcc_per_sample_mean_over_datasets"] == pytest.approx(0.5)


def test_truth_retrieval_bounds_the_demo_and_falls_to_chance_without_the_truth(hest, tmp_path):
    """bench.expression_ceiling: the demo's truth predicts its expression well (the counts' noise
    is what remains), and the same truth shuffled over spots predicts nothing."""
    import shutil

    from tissuekd.bench.expression_ceiling import ceilings

    root, names = hest
    for sample in names:
        (tmp_path / "expression/samples" / sample).mkdir(parents=True)
        shutil.copy(root / f"{sample}.h5ad", tmp_path / "expression/samples" / sample / "expression.h5ad")
    sheet = pd.DataFrame({"sample": list(names), "dataset": "IDC", "patient": list(names.values()), "format": "hest",
                          "st": [str(root / f"hest/st/{s}.h5ad") for s in names]})
    assert ceilings(sheet, tmp_path, k=20)["IDC"] > 0.6
    for sample in names:  # the truth files are the fixture's: put them back afterwards
        path = root / f"hest/truth/{sample}.parquet"
        shutil.copy(path, tmp_path / f"{sample}.truth")
        truth = pd.read_parquet(path)
        truth["barcode"] = truth["barcode"].sample(frac=1, random_state=0).to_numpy()
        truth.to_parquet(path, index=False)
    try:
        assert abs(ceilings(sheet, tmp_path, k=20)["IDC"]) < 0.15
    finally:
        for sample in names:
            shutil.copy(tmp_path / f"{sample}.truth", root / f"hest/truth/{sample}.parquet")
