"""Which of the survival demo's latents its patch features carry: a ridge probe from each slide's
mean and SD of patch features to the patient's true latents (a, b, m of tissuekd.demo.survival),
cross-validated over slides. A latent the features do not carry cannot be learnt by any model on
them, teacher-guided or not.

    python -m tissuekd.bench.traces [--features results/survival/features/demo-mobilenet-224] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict

from tissuekd.demo.survival import patient_latents
from tissuekd.errors import InputError


def slide_summaries(folder: Path, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(slides, 2 x dim) mean and SD of each slide's patch features, z-scored over slides, and the
    slides' patient latents (the patient barcode is the slide name's first three `-` fields for
    TCGA slides, all but the last for CPTAC ones)."""
    rows, latents = [], []
    for path in sorted(folder.glob("*.h5")):
        fields = path.stem.split("-")
        barcode = "-".join(fields[:3] if path.stem.startswith("TCGA-") else fields[:-1])
        with h5py.File(path) as h5:
            x = h5["features"][:].astype(np.float32)
        rows.append(np.concatenate([x.mean(0), x.std(0)]))
        latents.append(vars(patient_latents(barcode, seed)))
    if len(rows) < 10:
        raise InputError(folder, f"{len(rows)} feature files; the probe needs the demo's slides (84)")
    x = np.array(rows)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), pd.DataFrame(latents)


def probe(x: np.ndarray, latents: pd.DataFrame, folds: int = 5) -> dict[str, float]:
    """Pearson r between each latent and its 5-fold cross-validated ridge prediction."""
    ridge = RidgeCV(alphas=np.logspace(-1, 5, 13))
    cv = KFold(folds, shuffle=True, random_state=0)
    return {k: float(np.corrcoef(cross_val_predict(ridge, x, latents[k], cv=cv), latents[k])[0, 1]) for k in "abm"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=Path("results/survival/features/demo-mobilenet-224"))
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (config: demo.seed)")
    args = parser.parse_args(argv)
    x, latents = slide_summaries(args.features, args.seed)
    scores = probe(x, latents)
    print(f"{len(x)} slides, ridge probe from patch-feature mean and SD, 5-fold CV over slides:")
    for k, r in scores.items():
        print(f"    {k}: r = {r:+.2f}")


if __name__ == "__main__":
    main()
