"""Reading Xenium bundles as published, and the errors for broken ones."""

from __future__ import annotations

import gzip
import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import as_mex
from scipy import sparse

from tissuekd.demo.layout import make_panel
from tissuekd.errors import InputError
from tissuekd.io.xenium import load_bundle, read_cells, read_clusters, read_counts, read_labels


def test_demo_bundle_reads_with_controls_dropped(demo_slide):
    cells, counts, meta = load_bundle(demo_slide / "outs")
    panel = make_panel(np.random.default_rng(3))
    assert meta["pixel_size"] == 0.2125
    assert list(counts.var_names) == panel.genes  # every control feature dropped, genes kept in order
    assert not any(v.startswith(("NegControl", "Unassigned")) for v in counts.var_names)
    with h5py.File(demo_slide / "outs" / "cell_feature_matrix.h5") as h5:
        assert h5["matrix/shape"][0] == len(panel.genes) + len(panel.controls)  # the file does hold controls
    assert len(cells) >= 2500 and all(isinstance(i, str) for i in cells.index[:50])
    assert list(counts.obs_names) == list(cells.index)
    clusters = read_clusters(demo_slide / "outs")
    assert clusters.index.isin(cells.index).all()


def test_counts_follow_the_cell_table_when_the_two_list_cells_in_different_orders(demo_slide, bundle_copy):
    """The matrix's columns are matched to the cell table by barcode, not by position."""
    cells = pd.read_parquet(bundle_copy / "outs" / "cells.parquet")
    cells.sample(frac=1.0, random_state=0).to_parquet(bundle_copy / "outs" / "cells.parquet", index=False)
    shuffled_cells, shuffled, _ = load_bundle(bundle_copy / "outs")
    _, counts, _ = load_bundle(demo_slide / "outs")
    assert list(shuffled.obs_names) == list(shuffled_cells.index) != list(counts.obs_names)
    assert (shuffled.X != counts[shuffled.obs_names].X).nnz == 0


def test_a_bundle_with_the_mex_folder_only_reads_as_its_hdf5_matrix(demo_slide, bundle_copy):
    """10x offers the matrix as HDF5 and as a MEX folder, each downloadable alone; a bundle with
    only the folder was refused for lacking the .h5."""
    as_mex(bundle_copy / "outs")
    cells, counts, _ = load_bundle(bundle_copy / "outs")
    want_cells, want, _ = load_bundle(demo_slide / "outs")
    assert cells.equals(want_cells) and list(counts.var_names) == list(want.var_names)
    assert list(counts.obs_names) == list(want.obs_names) and sparse.isspmatrix_csr(counts.X)
    assert (counts.X != want.X).nnz == 0


@pytest.mark.parametrize("damage, named", [
    (lambda d: (d / "barcodes.tsv.gz").unlink(), "barcodes.tsv.gz: missing"),
    (lambda d: (d / "matrix.mtx.gz").write_bytes(gzip.compress(b"%%MatrixMarket matrix coordinate integer general\n")),
     "matrix.mtx.gz: not a readable 10x MEX matrix"),
    (lambda d: (d / "features.tsv.gz").write_bytes(gzip.compress(b"G1\tA\tGene Expression\n")),
     "matrix.mtx.gz: not a readable 10x MEX matrix"),
], ids=["no barcodes", "no size line", "one feature for many rows"])
def test_a_broken_mex_folder_names_the_file(bundle_copy, damage, named):
    as_mex(bundle_copy / "outs")
    damage(bundle_copy / "outs" / "cell_feature_matrix")
    with pytest.raises(InputError, match=named.replace(".", r"\.")):
        load_bundle(bundle_copy / "outs")


def _as_xoa1(bundle):
    """Rewrite a bundle the XOA 1.0 way: cells.csv.gz only, integer ids, bytes barcodes."""
    table = pd.read_parquet(bundle / "cells.parquet")
    new_ids = {old: str(i + 1) for i, old in enumerate(table["cell_id"])}
    table["cell_id"] = np.arange(1, len(table) + 1)
    (bundle / "cells.parquet").unlink()
    with gzip.open(bundle / "cells.csv.gz", "wt") as fh:
        table.to_csv(fh, index=False)
    with h5py.File(bundle / "cell_feature_matrix.h5", "r+") as h5:
        old = [b.decode() for b in h5["matrix/barcodes"][:]]
        del h5["matrix/barcodes"]
        h5["matrix/barcodes"] = np.array([new_ids[o].encode() for o in old])
    return table


