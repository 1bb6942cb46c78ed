"""Cells onto the H&E through the inverse of Xenium's alignment affine."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import he_alignment, he_image

from tissuekd.errors import InputError
from tissuekd.io.alignment import crop_reach_um, he_mpp, he_to_um, read_alignment, um_to_he
from tissuekd.io.wsi import open_slide
from tissuekd.niche.ingest import register_cells


def test_demo_affine_rotates_and_scales(demo_slide):
    affine = read_alignment(he_alignment(demo_slide))
    linear = affine[:2, :2]
    assert abs(np.sqrt(abs(np.linalg.det(linear))) - 1.0) > 0.1  # scale != 1
    assert abs(np.arctan2(linear[1, 0], linear[0, 0])) > np.deg2rad(3)  # rotated
    assert he_mpp(affine, 0.2125) == pytest.approx(0.25, rel=1e-6)


def test_round_trip_within_one_micron(ingested, demo_slide):
    cells = pd.read_parquet(ingested["cells"])
    affine = read_alignment(he_alignment(demo_slide))
    back = he_to_um(cells[["x_he", "y_he"]].to_numpy(), affine, 0.2125)
    assert np.abs(back - cells[["x_um", "y_um"]].to_numpy()).max() < 1.0


def _centre_red(slide, xy: np.ndarray, half: int = 2) -> np.ndarray:
    """Mean red channel in a 5x5 px box at each position: hematoxylin absorbs red, so low = nucleus."""
    return np.array([
        slide.read(0, int(round(x)) - half, int(round(y)) - half, 2 * half + 1, 2 * half + 1)[..., 0].mean()
        for x, y in xy
    ])


def test_crop_is_centred_on_the_drawn_nucleus(ingested, demo_slide):
    cells = pd.read_parquet(ingested["cells"]).sample(300, random_state=0)
    with open_slide(he_image(demo_slide)) as slide:
        background = slide.read(0, 0, 0, 50, 50)[..., 0].mean()
        registered = _centre_red(slide, cells[["x_he", "y_he"]].to_numpy())
        # a reader that ignores the affine (microns / H&E mpp) misses the nuclei: the check can fail
        naive = _centre_red(slide, cells[["x_um", "y_um"]].to_numpy() / 0.25)
    assert background > 230  # glass
    assert np.quantile(registered, 0.95) < 170  # nearly every registered centre is inside a nucleus
    assert np.median(naive) > np.median(registered) + 40


def test_cells_outside_the_image_are_an_error(demo_slide):
    affine = read_alignment(he_alignment(demo_slide))
    cells = pd.DataFrame({"x_um": [10.0, 5000.0], "y_um": [10.0, 20.0]}, index=["a", "b"])
    with pytest.raises(InputError, match="outside the H&E image") as err:
        register_cells(cells, affine, 0.2125, (4000, 4000), "slide_he_imagealignment.csv")
    assert "slide_he_imagealignment.csv" in str(err.value)


def test_a_few_cells_off_the_image_are_left_out_with_a_warning(demo_slide, caplog):
    """An H&E scan cropped a little tighter than the Xenium region: up to 1% of cells may fall off."""
    affine = read_alignment(he_alignment(demo_slide))
    x = np.r_[np.linspace(10, 500, 199), 5000.0]
    cells = pd.DataFrame({"x_um": x, "y_um": 20.0}, index=[f"c{i}" for i in range(200)])
    he, inside = register_cells(cells, affine, 0.2125, (4000, 4000), "slide_he_imagealignment.csv")
    assert inside.sum() == 199 and not inside[-1] and he.shape == (200, 2)
    assert "1 of 200 cells fall outside the H&E image" in caplog.text


@pytest.mark.parametrize(
    "text, message",
    [("1,0,0\n0,1,0\n", "3x3"), ("1,0,0\n0,nan,0\n0,0,1\n", "NaN"), ("0,0,0\n0,0,0\n0,0,1\n", "singular"),
     ("1,0,0\n0,1,0\n1,0,1\n", "last row")],
)
def test_malformed_alignment(tmp_path, text, message):
    path = tmp_path / "x_he_imagealignment.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_alignment(path)


def test_alignment_with_header_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("a,b,c\n2,0,5\n0,2,7\n0,0,1\n")
    affine = read_alignment(path)
    assert um_to_he(np.array([[5 * 0.5 + 2 * 0.5 * 3, 7 * 0.5]]), affine, 0.5)[0] == pytest.approx([3, 0])


def test_an_alignment_saved_by_numpy_or_with_quotes_reads_the_same(tmp_path):
    """numpy.savetxt separates by spaces, in scientific notation (its first row was taken for a header)."""
    affine = np.array([[2.0, 0.1, 5.0], [-0.1, 2.0, 7.0], [0.0, 0.0, 1.0]])
    np.savetxt(tmp_path / "numpy.csv", affine)
    (tmp_path / "quoted.csv").write_text('"2","0.1","5",\n"-0.1","2","7",\n"0","0","1",\n')
    for name in ("numpy.csv", "quoted.csv"):
        np.testing.assert_allclose(read_alignment(tmp_path / name), affine)


def test_crop_reach_grows_with_rotation():
    theta = np.deg2rad(45)
    rotated = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    assert crop_reach_um(np.eye(3), 1.0, 10) == pytest.approx(10)
    assert crop_reach_um(rotated, 1.0, 10) == pytest.approx(10 * np.sqrt(2))
    # any affine: the y extent of the crop's corners, mapped (H&E px -> morphology px -> µm at 0.2125)
    affine = np.array([[1.3, 0.4, 50], [-0.7, 1.1, 20], [0, 0, 1]])
    corners = np.array([[-10, -10], [10, -10], [10, 10], [-10, 10]]) @ affine[:2, :2].T * 0.2125
    assert crop_reach_um(affine, 0.2125, 10) == pytest.approx(np.ptp(corners[:, 1]) / 2)


def test_the_sheets_labels_reach_the_labels_table_in_the_cells_order(ingested, demo_slide, tmp_path, caplog):
    from tissuekd.niche.ingest import write_labels

    cells = pd.read_parquet(ingested["cells"])
    out = tmp_path / "labels.parquet"
    pathology = tmp_path / "pathology.csv"
    given = pd.read_csv(demo_slide / "pathology.csv")
    pd.concat([given, pd.DataFrame({"cell_id": ["stranger-1"], given.columns[1]: ["tumour"]})]).to_csv(pathology,
                                                                                                      index=False)
    write_labels(str(ingested["cells"]), str(out), str(demo_slide / "outs"), pathology=str(pathology),
                 truth=str(demo_slide / "niche_truth.csv"))
    labels = pd.read_parquet(out)
    assert labels["cell_type"].str.startswith("cluster_").all()  # the bundle's clusters, without a cell-type table
    truth = pd.read_csv(demo_slide / "niche_truth.csv").set_index("cell_id")["niche"]
    assert list(labels["cell_id"]) == list(cells["cell_id"])
    assert (labels["truth"].to_numpy() == truth.loc[cells["cell_id"]].to_numpy()).all()
    assert "pathology.csv: 1 of its" in caplog.text and "name no cell of this slide" in caplog.text


@pytest.mark.parametrize("column", ["pathology", "truth"])
def test_a_label_table_matching_no_cell_is_named(ingested, demo_slide, tmp_path, column):
    """A pathology table of another slide gave an empty probe without a word, before."""
    from tissuekd.niche.ingest import write_labels

    stranger = tmp_path / f"{column}.csv"
    stranger.write_text("cell_id,label\nnot-a-cell,tumour\n")
    with pytest.raises(InputError, match=f"{column}.csv: no cell id matches the Xenium cells"):
        write_labels(str(ingested["cells"]), str(tmp_path / "labels.parquet"), str(demo_slide / "outs"),
                     **{column: str(stranger)})
    assert not (tmp_path / "labels.parquet").exists()


def test_an_alignment_of_another_scale_than_the_image_is_refused(ingested, demo_slide, tmp_path):
    """An identity alignment (0.2125 um/px) for the demo's 0.25 um/px H&E: every cell lands up to
    18% of its distance from the origin off, and no other check sees it."""
    import json

    from tissuekd.niche.ingest import check_he_scale, ingest_slide

    assert json.loads(ingested["slide"].read_text())["he_image_mpp"] == pytest.approx(0.25, rel=1e-3)
    identity = tmp_path / "identity_he_imagealignment.csv"
    identity.write_text("1,0,0\n0,1,0\n0,0,1\n")
    outs = [str(tmp_path / n) for n in ("cells.parquet", "expression.h5ad", "slide.json")]
    with pytest.raises(InputError, match=r"identity_he_imagealignment.csv: implies 0.2125 um per H&E pixel, but "
                                         r".*he_image.ome.tif states 0.2500 \(0.85x\)"):
        ingest_slide(str(demo_slide / "outs"), str(he_image(demo_slide)), str(identity), *outs)
    assert not any((tmp_path / n).exists() for n in ("cells.parquet", "expression.h5ad", "slide.json"))

    # the sheet's he_mpp where the image's metadata is wrong: here it says 0.25 and the scan is 0.2125
    ingest_slide(str(demo_slide / "outs"), str(he_image(demo_slide)), str(identity), *outs, sheet_mpp=0.2125,
                 mpp_tolerance=0.1)
    assert json.loads((tmp_path / "slide.json").read_text())["he_image_mpp"] == 0.2125
    check_he_scale(np.eye(3), 0.2125, 0.25, None, identity, "he.tif")  # tolerance null: not compared
    check_he_scale(np.eye(3), 0.2125, None, 0.1, identity, "he.tif")  # no resolution in the image
    check_he_scale(np.eye(3) * 1.05, 0.2125, 0.2125, 0.1, identity, "he.tif")  # within 10%
    # the inverse matrix (morphology -> H&E) of a 0.5 um/px scan is said to be one
    inverse = np.linalg.inv(np.diag([0.5 / 0.2125, 0.5 / 0.2125, 1.0]))
    with pytest.raises(InputError, match=r"he.tif states 0.5000 \(0.18x\): it looks inverted \(morphology -> H&E\)"):
        check_he_scale(inverse, 0.2125, 0.5, 0.1, identity, "he.tif")
    with pytest.raises(InputError, match=r"the sheet's he_mpp for he.tif is 0.3000 .*Is the sheet's he_mpp right"):
        check_he_scale(np.eye(3), 0.2125, 0.3, 0.1, identity, "he.tif", from_sheet=True)
    for wrong in (0.0, 250.0):  # 0 was taken for no value; 250 was called the image's
        with pytest.raises(InputError, match=r"he_image.ome.tif: the sheet's he_mpp for it, .* µm per pixel, outside"):
            ingest_slide(str(demo_slide / "outs"), str(he_image(demo_slide)), str(identity), *outs, sheet_mpp=wrong)


def test_cells_on_another_slides_he_or_far_off_it_are_said(ingested, demo_slide, tmp_path, caplog):
    """Same resolution, so the scale check passes both: another slide's H&E, and an alignment 10
    µm off. The cells then match the H&E's nuclei hardly better at the alignment than moved off it."""
    import json

    from tissuekd.demo.xenium import make_demo_slide
    from tissuekd.niche.ingest import ingest_slide

    agreement = json.loads(ingested["slide"].read_text())["he_stain_agreement"]
    assert agreement["z"] >= 3, agreement  # measured 9.0
    other = tmp_path / "other"
    make_demo_slide(other, "breast", n_cells=2500, seed=4)
    affine = read_alignment(he_alignment(demo_slide))
    off = tmp_path / "off_he_imagealignment.csv"  # the H&E pixel 10 um further right maps onto each cell
    np.savetxt(off, affine @ np.array([[1, 0, -10 / 0.25], [0, 1, 0], [0, 0, 1]]), delimiter=",")
    outs = [str(tmp_path / n) for n in ("cells.parquet", "expression.h5ad", "slide.json")]
    for image, alignment in ((he_image(other), he_alignment(demo_slide)), (he_image(demo_slide), off)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ingest_slide(str(demo_slide / "outs"), str(image), str(alignment), *outs)
        assert (f"{image} with {alignment}: the cells match the H&E's nuclei hardly better at the alignment"
                in caplog.text), json.loads((tmp_path / "slide.json").read_text())["he_stain_agreement"]


def test_explorer_keypoints_table_is_named_as_such(tmp_path):
    path = tmp_path / "keypoints.csv"
    path.write_text("fixedX,fixedY,alignmentX,alignmentY\n10,20,30,40\n11,21,31,41\n12,22,32,42\n")
    with pytest.raises(InputError, match="keypoints table"):
        read_alignment(path)


def test_alignment_saved_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """Excel writes a UTF-8 BOM: the first row is data, not a header to skip."""
    path = tmp_path / "a.csv"
    path.write_text("2,0,5\n0,2,7\n0,0,1\n", encoding="utf-8-sig")
    assert read_alignment(path)[0].tolist() == [2, 0, 5]
    path.write_text("x,0,5\n0,2,7\n0,0,1\nq,0,0\n")
    with pytest.raises(InputError, match="non-numeric row"):
        read_alignment(path)
