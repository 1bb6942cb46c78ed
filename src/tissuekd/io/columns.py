"""Column names of the niche study's per-cell tables (cells.parquet, labels.parquet, split.parquet, latent.parquet,
logits.parquet) and of the feature files' cell index, defined once for every reader and writer."""

CELL_ID = "cell_id"  # our cell index: the Xenium bundle's cell_id, as a string
X_UM, Y_UM = "x_um", "y_um"  # cell centroid in the Xenium frame, µm
XY_UM = [X_UM, Y_UM]
XY_HE = ["x_he", "y_he"]  # the same centroid on the H&E, level-0 pixels
UNANNOTATED = "unannotated"  # labels.parquet: a cell the pathology table does not annotate
UNKNOWN_TYPE = "unknown"  # labels.parquet: a cell type neither the sheet nor the bundle gives
LOGIT = "logit_"  # logits.parquet: logit_0 .. logit_{K-1}, one column per niche