def test_xoa1_bundle_with_integer_ids_and_csv(bundle_copy):
    table = _as_xoa1(bundle_copy / "outs")
    cells, counts, _ = load_bundle(bundle_copy / "outs")
    assert list(cells.index) == [str(i) for i in table["cell_id"]]
    assert list(counts.obs_names) == list(cells.index)


def test_parquet_ids_stored_as_bytes(bundle_copy):
    path = bundle_copy / "outs" / "cells.parquet"
    table = pd.read_parquet(path)
    table["cell_id"] = table["cell_id"].str.encode("ascii")
    table.to_parquet(path)
    cells, _, _ = load_bundle(bundle_copy / "outs")
    assert cells.index[0] == table["cell_id"][0].decode()


@pytest.mark.parametrize("name", ["cells.parquet", "cell_feature_matrix.h5", "experiment.xenium"])
def test_missing_file_is_named(bundle_copy, name):
    (bundle_copy / "outs" / name).unlink()
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        load_bundle(bundle_copy / "outs")


def test_barcodes_not_matching_cells(bundle_copy):
    with h5py.File(bundle_copy / "outs" / "cell_feature_matrix.h5", "r+") as h5:
        barcodes = h5["matrix/barcodes"][:]
        barcodes[:5] = [b"zzzzzzz%d-1" % i for i in range(5)]
        h5["matrix/barcodes"][...] = barcodes
    with pytest.raises(InputError, match="barcodes do not match") as err:
        load_bundle(bundle_copy / "outs")
    assert "cell_feature_matrix.h5" in str(err.value)


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (-3.0, "negative")])
def test_bad_counts(bundle_copy, bad, message):
    with h5py.File(bundle_copy / "outs" / "cell_feature_matrix.h5", "r+") as h5:
        data = h5["matrix/data"][:].astype(np.float32)
        data[7] = bad
        del h5["matrix/data"]
        h5["matrix/data"] = data
    with pytest.raises(InputError, match=message):
        load_bundle(bundle_copy / "outs")


def test_blank_labels_in_a_cell_type_table_are_no_labels_not_a_class_nan(tmp_path):
    (tmp_path / "types.csv").write_text("cell_id,type\naaa-1,T cell\naab-1,\naac-1,NA\naad-1,B cell\n")
    labels = read_labels(tmp_path / "types.csv")
    assert labels.to_dict() == {"aaa-1": "T cell", "aad-1": "B cell"}


def test_numeric_labels_with_blanks_stay_as_written(tmp_path):
    """A column of numbers with a blank reads as floats: labels '1.0' and ids '7.0' beside
    clusters '1' and cells '7'. Read as written, from CSV and from parquet."""
    (tmp_path / "types.csv").write_text("cell_id,type\n7,1\n8,\n9,2\n")
    assert read_labels(tmp_path / "types.csv").to_dict() == {"7": "1", "9": "2"}
    pd.DataFrame({"cell_id": [7, 8, 9], "type": [1, None, 2]}).to_parquet(tmp_path / "types.parquet")
    assert read_labels(tmp_path / "types.parquet").to_dict() == {"7": "1", "9": "2"}


