"""Synthetic demo data written in the real on-disk formats (Xenium bundles, pyramidal H&E).

Seeded and small enough for two CPU cores, but not noise: cell types have their own
expression programs and morphology, and niches are regions with distinct mixtures.
"""

DEMO_VERSION = "1"  # bump when the generator changes what it writes
