"""Readers for the published on-disk formats (Xenium bundles, whole-slide images) and atomic writers."""
