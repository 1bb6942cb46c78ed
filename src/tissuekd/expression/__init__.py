"""The expression study: spot-level gene expression from the H&E under each spot (CMRCNet)."""
