"""Train/test strips, the leakage buffer, and the density-adaptive radius."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from tissuekd.errors import InputError
from tissuekd.niche.split import fit_radius, write_split
from tissuekd.spatial.split import BUFFER, TEST, TRAIN, fit_split, strip_index


@st.composite
def layouts(draw):
    """Random tissue: clustered points of uneven density, a crop reach and a target."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(400, 2500))
    width, height = draw(st.floats(300, 1500)), draw(st.floats(600, 2000))
    centres = rng.uniform([0, 0], [width, height], (draw(st.integers(1, 8)), 2))
    spread = draw(st.floats(20, 400))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, spread, (n, 2))
    xy = np.r_[xy, rng.uniform([0, 0], [width, height], (n // 2, 2))]  # background cells in every strip
    return xy, draw(st.floats(5, 60)), draw(st.integers(5, 30))


@settings(max_examples=40, deadline=None)
@given(layouts())
def test_no_train_crop_or_neighbourhood_touches_the_test_strip(layout):
    xy, reach, target = layout
    fit = fit_split(xy, 4, 1, reach, target)
    top, bottom = fit.edges[1], fit.edges[2]
    train, test = fit.roles == TRAIN, fit.roles == TEST
    assert (strip_index(xy[:, 1], fit.edges)[test] == 1).all()
    # a train cell's crop stays clear of the strip
    y = xy[train, 1]
    assert ((y + reach <= top) | (y - reach >= bottom)).all()
    # ...and so does every neighbour within the radius, and that neighbour's crop
    neighbours = cKDTree(xy).query_ball_point(xy[train], r=fit.radius_um)
    for members in neighbours:
        ny = xy[members, 1]
        assert not test[members].any()
        assert ((ny + reach <= top) | (ny - reach >= bottom)).all()


@settings(max_examples=25, deadline=None)
@given(layouts())
def test_radius_hits_the_target_within_ten_percent_and_ignores_the_encoder(layout):
    """Mean neighbour count of non-test cells = target; the crop reach (the encoder) only moves the buffer."""
    xy, reach, target = layout
    fit = fit_split(xy, 4, 1, reach, target)
    nontest = fit.roles != TEST
    counts = cKDTree(xy[nontest]).query_ball_point(xy[nontest], r=fit.radius_um, return_length=True) - 1
    assert counts.mean() == pytest.approx(target, rel=0.10)
    wider = fit_split(xy, 4, 1, reach * 2, target)
    assert wider.radius_um == fit.radius_um and wider.buffer_um == pytest.approx(fit.buffer_um + reach)


def test_empty_test_strip_is_an_error():
    rng = np.random.default_rng(0)
    xy = np.r_[rng.uniform([0, 0], [500, 100], (500, 2)), rng.uniform([0, 300], [500, 400], (500, 2))]
    with pytest.raises(ValueError, match="no cells in the test strip"):
        fit_split(xy, 4, 1, 10, 10)


def test_demo_slide_radius_and_split_files(ingested, tmp_path):
    radius = fit_radius(str(ingested["cells"]), str(tmp_path / "radius.json"), target=20, n_strips=4, test_strip=1)
    assert radius["mean_neighbors"] == pytest.approx(20, rel=0.10)
    assert json.loads((tmp_path / "radius.json").read_text())["test_strip"] == 1
    splits = {mpp: write_split(str(ingested["cells"]), str(ingested["slide"]), str(tmp_path / "radius.json"),
                               str(tmp_path / f"split{mpp}.parquet"), crop_px=224, encoder_mpp=mpp)
              for mpp in (0.5, 1.0)}
    assert set(splits[0.5]["role"]) == {TRAIN, BUFFER, TEST}
    assert radius["n_nontest"] == (splits[0.5]["role"] != TEST).sum()
    # an encoder that sees wider crops only widens the buffer: fewer train cells, the same test cells
    assert (splits[1.0]["role"] == TRAIN).sum() < (splits[0.5]["role"] == TRAIN).sum()
    assert ((splits[1.0]["role"] == TEST) == (splits[0.5]["role"] == TEST)).all()
    # what a train cell's input reaches (its neighbours within the radius, each seen through a crop of
    # crop_px encoder pixels) stays clear of the test strip: distance >= radius + half the crop's span
    cells = pd.read_parquet(ingested["cells"]).set_index("cell_id")
    low, high = radius["strip_edges_um"][1:3]
    for mpp, split in splits.items():
        y = cells.loc[split.loc[split["role"] == TRAIN, "cell_id"], "y_um"].to_numpy()
        gap = np.minimum(np.abs(y - low), np.abs(y - high))
        assert ((y < low) | (y > high)).all() and gap.min() >= radius["radius_um"] + 224 / 2 * mpp, mpp


def test_slide_without_test_cells_names_the_file(ingested, tmp_path):
    cells = pd.read_parquet(ingested["cells"])
    edges = np.linspace(cells.y_um.min(), cells.y_um.max(), 5)
    gap = cells[(cells.y_um < edges[1]) | (cells.y_um > edges[2])]
    path = tmp_path / "cells.parquet"
    gap.to_parquet(path)
    with pytest.raises(InputError, match="test strip") as err:
        fit_radius(str(path), str(tmp_path / "r.json"), target=20, n_strips=4, test_strip=1)
    assert str(path) in str(err.value)
    assert not (tmp_path / "r.json").exists()


def test_a_slide_too_small_to_train_on_stops_at_the_split_naming_it(ingested, tmp_path):
    """400 cells leave fewer train cells than the student's 64 principal components need: the
    split stops with the slide's bundle, the counts and what to change (not scikit-learn, later)."""
    cells = pd.read_parquet(ingested["cells"]).sample(400, random_state=0)
    path = tmp_path / "cells.parquet"
    cells.to_parquet(path)
    fit_radius(str(path), str(tmp_path / "radius.json"), target=20, n_strips=4, test_strip=1)
    with pytest.raises(InputError, match=r"slide .*outs: \d+ train cells remain of 400 .* needs at least 200") as err:
        write_split(str(path), str(ingested["slide"]), str(tmp_path / "radius.json"), str(tmp_path / "split.parquet"),
                    crop_px=112, encoder_mpp=1.0)
    assert json.loads(ingested["slide"].read_text())["bundle"] in str(err.value)
    assert not (tmp_path / "split.parquet").exists()
