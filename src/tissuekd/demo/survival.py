"""A TCGA-like survival cohort in the published on-disk forms: Aperio SVS slides (one per
patient, 20x, 0.5 µm/px), a TCGA-CDR clinical table and an RNA matrix keyed by barcode.

Each patient has three standard-normal latents:
  a  an RNA program that shows plainly in the tissue (the share of high-grade tumour),
  b  an RNA program that leaves a fainter trace in H&E (the share of stroma and low-grade tumour
     taken by lymphocyte clusters), hard to learn from survival labels alone,
  m  a morphology invisible in RNA (the share of necrosis).
Log-hazard = 0.5 a + 1.2 b + 0.5 m, Weibull times, ~60% events. The teacher sees b through
RNA; the pathology-only baseline must find b's trace from censored outcomes of a few dozen
patients; the AMKD student is shown the teacher's genomic embedding (which carries b) for
every training patient, so it can learn the trace. Slides also vary in stain strength, a
nuisance unrelated to survival, as in real cohorts.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from scipy import ndimage

from tissuekd.io.atomic import atomic_path

log = logging.getLogger(__name__)

MPP = 0.5  # 20x
SIZE = (1792, 2560)  # rows, cols at level 0: 7 x 10 patches of 256 px
HAZARD = {"a": 0.5, "b": 1.2, "m": 0.5}
N_PROGRAM_GENES = 20
N_GENES = 200
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
STAIN_SD = 0.1  # log-SD of each slide's hematoxylin and eosin gains


@dataclass(frozen=True)
class Patient:
    barcode: str
    a: float
    b: float
    m: float

    @property
    def log_hazard(self) -> float:
        return HAZARD["a"] * self.a + HAZARD["b"] * self.b + HAZARD["m"] * self.m


def patient_latents(barcode: str, seed: int) -> Patient:
    """Seeded by the barcode, so a slide can be painted without generating its cohort."""
    a, b, m = np.random.default_rng([seed, zlib.crc32(barcode.encode())]).standard_normal(3)
    return Patient(barcode, float(a), float(b), float(m))


# ---- slides -------------------------------------------------------------------------------

def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def nuclei(rng, region: np.ndarray, density: float, sigma: float, strength: float) -> np.ndarray:
    """Blurred point nuclei inside `region` (density per 100 px^2)."""
    n = rng.poisson(region.sum() * density / 100)
    ys, xs = np.nonzero(region)
    pick = rng.integers(0, len(ys), n) if len(ys) else np.zeros(0, int)
    canvas = np.zeros(region.shape, np.float32)
    np.add.at(canvas, (ys[pick], xs[pick]), 1.0)
    return ndimage.gaussian_filter(canvas, sigma) * strength * 2 * np.pi * sigma**2


def lymphoid_aggregates(rng: np.random.Generator, region: np.ndarray, b: float) -> np.ndarray:
    """Hematoxylin of lymphocyte clusters (dense small dark nuclei where a field smoothed over
    12 px, 6 µm, is high) covering a share of `region` that rises with `b`: ~3% at b = -2, 25% at
    0, ~48% at +2.

    Why clusters: diffuse lymphocytes at a density following `b` (this demo until 2026-12-02)
    left no trace in the random-weight demo encoder's slide-mean features (ridge probe over 60
    slides, r = -0.17 even with stain, a and m held fixed); clusters gave r = 0.85 there, and
    0.51 with every latent and a 10% stain nuisance varying (0.07 at 30%)."""
    share = 0.5 / (1 + np.exp(-1.5 * b))
    h, w = region.shape  # a field smooth over 12 px, drawn at a quarter of the size (0.5-0.7 s -> 0.04 s)
    field = np.kron(smooth_field(rng, (-(-h // 4), -(-w // 4)), 3), np.ones((4, 4), np.float32))[:h, :w]
    cut = np.quantile(field[region], 1 - share) if region.any() else np.inf
    return nuclei(rng, region & (field > cut), 3.0, 1.6, 1.6)


def paint_slide(patient: Patient, rng: np.random.Generator, stain_shift: float = 0.0) -> np.ndarray:
    """RGB uint8 (rows, cols, 3): tissue on glass; grade share follows `a`, necrosis share `m`."""
    coarse = tuple(s // 8 for s in SIZE)
    tissue = smooth_field(rng, coarse, 12) > -0.1
    tissue = ndimage.binary_opening(tissue, iterations=2)
    zoom = lambda f: np.kron(f, np.ones((8, 8), f.dtype))  # noqa: E731
    high_share = 0.1 + 0.6 / (1 + np.exp(-1.6 * patient.a))
    necrosis_share = 0.35 / (1 + np.exp(-1.6 * patient.m))
    kind = smooth_field(rng, coarse, 6)
    necrosis_cut = np.quantile(kind[tissue], 1 - necrosis_share) if tissue.any() else np.inf
    necrosis = tissue & (kind > necrosis_cut)
    grade = smooth_field(rng, coarse, 5)
    viable = tissue & ~necrosis
    high_cut = np.quantile(grade[viable], 1 - high_share) if viable.any() else np.inf
    high = viable & (grade > high_cut)
    stroma = viable & (smooth_field(rng, coarse, 4) > 0.6)
    low = viable & ~high & ~stroma
    high, low, stroma, necrosis, tissue = (zoom(x) for x in (high, low, stroma & ~high, necrosis, tissue))

    hema = (nuclei(rng, high, 2.8, 2.6, 1.0) + nuclei(rng, low, 1.6, 1.8, 0.8)
            + nuclei(rng, stroma, 0.4, 1.4, 0.7) + nuclei(rng, necrosis, 1.2, 0.8, 0.5)
            + lymphoid_aggregates(rng, stroma | low, patient.b))
    eosin = np.where(stroma, 0.7, 0.0) + np.where(high | low, 0.4, 0.0) + np.where(necrosis, 0.3, 0.0)
    eosin = eosin * (1 + 0.15 * zoom(smooth_field(rng, coarse, 2))) * tissue
    # staining differs from slide to slide (as in real cohorts), a nuisance unrelated to survival;
    # at a 30% SD (tried before 2026-12-02) it hid b's trace from the demo's random-weight encoder
    # entirely, as it would from any encoder without stain invariance, so 10%
    h_gain, e_gain = np.exp(rng.normal(0, STAIN_SD, 2))
    # RGB = 255 exp(-OD) x grain, in place on one float64 array: the same operations in the same
    # order as the one-line expression (slides byte-identical), a slide 1.30 -> 1.03 s
    od = hema[..., None] * HEMATOXYLIN
    od *= h_gain
    od *= 1 + stain_shift
    e = eosin[..., None] * EOSIN
    e *= e_gain
    od += e
    rgb = np.exp(np.negative(od, out=od), out=od)
    rgb *= 255
    grain = rng.random(SIZE)
    grain *= 0.03
    grain += 0.97
    rgb *= grain[..., None]
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)


def write_svs(path: str | Path, rgb: np.ndarray, mpp: float = MPP, magnification: int = 20) -> None:
    """An Aperio SVS of `rgb` (levels 1/4/16; write_svs_levels)."""
    h, w = rgb.shape[:2]

    def level(ds: int) -> np.ndarray:
        if ds == 1:
            return rgb
        return np.asarray(Image.fromarray(rgb).resize((w // ds, h // ds), Image.Resampling.BILINEAR))

    write_svs_levels(path, (w, h), level, mpp, magnification, (1, 4, 16))


def write_svs_levels(path: str | Path, size: tuple[int, int], level, mpp: float, magnification: int,
                     downsamples: tuple[int, ...], tile: int = 256) -> None:
    """An Aperio SVS (tiled JPEG TIFF, one page per level, Aperio ImageDescription) that OpenSlide
    reads as vendor `aperio`, with `openslide.mpp-x` and `openslide.objective-power` set.

    `level(ds)` gives the level at downsample `ds`: an array, or an iterator of (tile, tile, 3)
    uint8 tiles in row-major order, so that a slide larger than memory is written tile by tile.
    BigTIFF above 2 GB of pixels."""
    w, h = size
    opts = dict(tile=(tile, tile), compression="jpeg", compressionargs={"level": 85}, photometric="rgb",
                metadata=None)
    head = f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=85"
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=w * h * 3 > 2**31) as tif:
        for ds in downsamples:
            lw, lh = w // ds, h // ds
            data = level(ds)
            shape = {} if isinstance(data, np.ndarray) else {"shape": (lh, lw, 3), "dtype": np.uint8}
            description = f"{head}|AppMag = {magnification}|MPP = {mpp}" if ds == 1 else f"{head} -> {lw}x{lh} - |"
            tif.write(data, description=description, **shape, **opts)


def make_slide(path: str | Path, barcode: str, seed: int, stain_shift: float = 0.0) -> None:
    patient = patient_latents(barcode, seed)
    rng = np.random.default_rng([seed, zlib.crc32(Path(path).name.encode())])
    write_svs(path, paint_slide(patient, rng, stain_shift))


# ---- tables -------------------------------------------------------------------------------

def clinical_table(patients: list[Patient], rng: np.random.Generator, cancer_type: str) -> pd.DataFrame:
    """TCGA-CDR columns; OS from a Weibull proportional-hazards model (shape 2) with the patients'
    log-hazards, uniform censoring (~60% events: the 60-patient demo's intervals need them)."""
    eta = np.array([p.log_hazard for p in patients])
    death = 1200 * np.sqrt(rng.exponential(1.0, len(patients)) * np.exp(-eta))
    censor = rng.uniform(300, 3000, len(patients))
    os_time = np.minimum(death, censor).round() + 1
    os_event = (death <= censor).astype(int)
    dss_event = os_event * (rng.random(len(patients)) > 0.1)  # some deaths not from the cancer
    pfi_time = np.maximum(1, (os_time * rng.uniform(0.4, 1.0, len(patients))).round())
    return pd.DataFrame({
        "bcr_patient_barcode": [p.barcode for p in patients],
        "type": cancer_type,
        "age_at_initial_pathologic_diagnosis": rng.integers(35, 85, len(patients)),
        "gender": rng.choice(["MALE", "FEMALE"], len(patients)),
        "OS": os_event, "OS.time": os_time,
        "DSS": dss_event, "DSS.time": os_time,
        "PFI": np.maximum(os_event, rng.random(len(patients)) < 0.3).astype(int), "PFI.time": pfi_time,
    })


def gene_names() -> list[str]:
    programs = [f"PROGA{i:02d}" for i in range(N_PROGRAM_GENES)] + [f"PROGB{i:02d}" for i in range(N_PROGRAM_GENES)]
    return programs + [f"GENE{i:03d}" for i in range(N_GENES - len(programs))]


def rna_matrix(patients: list[Patient], rng: np.random.Generator, sample_suffix: str) -> pd.DataFrame:
    """log2(TPM + 1)-like values, samples x genes; program genes load on `a` or `b`."""
    genes = gene_names()
    base = np.random.default_rng(0).uniform(2, 9, len(genes))  # the same genes in every cohort
    loading = np.zeros((2, len(genes)))
    loading[0, :N_PROGRAM_GENES] = 1.0
    loading[1, N_PROGRAM_GENES : 2 * N_PROGRAM_GENES] = 1.0
    latent = np.array([[p.a, p.b] for p in patients])
    values = base + latent @ loading + rng.normal(0, 0.8, (len(patients), len(genes)))
    index = [p.barcode + sample_suffix for p in patients]
    return pd.DataFrame(np.clip(values, 0, None).round(4), index=index, columns=genes)


def write_gene_sets(path: str | Path) -> None:
    """A GMT file: the two programs, diluted with unrelated genes, plus two unrelated sets."""
    genes = gene_names()
    other = genes[2 * N_PROGRAM_GENES :]
    sets = {
        "DEMO_PROGRAM_A": genes[:N_PROGRAM_GENES] + other[:10],
        "DEMO_PROGRAM_B": genes[N_PROGRAM_GENES : 2 * N_PROGRAM_GENES] + other[10:20],
        "DEMO_HOUSEKEEPING": other[20:80],
        "DEMO_OTHER": other[80:],
    }
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{name}\tdemo program\t" + "\t".join(members) + "\n"
                               for name, members in sets.items()))


