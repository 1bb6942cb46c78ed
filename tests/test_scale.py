"""Streamed steps equal their in-memory forms: chunked feature reduction, survival bags read
from disk, moments combined per fold, the Leiden graph built from arrays."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA

from tissuekd.compute import CPU
from tissuekd.encoders.reduce import Reduction, read_rows, reduce_file, sample_rows
from tissuekd.niche.methods import METHODS as NICHE_METHODS
from tissuekd.survival.bags import CohortData, FileBags, MemoryBags, Moments
from tissuekd.survival.train import Inputs


def _features(path, x: np.ndarray, chunks: int = 100) -> str:
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=x, chunks=(chunks, x.shape[1]))
    return str(path)


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2000, 96)) @ rng.normal(size=(96, 96)) + rng.normal(3, 2, 96)).astype(np.float32)
    return x, _features(tmp_path / "f.h5", x)


def test_chunked_reduction_equals_the_in_memory_one(table):
    x, path = table
    fit = np.flatnonzero(np.arange(len(x)) % 3 != 0)
    reduced, red = reduce_file(path, fit, 16, chunk=128)
    mean, std = x[fit].mean(0), x[fit].std(0)
    assert np.allclose(red.mean, mean, atol=1e-5) and np.allclose(red.std, std, atol=1e-5)
    z = (x - mean) / std
    pca = PCA(16, random_state=0).fit(z[fit])
    expected = pca.transform(z)
    expected /= expected[fit].std()
    assert np.allclose(reduced, expected, atol=1e-4)


def test_reduction_statistics_see_only_the_fitting_rows(table, tmp_path):
    """Rows outside `fit_rows` replaced by noise: the reduction and the fitted rows' output are identical."""
    x, path = table
    fit = np.arange(1500)
    noisy = x.copy()
    noisy[1500:] = np.random.default_rng(1).normal(0, 50, noisy[1500:].shape)
    a, red_a = reduce_file(path, fit, 8, sample=700)
    b, red_b = reduce_file(_features(tmp_path / "noisy.h5", noisy), fit, 8, sample=700)
    assert np.array_equal(red_a.mean, red_b.mean) and np.array_equal(red_a.components, red_b.components)
    assert np.array_equal(a[:1500], b[:1500])


def test_a_bounded_sample_of_rows_is_read_in_one_pass(table):
    x, path = table
    rows = sample_rows(np.arange(0, 2000, 2), 300, seed=4)
    assert len(rows) == 300 and np.all(np.diff(rows) > 0) and np.all(rows % 2 == 0)
    with h5py.File(path) as h5:
        assert np.array_equal(read_rows(h5["features"], rows, chunk=77), x[rows])
    assert np.array_equal(sample_rows(np.arange(10), 50), np.arange(10))