def test_clusters_read_from_the_downloads_analysis_archive(bundle_copy):
    """The public *_outs.zip ships analysis/ packed as analysis.tar.gz: its clusters are the same."""
    import shutil
    import tarfile

    outs = bundle_copy / "outs"
    unpacked = read_clusters(outs)
    with tarfile.open(outs / "analysis.tar.gz", "w:gz") as tar:
        tar.add(outs / "analysis", arcname="analysis")
    shutil.rmtree(outs / "analysis")
    assert read_clusters(outs).equals(unpacked)
    (outs / "analysis.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="analysis.tar.gz: not a readable tar.gz"):
        read_clusters(outs)


def test_a_label_table_without_a_header_row_is_named(tmp_path):
    """Read with a header, its first cell would silently become the column names."""
    (tmp_path / "types.csv").write_text("aaabbbcc-1,T cell\naaabbbcd-1,B cell\n")
    with pytest.raises(InputError, match=r"types.csv: the first row \(aaabbbcc-1, T cell\) looks like a cell"):
        read_labels(tmp_path / "types.csv")
    (tmp_path / "ids.csv").write_text("17,T cell\n18,B cell\n")
    with pytest.raises(InputError, match="needs a header row"):
        read_labels(tmp_path / "ids.csv")


@pytest.mark.parametrize("name, content", [
    ("types.csv", b'cell_id,type\naaabbbcc-1,"T cell\naaabbbcd-1,B cell\n'),  # an open quote: a cut file
    ("types.parquet", b"PAR1 not really"),
    ("types.xlsx", b"not a workbook"),
])
def test_a_malformed_label_table_is_named(tmp_path, name, content):
    """A cut or malformed table stops with its path, not a reader's traceback that names no file."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=rf"{name}: not a readable"):
        read_labels(tmp_path / name)


def _set_data(bundle, change):
    with h5py.File(bundle / "outs" / "cell_feature_matrix.h5", "r+") as h5:
        data = change(h5["matrix/data"][:], h5["matrix/indptr"][:])
        del h5["matrix/data"]
        h5["matrix/data"] = data


def test_a_matrix_without_counts_is_refused_and_empty_cells_are_counted(bundle_copy, caplog):
    """An all-zero matrix ran to the end before, every cell in one niche."""
    def first_cells_empty(data, indptr):
        data[: indptr[40]] = 0
        return data

    caplog.set_level("INFO")
    _set_data(bundle_copy, first_cells_empty)
    cells, _, _ = load_bundle(bundle_copy / "outs")
    assert f"40 of {len(cells)} cells have no count: kept" in caplog.text
    _set_data(bundle_copy, lambda data, indptr: np.zeros_like(data))
    with pytest.raises(InputError, match=rf"cell_feature_matrix.h5: {len(cells)} of {len(cells)} cells have no count"):
        load_bundle(bundle_copy / "outs")


def test_an_hdf5_file_that_is_not_a_10x_matrix_names_what_it_lacks(bundle_copy):
    path = bundle_copy / "outs" / "cell_feature_matrix.h5"
    path.unlink()
    with h5py.File(path, "w") as h5:
        h5["matrix"] = np.zeros((3, 3))  # a dense array where 10x has a group
    with pytest.raises(InputError, match=r"not a 10x HDF5 matrix: matrix/ lacks \['barcodes'"):
        load_bundle(bundle_copy / "outs")


def test_feature_names_that_are_not_ascii_are_named(bundle_copy):
    with h5py.File(bundle_copy / "outs" / "cell_feature_matrix.h5", "r+") as h5:
        names = h5["matrix/features/name"][:]
        names[0] = "Gène".encode()
        del h5["matrix/features/name"]
        h5["matrix/features/name"] = names.astype(object)
    with pytest.raises(InputError, match="cell_feature_matrix.h5: barcodes or feature names are not ASCII"):
        load_bundle(bundle_copy / "outs")


def test_label_tables_as_pathology_groups_keep_them(tmp_path, caplog):
    """Excel reads; a third column is named in a warning; GeoJSON polygons and a header without rows
    are refused by name (a raw UnicodeDecodeError and 'no cell id matches ... e.g. []' before)."""
    table = pd.DataFrame({"cell_id": ["aaaabbbb-1", "aaaacccc-1"], "region": ["tumour", "stroma"]})
    table.to_excel(tmp_path / "pathology.xlsx", index=False)
    assert read_labels(tmp_path / "pathology.xlsx").to_dict() == {"aaaabbbb-1": "tumour", "aaaacccc-1": "stroma"}
    table.assign(score="0.9").to_csv(tmp_path / "three.csv", index=False)
    assert read_labels(tmp_path / "three.csv").tolist() == ["tumour", "stroma"]
    assert "three.csv: the labels are its column 'region'; ['score'] ignored" in caplog.text
    (tmp_path / "regions.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InputError, match="regions.geojson: polygon annotations"):
        read_labels(tmp_path / "regions.geojson")
    (tmp_path / "empty.csv").write_text("cell_id,niche\n")
    with pytest.raises(InputError, match="empty.csv: has a header but no rows"):
        read_labels(tmp_path / "empty.csv")
    (tmp_path / "latin1.csv").write_bytes("cell_id,region\naaaabbbb-1,tumeur \xe5\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.csv: not a UTF-8 text table"):
        read_labels(tmp_path / "latin1.csv")


def test_label_tables_as_pandas_writes_them_or_with_spaces_read_by_the_id_columns_name(tmp_path):
    """pandas' `to_csv` writes its row numbers first: taken for the ids, every cell had another
    cell's label. `a, b` separators left a space in every label (' Tumor' is not 'Tumor')."""
    table = pd.DataFrame({"cell_id": ["7", "3", "5"], "cell_type": ["T", "B", "T"]})
    table.to_csv(tmp_path / "indexed.csv")  # ,cell_id,cell_type / 0,7,T / ...
    assert read_labels(tmp_path / "indexed.csv").to_dict() == {"7": "T", "3": "B", "5": "T"}
    (tmp_path / "spaced.csv").write_text("cell_id, cell_type\n7, T\n3, B\n")
    assert read_labels(tmp_path / "spaced.csv").to_dict() == {"7": "T", "3": "B"}
    (tmp_path / "r.csv").write_text('"","cell_type"\n"7","T"\n"3","B"\n')  # R's write.csv: ids as row names
    assert read_labels(tmp_path / "r.csv").to_dict() == {"7": "T", "3": "B"}
    (tmp_path / "one.csv").write_text("cell_id\naaaabbbb-1\n")
    with pytest.raises(InputError, match="one.csv: expected at least two columns"):
        read_labels(tmp_path / "one.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv: not a readable"):
        read_labels(tmp_path / "empty.csv")


@pytest.mark.parametrize(("meta", "problem"), [
    ({"pixel_size": float("nan")}, r"`pixel_size` must be µm per morphology-image pixel \(Xenium: 0.2125\), found nan"),
    ({"pixel_size": 212.5}, "found 212.5"),
    ({"pixel_size": True}, "found True"),
    ([0.2125], "must be a JSON object, found a list"),
])
def test_an_experiment_file_without_a_plausible_pixel_size_is_named(tmp_path, meta, problem):
    """A NaN pixel size passed and put every cell at NaN on the H&E; nm, or a boolean, blamed the alignment."""
    from tissuekd.io.xenium import read_experiment

    (tmp_path / "experiment.xenium").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=f"experiment.xenium: .*{problem}"):
        read_experiment(tmp_path)


