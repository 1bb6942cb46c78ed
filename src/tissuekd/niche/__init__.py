"""The niche study: Xenium transcriptomics -> H&E niche maps.

Rooms, as in every study: `steps` (what the model rules call), `models` (the neighbourhood
transformer), `train` (teacher/student fitting loops), `baselines` (Histology Leiden),
`evaluate` (metrics, tables, maps); plus the study's own per-slide preprocessing: `ingest`
(Xenium bundle -> cells on the H&E), `split` (radius, strips and buffer), `features`
(per-cell crops through a frozen encoder).
"""