def test_zscore_only_below_the_target_width():
    x = np.random.default_rng(2).normal(5, 3, (500, 10)).astype(np.float32)
    red = Reduction.fit(x, max_dim=64)
    assert red.components is None and red.width == 10
    assert np.allclose(red.transform(x).mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("short", [None, 0, 1])  # the cache's budget: the default, the cohort's bytes, one byte less
def test_bags_read_from_disk_equal_the_bags_in_memory(tmp_path, short):
    rng = np.random.default_rng(3)
    bags = [rng.normal(i, 1, (int(rng.integers(20, 60)), 12)).astype(np.float16) for i in range(6)]
    files = []
    for i, bag in enumerate(bags):  # patient 2 has two slides
        if i == 2:
            half = len(bag) // 2
            parts = (_features(tmp_path / "2a.h5", bag[:half], 8), _features(tmp_path / "2b.h5", bag[half:], 8))
            files.append(";".join(parts))
        else:
            files.append(_features(tmp_path / f"{i}.h5", bag, 8))
    size = sum(b.nbytes for b in bags)  # fp16 on disk, as kept
    disk = FileBags(files) if short is None else FileBags(files, cache_bytes=size - short)
    memory = MemoryBags([torch.from_numpy(b) for b in bags])
    assert disk.dim == memory.dim == 12 and [disk.count(i) for i in range(6)] == [len(b) for b in bags]
    for _ in range(2):  # the second pass reads what the first kept
        for i in range(6):
            idx = np.sort(rng.choice(len(bags[i]), 15, replace=False))
            assert torch.equal(disk.rows(i, idx), memory.rows(i, idx).float())
            assert torch.equal(disk.rows(i), memory.rows(i).float())
    assert disk.cached == (short != 1) and len(disk._cache) == (6 if disk.cached else 0)
    train = [0, 2, 3, 5]
    total = Moments.empty(12)
    for i in train:
        total = total.merge(disk.moments(i))
    every = np.concatenate([bags[i] for i in train]).astype(np.float64)
    assert total.n == len(every)
    assert np.allclose(total.mean, every.mean(0), atol=1e-5) and np.allclose(total.std, every.std(0, ddof=1), atol=1e-5)


@pytest.mark.parametrize("on_disk", [True, False])
def test_scaling_a_bag_in_place_leaves_the_cohort_unchanged(tmp_path, on_disk):
    """Inputs.bag scales in place (new bag-sized tensors per patient fragmented the heap to
    9.6 GB at 1,000 patients): reading a bag twice gives the same scaled rows, and the stored
    bags (in memory: float32, as a caller may pass them) keep their values."""
    rng = np.random.default_rng(4)
    raw = [rng.normal(i, 2, (30, 12)).astype(np.float32) for i in range(3)]
    bags = FileBags([_features(tmp_path / f"{i}.h5", b, 8) for i, b in enumerate(raw)]) if on_disk else \
        MemoryBags([torch.from_numpy(b.copy()) for b in raw])
    patients = pd.DataFrame({"patient": list("abc"), "time": [1.0, 2, 3], "event": [1, 0, 1], "fold": [0, 1, 2]})
    mean, std = rng.normal(0, 1, 12).astype(np.float32), rng.uniform(0.5, 2, 12).astype(np.float32)
    inputs = Inputs(CohortData(patients, bags), {"feat_mean": mean, "feat_std": std}, CPU, max_patches=10)
    expected = torch.from_numpy((raw[1] - mean) / std)
    assert torch.allclose(inputs.bag(1), expected) and torch.allclose(inputs.bag(1), expected)
    assert torch.equal(bags.rows(1), torch.from_numpy(raw[1]))
    assert inputs.bag(1, np.random.default_rng(0)).shape == (10, 12)


def test_leiden_graph_from_arrays_is_the_symmetrised_knn_graph():
    from sklearn.neighbors import NearestNeighbors

    from tissuekd.niche.baselines import knn_graph

    z = np.random.default_rng(5).normal(size=(300, 8)).astype(np.float32)
    graph = knn_graph(z, n_neighbors=5)
    _, nn = NearestNeighbors(n_neighbors=6).fit(z).kneighbors(z)  # exact, as faiss's flat index
    expected = {(min(a, b), max(a, b)) for a, row in enumerate(nn) for b in row[1:]}
    assert {tuple(e) for e in graph.get_edgelist()} == expected


def test_leiden_search_hits_k_and_repeats_for_a_seed():
    """The resolution bisection reaches the K asked for on a graph with more structure than K,
    and igraph's generator, seeded for the search, gives the same labels twice."""
    from tissuekd.niche.baselines import knn_graph, leiden_resolution_search

    rng = np.random.default_rng(3)
    z = ((rng.normal(size=(12, 6)) * 3)[rng.integers(0, 12, 1500)] + rng.normal(size=(1500, 6))).astype(np.float32)
    graph = knn_graph(z)
    first = leiden_resolution_search(graph, 8, seed=1)
    assert len(np.unique(first)) == 8
    np.testing.assert_array_equal(leiden_resolution_search(graph, 8, seed=1), first)


def test_leiden_above_its_sample_clusters_a_sample_and_the_rest_join_their_neighbours(tmp_path, monkeypatch):
    """Four separated groups: clustering 400 of 2,000 cells and joining the rest finds the
    same four groups for every cell as clustering all of them; a joined cell takes the most
    common label of its nearest sampled cells."""
    from sklearn.metrics import adjusted_rand_score

    import tissuekd.niche.baselines as baselines

    rng = np.random.default_rng(7)
    groups = rng.integers(0, 4, 2000)
    x = (rng.normal(size=(4, 40)) * 4)[groups] + rng.normal(size=(2000, 40))
    path = _features(tmp_path / "f.h5", x.astype(np.float32))
    whole = baselines.leiden_k(path, 4, sample=5000)
    sampled = baselines.leiden_k(path, 4, sample=400)
    assert adjusted_rand_score(groups, whole) == 1.0 and adjusted_rand_score(groups, sampled) == 1.0

    z = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [5.0], [9.0]], dtype=np.float32)
    labels = baselines.join_nearest(z, np.arange(5), np.array([0, 0, 0, 1, 1]), n_neighbors=3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 0, 1]  # 5: two of its three nearest are 0; 9: two are 1


