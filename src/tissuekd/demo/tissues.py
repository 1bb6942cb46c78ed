"""What the demo tissues are made of: cell types (morphology) and niches (type mixtures).

Some niches share their cell types and differ only in proportions, and T and B cells
look alike on H&E, so some distinctions need context rather than a single nucleus.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellType:
    name: str
    radius_um: float  # nucleus semi-major axis
    aspect: float  # minor / major axis
    hema: float  # hematoxylin density of the nucleus
    texture: float  # chromatin granularity (relative noise)
    rim: float  # vesicular nuclei: darker rim, paler centre (0..1)
    cyto_um: float  # cytoplasm radius around the nucleus
    eosin: float  # cytoplasm eosin density


CELL_TYPES = {
    t.name: t
    for t in [
        CellType("tumor", 4.8, 0.80, 0.85, 0.35, 0.6, 8.0, 0.55),
        CellType("fibroblast", 5.0, 0.28, 1.05, 0.10, 0.0, 3.0, 0.75),
        CellType("t_cell", 2.6, 0.95, 1.45, 0.05, 0.0, 3.2, 0.20),
        CellType("b_cell", 2.7, 0.95, 1.40, 0.05, 0.0, 3.3, 0.22),
        CellType("macrophage", 3.8, 0.70, 0.75, 0.25, 0.2, 7.0, 0.40),
        CellType("endothelial", 4.2, 0.35, 0.90, 0.10, 0.0, 3.5, 0.60),
        CellType("plasma", 3.0, 0.85, 1.20, 0.45, 0.3, 5.5, 0.35),
        CellType("smooth_muscle", 5.5, 0.25, 0.80, 0.08, 0.0, 5.0, 1.00),
        CellType("epithelial", 4.0, 0.75, 0.95, 0.20, 0.3, 6.0, 0.45),
    ]
}


@dataclass(frozen=True)
class Niche:
    name: str
    mixture: dict[str, float]  # cell type -> proportion
    density: float  # relative cell density (1 = densest)
    region: str  # pathology annotation a pathologist would draw


TISSUES: dict[str, list[Niche]] = {
    "breast": [
        Niche("tumor_core", {"tumor": 0.88, "macrophage": 0.06, "t_cell": 0.06}, 0.9, "tumor"),
        Niche("invasive_front", {"tumor": 0.45, "fibroblast": 0.25, "t_cell": 0.2, "macrophage": 0.1}, 0.8, "tumor"),
        Niche("stroma", {"fibroblast": 0.7, "endothelial": 0.15, "macrophage": 0.15}, 0.45, "stroma"),
        Niche("inflamed_stroma", {"fibroblast": 0.4, "t_cell": 0.35, "macrophage": 0.25}, 0.7, "stroma"),
        Niche("immune_aggregate", {"t_cell": 0.5, "b_cell": 0.4, "macrophage": 0.1}, 1.0, "immune"),
        Niche("tls", {"b_cell": 0.65, "t_cell": 0.25, "endothelial": 0.1}, 1.0, "immune"),
        Niche("ductal", {"epithelial": 0.8, "fibroblast": 0.1, "smooth_muscle": 0.1}, 0.75, "normal"),
    ],
    "lung": [
        Niche("tumor_core", {"tumor": 0.85, "macrophage": 0.1, "plasma": 0.05}, 0.9, "tumor"),
        Niche("tumor_immune", {"tumor": 0.4, "t_cell": 0.3, "macrophage": 0.3}, 0.85, "tumor"),
        Niche("alveolar", {"epithelial": 0.55, "macrophage": 0.3, "endothelial": 0.15}, 0.4, "normal"),
        Niche("macrophage_rich", {"macrophage": 0.6, "epithelial": 0.25, "t_cell": 0.15}, 0.55, "normal"),
        Niche("stroma", {"fibroblast": 0.6, "endothelial": 0.2, "plasma": 0.2}, 0.5, "stroma"),
        Niche("plasma_stroma", {"fibroblast": 0.3, "plasma": 0.55, "b_cell": 0.15}, 0.7, "stroma"),
        Niche("bronchus_vessel", {"smooth_muscle": 0.45, "endothelial": 0.35, "fibroblast": 0.2}, 0.6, "normal"),
    ],
    "colon": [
        Niche("tumor_gland", {"tumor": 0.9, "t_cell": 0.05, "macrophage": 0.05}, 0.95, "tumor"),
        Niche("tumor_budding", {"tumor": 0.35, "fibroblast": 0.5, "macrophage": 0.15}, 0.6, "tumor"),
        Niche("normal_mucosa", {"epithelial": 0.7, "plasma": 0.2, "macrophage": 0.1}, 0.8, "normal"),
        Niche("lamina_propria", {"plasma": 0.4, "epithelial": 0.2, "t_cell": 0.2, "macrophage": 0.2}, 0.75, "normal"),
        Niche("muscularis", {"smooth_muscle": 0.85, "fibroblast": 0.1, "endothelial": 0.05}, 0.5, "stroma"),
        Niche("lymphoid_follicle", {"b_cell": 0.7, "t_cell": 0.25, "macrophage": 0.05}, 1.0, "immune"),
        Niche("desmoplastic", {"fibroblast": 0.75, "tumor": 0.1, "t_cell": 0.15}, 0.5, "stroma"),
    ],
}
