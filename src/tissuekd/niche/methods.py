"""The niche study's methods (everything scored against the teacher), in one table: the rule
that makes each one's niche per cell, whether it is distilled from the teacher's logits or a
baseline, and its display name. The rules' input functions and the lists they expand over
(`workflow/rules/common.smk`), evaluation and maps, the benchmark tables and the scale
benchmark read it; nothing else lists the niche methods. No torch here: the Snakefile and the
torch-free rules import it.

Each method's rule takes the method as its `{method}` wildcard (outputs under
`{slide}/{encoder}/k{K}/{method}/`), so a variant of an entry (another seed, temperature or
NOLAN setting) needs no code: config `niche.methods`, e.g.
`{student_t4: {like: student, config: {student: {temperature: 4.0}}}}` (`tissuekd.methods`).
A method computed another way is a step function, a rule with a `{method}` wildcard and an
entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tissuekd.methods import merged, table, with_variants


@dataclass(frozen=True)
class NicheMethod:
    name: str
    rule: str  # the factory: the rule (with a `{method}` wildcard) whose step writes the niches
    output: str  # that rule's output (by name) holding `cell_id` and `niche` for every cell
    # trained on the teacher's logits (the rule reads them), so its niche ids are the teacher's;
    # False: a baseline without the teacher, its clusters Hungarian-matched to the teacher's niches
    distilled: bool
    label: str = ""  # display name (map panels, figure legends)
    # overrides of config `niche` (student, nolan, seed, max_neighbors) for this method's jobs only
    config: Mapping = field(default_factory=dict, hash=False)

    @property
    def matched(self) -> bool:
        return not self.distilled

    def settings(self, niche: Mapping) -> dict:
        """Config `niche` as this method's jobs see it (its `config` overrides applied)."""
        return merged(niche, self.config)


METHODS = table(
    NicheMethod("student", "niche_student", "logits", distilled=True, label="student"),
    NicheMethod("hist_nolan", "niche_hist_nolan", "logits", distilled=False, label="Histology NOLAN"),
    NicheMethod("hist_leiden", "niche_hist_leiden", "clusters", distilled=False, label="Histology Leiden"),
)
REFERENCE = "teacher"  # the row every method is scored against (not a method)
# the study's steps and evaluation's other inputs (folders, log folders, input names)
RESERVED = ("ingest", "radius", "split", "features", "scvi", "teacher", "evaluate", "maps", "cells")


def from_config(niche: Mapping) -> dict[str, NicheMethod]:
    """The table with config `niche.methods`' variants: the methods a run plans."""
    return with_variants(METHODS, niche.get("methods"), RESERVED, "niche.methods")