def test_scale_benchmark_steps_run_on_a_small_synthetic_slide_and_cohort(tmp_path):
    """The benchmark's own steps, in this process, at a small size: every niche step writes its
    output, the metrics table has a row per method, and survival_fit predicts every patient."""
    from tissuekd.bench import scale

    slide = tmp_path / "slide"
    scale.make_slide(slide, 2500, 48)
    scale.write_counts(slide, 2500)
    for step in scale.NICHE_STEPS:
        scale.niche_step(step, slide, epochs=1)
    metrics = pd.read_csv(slide / "metrics.tsv", sep="\t")
    assert list(metrics["method"]) == ["teacher", *NICHE_METHODS]
    assert (slide / "maps.png").read_bytes()[:4] == b"\x89PNG"
    cohort = scale.make_cohort(tmp_path / "cohort", 25, 40, 24)
    scale.survival_step(cohort, epochs=1)
    predictions = pd.read_csv(cohort / "predictions.tsv", sep="\t")
    assert len(predictions) == 25 and predictions["risk"].notna().all()


def test_the_dag_benchmark_plans_its_placeholder_workflow(tmp_path):
    """`--dag` plans every slide's jobs from placeholder inputs (it had stopped planning once
    planning read the clinical table, and with the expression study on by default)."""
    from tissuekd.bench import scale

    seconds, jobs = scale.dag_seconds(scale.dag_workdir(tmp_path, xenium=2, survival=10))
    slides = pd.read_csv(tmp_path / "config/survival_slides.tsv", sep="\t")
    assert len(slides) == 10 and jobs > 2 * len(slides) and seconds > 0


def test_neighbourhoods_built_in_query_blocks_equal_one_search(monkeypatch):
    """The search runs in blocks of query cells (bounded temporaries); the result is the same."""
    import torch

    import tissuekd.spatial.neighborhoods as nbm

    rng = np.random.default_rng(8)
    xy, allowed = rng.uniform(0, 1000, (3000, 2)), rng.random(3000) > 0.3
    whole = nbm.build_neighborhoods(xy, np.arange(3000), 30.0, 16, allowed)
    monkeypatch.setattr(nbm, "QUERY_BLOCK", 700)
    blocks = nbm.build_neighborhoods(xy, np.arange(3000), 30.0, 16, allowed)
    for name in ("index", "offset", "mask"):
        assert torch.equal(getattr(whole, name), getattr(blocks, name))


def test_wsi_benchmark_writes_a_pyramidal_svs_tile_by_tile_and_runs_the_slide_steps(tmp_path):
    """The WSI benchmark's slide is an Aperio SVS OpenSlide reads at its mpp with every level, and
    the survival slide steps cut and encode its tissue patches."""
    import openslide

    from tissuekd.bench import wsi

    image = tmp_path / "slide.svs"
    wsi.write_slide(image, 6000, 4000, 0.25)
    slide = openslide.OpenSlide(str(image))
    assert slide.properties["openslide.vendor"] == "aperio"
    assert float(slide.properties["openslide.mpp-x"]) == 0.25
    assert slide.level_dimensions == ((6000, 4000), (1500, 1000), (375, 250), (93, 62))
    wsi.patches_step(str(image), str(tmp_path))
    wsi.features_step(str(image), str(tmp_path))
    n = wsi.patch_count(tmp_path)
    assert 0 < n < (6000 // 512) * (4000 // 512)  # tissue only
    with h5py.File(tmp_path / "features.h5") as h5:
        assert h5["features"].shape[0] == n


def test_trace_probe_finds_the_latent_the_features_carry_and_not_the_others(tmp_path):
    """bench.traces reads demo-named feature files and recovers a latent written into them."""
    from tissuekd.bench import traces
    from tissuekd.demo.survival import patient_latents

    rng = np.random.default_rng(1)
    direction = rng.normal(size=16)
    for i in range(40):
        barcode = f"TCGA-DM-A{i:03d}"
        a = patient_latents(barcode, 0).a
        x = rng.normal(size=(30, 16)) + a * direction
        with h5py.File(tmp_path / f"{barcode}-01Z-00-DX1.h5", "w") as h5:
            h5.create_dataset("features", data=x.astype(np.float32))
    x, latents = traces.slide_summaries(tmp_path, seed=0)
    scores = traces.probe(x, latents)
    assert scores["a"] > 0.9 and abs(scores["b"]) < 0.5 and abs(scores["m"]) < 0.5