def make_cohort_tables(patients: list[str], clinical: str, rna: str, seed: int, cancer_type: str,
                       genes_by_samples: bool) -> None:
    """Clinical table and RNA matrix of one demo cohort. TCGA-style cohorts get sample barcodes
    (`-01A`) and a genes x samples matrix; the other orientation exercises the detection.

    Parameters
    ----------
    patients : list of str
        Patient barcodes; each patient's latents are seeded by its barcode and `seed` (as its slide's).
    clinical : str
        TSV written in TCGA-CDR columns (OS, OS.time, DSS, DSS.time, PFI, PFI.time; times in days).
    rna : str
        TSV written: the RNA matrix, log2(TPM + 1)-like.
    seed : int
        The demo's seed.
    cancer_type : str
        The clinical table's `type`; also seeds the cohort's own draws.
    genes_by_samples : bool
        Write the matrix genes x samples (True) or samples x genes.
    """
    rng = np.random.default_rng([seed, zlib.crc32(cancer_type.encode())])
    people = [patient_latents(p, seed) for p in patients]
    table = clinical_table(people, rng, cancer_type)
    with atomic_path(clinical) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    matrix = rna_matrix(people, rng, "-01A" if patients[0].startswith("TCGA-") else "")
    if genes_by_samples:
        matrix = matrix.T
        matrix.index.name = "gene_id"
    else:
        matrix.index.name = "sample"
    with atomic_path(rna) as tmp:
        matrix.to_csv(tmp, sep="\t")
    log.info("%s: %d patients, %d events, RNA %s", clinical, len(table), table["OS"].sum(),
             "genes x samples" if genes_by_samples else "samples x genes")


# The two demo cohorts: a TCGA-like training cohort and a CPTAC-like external one, stained a
# little differently (another site) and with its RNA matrix the other way round.
DEMO_COHORTS = {
    "demo_tcga": {"cancer_type": "DEMO-TCGA", "stain_shift": 0.0, "genes_by_samples": True},
    "demo_cptac": {"cancer_type": "DEMO-CPTAC", "stain_shift": 0.1, "genes_by_samples": False},
}
