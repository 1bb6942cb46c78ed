"""TCGA barcodes: which patient a sample id belongs to, and which samples are tumours.

TCGA-XX-XXXX is a patient; TCGA-XX-XXXX-01A a sample of it, whose two digits give its type:
01-09 tumours, 10-19 normal tissue, 20-29 controls. Light (no pandas), so that the workflow
can check its sheets with it when it plans."""

from __future__ import annotations

import re
from pathlib import Path

TUMOUR_SAMPLE = re.compile(r"^-0\d")  # TCGA sample types 01-09 are tumours,
NORMAL_SAMPLE = re.compile(r"^-[12]\d")  # 10-19 normal tissue, 20-29 controls


def patient_of(key: str, patients: set[str]) -> str | None:
    """The patient a sample barcode belongs to: itself, or its prefix before a `-` suffix
    (TCGA-XX-XXXX-01A -> TCGA-XX-XXXX)."""
    if key in patients:
        return key
    parts = key.split("-")
    for cut in range(len(parts) - 1, 0, -1):
        if (prefix := "-".join(parts[:cut])) in patients:
            return prefix
    return None


def normal_slide(slide: str, patient: str) -> bool:
    """A TCGA slide of normal tissue or a control (TCGA-XX-XXXX-11A-01-TS1: sample type 10-29), which
    would otherwise join the patient's tumour slides in one bag."""
    tcga = slide.startswith("TCGA-") and slide.startswith(f"{patient}-")  # other ids: -21 may be a slide number
    return tcga and bool(NORMAL_SAMPLE.match(slide[len(patient):]))


def sample_rank(suffix: str) -> int:
    """0 a TCGA tumour sample (-01..-09), 2 a normal or control one (-10..-29, never used), 1 any
    other suffix (a non-TCGA sample id: used when the patient has no tumour-coded sample)."""
    return 0 if TUMOUR_SAMPLE.match(suffix) else 2 if NORMAL_SAMPLE.match(suffix) else 1


def normal_file(slide: str, patient: str, files: list[str]) -> str | None:
    """The first of a slide's files (image, features) whose name is a normal-tissue barcode of its
    patient while the slide's own name is not one: such a slide would join the tumour bag."""
    if normal_slide(slide, patient):
        return None
    return next((f for f in files if f and normal_slide(Path(f).name, patient)), None)
