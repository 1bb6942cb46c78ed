"""The niche study's per-slide steps (DESIGN 2.1): ingest, radius, split, features."""
