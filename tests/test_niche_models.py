"""The niche study's models and metrics: neighbourhoods, KD loss, NOLAN-style teacher, the
H&E student (and that it cannot learn from test cells), metrics against references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score

from tissuekd.distill.losses import kd_loss
from tissuekd.niche.evaluate import composition_jsd, hungarian_match, niche_metrics, niche_palette, probe_f1
from tissuekd.niche.train import NolanConfig, StudentConfig, fit_nolan, fit_student, predict_logits
from tissuekd.spatial.neighborhoods import build_neighborhoods


def toy_tissue(n: int = 1600, seed: int = 0):
    """Cells on a jittered grid in 4 square niches; features = niche signal + noise."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    xy = np.c_[gx.ravel(), gy.ravel()] * 10.0 + rng.uniform(-2, 2, (side * side, 2))
    niche = (xy[:, 0] > side * 5).astype(int) + 2 * ((xy[:, 1] // (side * 2.5)).astype(int) % 2)
    centres = rng.normal(0, 1, (4, 8))
    features = centres[niche] + rng.normal(0, 2.0, (len(xy), 8))  # noisy per cell, clear per neighbourhood
    return xy, niche, torch.from_numpy(features.astype(np.float32))


def test_neighborhoods_are_within_radius_nearest_first_and_respect_allowed():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (500, 2))
    allowed = xy[:, 1] > 30
    query = np.flatnonzero(allowed)[:50]
    nb = build_neighborhoods(xy, query, radius=12.0, max_neighbors=8, allowed=allowed)
    tree = cKDTree(xy[allowed])
    for row, q in enumerate(query):
        idx = nb.index[row][nb.mask[row]].numpy()
        dist = np.hypot(*(xy[idx] - xy[q]).T)
        assert q not in idx and allowed[idx].all() and (dist <= 12.0).all()
        assert (np.diff(dist) >= -1e-9).all()  # nearest first
        expected = min(8, len(tree.query_ball_point(xy[q], 12.0)) - 1)
        assert len(idx) == expected
        assert np.allclose(nb.offset[row][nb.mask[row]].numpy(), (xy[idx] - xy[q]) / 12.0, atol=1e-6)


def test_kd_loss_matches_the_formula():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    p = torch.softmax(t / T, -1)
    manual = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    assert kd_loss(s, t, T) == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_metrics_match_references():
    rng = np.random.default_rng(0)
    teacher = rng.integers(0, 4, 400)
    permuted = np.array([3, 0, 2, 1])[teacher]  # the same partition, renamed
    types = rng.choice(["a", "b", "c"], 400)
    assert hungarian_match(permuted, teacher) == {3: 0, 0: 1, 2: 2, 1: 3}
    row = niche_metrics("x", permuted, teacher, types, None, matched=True)
    assert row["ARI"] == pytest.approx(1.0) and row["NMI"] == pytest.approx(1.0) and row["JSD"] == pytest.approx(0)
    noisy = np.where(rng.random(400) < 0.3, rng.integers(0, 4, 400), teacher)
    row = niche_metrics("x", noisy, teacher, types, None, False)
    assert row["ARI"] == adjusted_rand_score(teacher, noisy)
    assert row["NMI"] == normalized_mutual_info_score(teacher, noisy)
    # JSD by hand with scipy: every niche matches (identity), so both sides weigh each niche's JSD by its cells
    comp = lambda lab, n: np.array([(types[lab == n] == t).sum() for t in "abc"], float)  # noqa: E731
    jsd = [jensenshannon(comp(noisy, n) / comp(noisy, n).sum(), comp(teacher, n) / comp(teacher, n).sum(), base=2) ** 2
           for n in range(4)]
    sizes = np.bincount(noisy) + np.bincount(teacher)
    scored = composition_jsd(noisy, teacher, types)
    assert scored["JSD"] == pytest.approx(np.sum(sizes * jsd) / (2 * 400))
    assert scored["matched_coverage"] == pytest.approx(1.0)
    assert probe_f1(teacher, np.array(list("wxyz"))[teacher]) == pytest.approx(1.0)
    # imbalanced and imperfect: from one-hot niches the probe can only predict each niche's
    # majority class, so its F1 is that prediction's macro-F1 (0.615; micro-F1 would be 0.889)
    niche = np.repeat([0, 1], [100, 35])
    annotation = np.array(["tumour"] * 90 + ["stroma"] * 10 + ["immune"] * 30 + ["tumour"] * 5)
    majority = np.where(niche == 0, "tumour", "immune")
    assert probe_f1(niche, annotation) == pytest.approx(f1_score(annotation, majority, average="macro"))


def test_jsd_scores_every_cell_so_collapse_and_leftover_clusters_count():
    rng = np.random.default_rng(1)
    types = np.repeat(list("abcd"), 100)
    teacher = np.repeat(np.arange(4), 100)  # niche i is pure cell type i
    collapsed = np.where(teacher == 3, 2, teacher)  # the student merges niches 2 and 3
    row = composition_jsd(collapsed, teacher, types)
    # the merged niche (half c, half d) against teacher niche 2 (pure c), on its 200 student cells
    # and teacher niche 2's 100; teacher niche 3's 100 cells, matched to nothing, count the maximum 1
    merged = jensenshannon([0, 0, 0.5, 0.5], [0, 0, 1, 0], base=2) ** 2
    assert row["JSD"] == pytest.approx((300 * merged + 100 * 1.0) / 800)
    assert row["matched_coverage"] == pytest.approx(7 / 8)
    # 50 clusters, only 4 can be matched: the 46 others are scored against their nearest niche,
    # and a clustering that ignores cell types is worse than one that keeps them
    split_pure = teacher * 12 + rng.integers(0, 12, 400)  # 48 clusters, each pure
    split_mixed = rng.integers(0, 48, 400)  # 48 clusters, each a mixture
    pure = composition_jsd(split_pure, teacher, types, hungarian_match(split_pure, teacher))
    mixed = composition_jsd(split_mixed, teacher, types, hungarian_match(split_mixed, teacher))
    assert pure["JSD"] < 0.05 and mixed["JSD"] > 0.3
    assert pure["matched_coverage"] < 0.6 and mixed["matched_coverage"] < 0.6
    # without two known cell types every composition is the same: no JSD, the coverage still
    for unknown in (np.full(400, "unknown"), np.where(types == "a", "a", "unknown")):
        row = composition_jsd(collapsed, teacher, unknown)
        assert np.isnan(row["JSD"]) and row["matched_coverage"] == pytest.approx(7 / 8)


@pytest.mark.parametrize("k", [10, 20, 54])
def test_map_colours_tell_every_teacher_niche_apart_and_unmatched_clusters_from_them(k):
    palette = niche_palette(k, k + 5)  # five baseline clusters matched to no teacher niche
    teacher, unmatched = palette[:k], palette[k:]
    assert len(np.unique(teacher, axis=0)) == k
    assert np.allclose(unmatched, unmatched[:, :1])  # greys
    assert (np.ptp(teacher, axis=1) > 0.05).all()  # no teacher niche is grey


def test_probe_ignores_unannotated_cells_and_counts_classes():
    from tissuekd.niche.evaluate import probe_classes

    niche = np.repeat(np.arange(3), 60)
    annotation = np.array(["tumour", "stroma", "unannotated"])[niche]
    # the unannotated cells are a niche of their own: learning them as a class would lift F1
    annotation[:10] = "stroma"
    assert probe_f1(niche, annotation) == pytest.approx(probe_f1(niche[:120], annotation[:120]))
    assert probe_classes(annotation) == "stroma:70;tumour:50"


def test_truth_agreement_uses_cells_with_a_known_niche():
    from tissuekd.niche.evaluate import truth_agreement

    truth = np.array(["x", "x", "y", "y", ""], dtype=object)
    labels = np.array([1, 1, 0, 0, 1])  # the cell without a niche sits in x's cluster: counting it would cost
    assert truth_agreement(labels, truth) == {"ARI_truth": 1.0, "NMI_truth": 1.0}
    assert adjusted_rand_score(truth, labels) < 1  # what counting it would give
    row = niche_metrics("x", labels, labels, np.array(list("abcde")), None, False, truth)
    assert row["ARI_truth"] == 1.0 and np.isnan(niche_metrics("x", labels, labels, labels, None, False)["ARI_truth"])


@pytest.mark.parametrize("train", [True, False])
def test_centre_only_last_layer_equals_the_whole_encoder(train):
    """encode_centre skips the last layer's work on tokens nobody reads: the centre's output and
    every gradient must match the whole encoder's (padding included; eval mode takes torch's
    fused fast path in the whole encoder)."""
    from tissuekd.niche.models import NeighborhoodTransformer

    torch.manual_seed(0)
    model = NeighborhoodTransformer(16, 5, d_model=32, layers=3).train(train)
    tokens = torch.randn(40, 9, 32)
    padding = torch.rand(40, 9) < 0.4
    padding[:, 0] = False  # the centre is never padding
    padding[0, 1:] = True  # a cell without neighbours
    outputs, grads = [], []
    for encode in (lambda t: model.encoder(t, src_key_padding_mask=padding)[:, 0],
                   lambda t: model.encode_centre(t, padding)):
        model.zero_grad()
        with torch.set_grad_enabled(train):
            out = encode(tokens)
        if train:
            out.square().sum().backward()
            grads.append([p.grad.clone() for p in model.encoder.parameters()])
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    if train:
        for mine, whole in zip(*grads):
            torch.testing.assert_close(mine, whole, rtol=1e-4, atol=1e-5)
    assert not torch.equal(outputs[0][0], outputs[0][1])  # rows differ: the comparison can fail


def test_nolan_teacher_finds_spatial_niches_without_collapse():
    xy, niche, features = toy_tissue()
    everyone = np.arange(len(xy))
    nb = build_neighborhoods(xy, everyone, radius=25.0, max_neighbors=24)
    model = fit_nolan(features, nb, torch.from_numpy(everyone), k=6, cfg=NolanConfig(epochs=30, batch_size=128),
                      progress=False)
    labels = predict_logits(model, features, nb, torch.from_numpy(everyone), 0.1, hide_centre=True).argmax(1).numpy()
    assert len(np.unique(labels)) >= 4  # prototypes stay in use
    assert adjusted_rand_score(niche, labels) > 0.5


def _student_ari(shuffle: bool, seed: int = 0) -> tuple[float, np.ndarray]:
    xy, niche, features = toy_tissue(seed=seed)
    test = xy[:, 1] > np.quantile(xy[:, 1], 0.7)
    train = np.flatnonzero(xy[:, 1] < np.quantile(xy[:, 1], 0.6))  # a buffer between them
    targets = torch.nn.functional.one_hot(torch.from_numpy(niche), 4).float() * 5
    if shuffle:
        targets = targets[torch.from_numpy(np.random.default_rng(1).permutation(len(targets)))]
    nb = build_neighborhoods(xy, train, 25.0, 24, allowed=~test)
    model = fit_student(features, nb, torch.from_numpy(train), targets[train], StudentConfig(epochs=8), seed,
                        progress=False)
    nb_test = build_neighborhoods(xy, np.flatnonzero(test), 25.0, 24)
    logits = predict_logits(model, features, nb_test, torch.from_numpy(np.flatnonzero(test)), 0.1)
    return adjusted_rand_score(niche[test], logits.argmax(1).numpy()), logits.numpy()


def test_student_learns_the_teacher_on_unseen_cells():
    ari, _ = _student_ari(shuffle=False)
    assert ari > 0.5


def test_student_on_shuffled_teacher_labels_scores_near_chance_on_test():
    """Without the teacher's labels the student has nothing to transfer. (Not exactly 0: any
    function of niche-bearing features partitions the tissue somewhat along its niches.)"""
    shuffled, _ = _student_ari(shuffle=True)
    real, _ = _student_ari(shuffle=False)
    assert abs(shuffled) < 0.15 and abs(shuffled) < real / 4


def test_student_is_deterministic_for_a_seed():
    assert np.array_equal(_student_ari(False, seed=0)[1], _student_ari(False, seed=0)[1])


def test_nolan_and_metrics_are_deterministic_for_a_seed():
    xy, niche, features = toy_tissue(n=400)
    everyone = np.arange(len(xy))
    nb = build_neighborhoods(xy, everyone, radius=25.0, max_neighbors=16)
    runs = []
    for _ in range(2):
        model = fit_nolan(features, nb, torch.from_numpy(everyone), k=4, cfg=NolanConfig(epochs=2), progress=False)
        logits = predict_logits(model, features, nb, torch.from_numpy(everyone), 0.1, hide_centre=True)
        labels = logits.argmax(1).numpy()
        runs.append((logits, niche_metrics("x", labels, niche, niche.astype(str), niche.astype(str), True)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert pd.Series(runs[0][1]).equals(pd.Series(runs[1][1]))


def test_scvi_logs_its_epochs_and_device_without_lightnings_chatter(tmp_path):
    """A long scVI fit shows progress in its log (about ten lines, with the ELBO) and the device it
    trained on; Lightning's start-up lines, its srun hint and faiss's loader lines stay out."""
    import anndata as ad
    from scipy import sparse

    from tissuekd.logs import run_logged
    from tissuekd.niche.steps import fit_scvi

    rng = np.random.default_rng(0)
    counts = sparse.csr_matrix(rng.poisson(2.0, (200, 12)).astype(np.float32))
    ad.AnnData(counts).write_h5ad(tmp_path / "expression.h5ad")

    def step():
        import faiss  # noqa: F401  (its loader's lines, as in a Leiden step)

        fit_scvi(str(tmp_path / "expression.h5ad"), str(tmp_path / "model"), str(tmp_path / "latent.parquet"),
                 n_latent=2, max_epochs=4, accelerator="cpu")

    run_logged(str(tmp_path / "scvi.log"), step)
    text = (tmp_path / "scvi.log").read_text()
    assert "scVI epochs (ELBO " in text and "4 of 4 (100%)" in text and "scVI: trained on cpu" in text
    assert not any(noise in text for noise in ("GPU available", "srun", "LeafSpec", "litlogger", "faiss.loader"))
    assert len(pd.read_parquet(tmp_path / "latent.parquet")) == 200