def test_a_cell_table_that_is_no_table_or_lacks_ids_and_a_matrix_with_a_barcode_twice_are_named(bundle_copy):
    outs = bundle_copy / "outs"
    table = pd.read_parquet(outs / "cells.parquet")
    (outs / "cells.parquet").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    with pytest.raises(InputError, match=r"cells.parquet: not a readable cell table \(a Git LFS pointer"):
        read_cells(outs)
    table.assign(cell_id=table["cell_id"].where(table.index != 4)).to_parquet(outs / "cells.parquet")
    with pytest.raises(InputError,
                       match=r"cells.parquet: 1 cell\(s\) without a cell_id, e.g. data row 5 \(counting from 1"):
        read_cells(outs)
    with h5py.File(outs / "cell_feature_matrix.h5", "r+") as h5:
        barcodes = h5["matrix/barcodes"][:]
        barcodes[1] = barcodes[0]
        h5["matrix/barcodes"][...] = barcodes
    with pytest.raises(InputError, match=r"cell_feature_matrix.h5: 1 barcode\(s\) listed twice"):
        read_counts(outs)


def test_bad_centroids_and_repeated_ids_are_counted_with_examples(bundle_copy, tmp_path):
    path = bundle_copy / "outs" / "cells.parquet"
    table = pd.read_parquet(path)
    first = table["cell_id"][0]
    table.loc[[3, 5], "x_centroid"] = np.nan
    table.to_parquet(path)
    with pytest.raises(InputError, match=r"2 cell\(s\) with NaN or infinite centroid coordinates, e.g. \["):
        load_bundle(bundle_copy / "outs")
    table.loc[1, "cell_id"] = first
    table.to_parquet(path)
    with pytest.raises(InputError, match=rf"1 cell_id value\(s\) repeated, e.g. \['{first}'\]"):
        load_bundle(bundle_copy / "outs")
    (tmp_path / "dup.csv").write_text("cell_id,label\na-1,x\na-1,y\n")
    with pytest.raises(InputError, match=r"dup.csv: duplicate cell ids: 1 repeated, e.g. \['a-1'\]"):
        read_labels(tmp_path / "dup.csv")
