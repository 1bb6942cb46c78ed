"""The survival study's methods, in one table: what builds each model, which inputs it reads,
whether it is fitted on the survival labels or distilled from a frozen teacher, and its display
name. The rules' input functions and the lists they expand over (`workflow/rules/common_survival.smk`),
the rule scripts, training (`train.build_model`), evaluation and the benchmark tables read it;
nothing else lists the survival methods. No torch here: the Snakefile and the torch-free
rules import it.

A fitted method is trained by rule `survival_fit`, a distilled one by rule `survival_student`;
both take the method as their `{method}` wildcard, so an entry added here is cross-validated,
evaluated, applied to the external cohorts and tabled with no rule edited. A variant of an
entry (another seed, hidden size or AMKD weights) needs no code: config `survival.methods`,
e.g. `{pathology_h32: {like: pathology, config: {train: {hidden: 32}}}}` (`tissuekd.methods`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from tissuekd.methods import merged, table, with_variants


@dataclass(frozen=True)
class SurvivalMethod:
    name: str
    # the factory: a class of tissuekd.survival.models (or "module:Class"), called with the
    # feature dimension if it reads pathology, the gene count if it reads RNA, then n_bins, hidden,
    # dropout and, if it reads RNA, gene_sets (train.build_model)
    model: str
    pathology: bool  # reads each patient's bag of patch features
    rna: bool  # reads the patient's RNA, in training and at inference
    # distilled from this method's frozen fold models (rule survival_student, which also loads the
    # teacher's inputs); None: fitted on the survival labels alone (rule survival_fit)
    teacher: str | None = None
    label: str = ""  # display name (figure titles)
    # overrides of config `survival` (train, amkd) for this method's jobs only (tissuekd.methods)
    config: Mapping = field(default_factory=dict, hash=False)

    @property
    def distilled(self) -> bool:
        return self.teacher is not None

    @property
    def rule(self) -> str:
        return "survival_student" if self.distilled else "survival_fit"

    def settings(self, survival: Mapping) -> dict:
        """Config `survival` as this method's jobs see it (its `config` overrides applied)."""
        return merged(survival, self.config)

    def factory(self):
        """The model class (imported here: torch)."""
        module, _, name = self.model.rpartition(":")
        return getattr(importlib.import_module(module or "tissuekd.survival.models"), name)


METHODS = table(
    SurvivalMethod("teacher", "Teacher", pathology=True, rna=True, label="teacher (pathology + RNA)"),
    SurvivalMethod("student", "AMKDStudent", pathology=True, rna=False, teacher="teacher", label="AMKD student"),
    SurvivalMethod("pathology", "PathologyModel", pathology=True, rna=False, label="pathology-only"),
    SurvivalMethod("rna", "RNAModel", pathology=False, rna=True, label="RNA-only"),
)
KM_METHOD = "student"  # whose risk groups the Kaplan-Meier figures and the log-rank column show
# the study's steps (log and benchmark folders, which a distilled method's name also names)
RESERVED = ("patches", "features", "cohort", "fit", "evaluate", "external", "thumbnails")


def from_config(survival: Mapping) -> dict[str, SurvivalMethod]:
    """The table with config `survival.methods`' variants: the methods a run plans."""
    methods = with_variants(METHODS, survival.get("methods"), RESERVED, "survival.methods")
    for method in methods.values():
        if method.distilled and method.teacher not in methods:
            raise ValueError(f"method {method.name}: its teacher {method.teacher!r} is not a method")
    return methods


def get(method: str | SurvivalMethod) -> SurvivalMethod:
    """An entry itself, or the built-in entry of that name."""
    if isinstance(method, SurvivalMethod):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {tuple(METHODS)})")
    return METHODS[method]
