"""The report's landing page (workflow/report/workflow.rst, a Jinja template Snakemake renders
with the run's config) says, for every study that ran, what ran with which settings."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {"niche": "Niche study", "survival": "Survival study", "expression": "Expression study",
           "segmentation": "Segmentation study"}


def landing(enabled: set[str], teacher: str | None = None) -> str:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for study in STUDIES:
        config[study]["enabled"] = study in enabled
    config["segmentation"]["teacher"] = teacher or config["segmentation"]["teacher"]
    # as Snakemake renders it (snakemake.report): trim_blocks drops the newline after a block tag
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string((ROOT / "workflow/report/workflow.rst").read_text()).render(
        snakemake=SimpleNamespace(config=config))


@pytest.mark.parametrize("study", list(STUDIES))
def test_the_landing_page_describes_each_study_that_ran_with_its_settings(study):
    page = landing({study})
    assert f"**{STUDIES[study]}**" in page
    assert not any(f"**{name}**" in page for other, name in STUDIES.items() if other != study)
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    sheet = {"niche": "slides", "survival": "cohorts", "expression": "samples", "segmentation": "datasets"}[study]
    assert config[study][sheet] in page  # the sheet it read
    if study == "expression":
        assert f"top {config['expression']['cmrcnet']['top_k']} training spots" in page


def test_the_landing_page_reads_as_prose():
    """Settings are written as words, not Python lists, and block tags eat no space ('taught' and
    'students' ran together where a tag ended a line)."""
    page = " ".join(landing(set(STUDIES)).split())
    assert "[" not in page and "]" not in page, re.findall(r".{30}[\[\]].{30}", page)
    assert "on every channel taught students swin-tiny, resnet18" in page
    assert "against contrastive, ridge, knn, random." in page  # CMRCNet is not its own competitor
    assert "K 10, 20)" in page


def test_every_place_the_landing_page_points_to_is_a_report_category_of_the_rules():
    """'Start at **Benchmark → X**, then **Y**': X must be a subcategory of Benchmark and Y a
    category that some rule's report() names (a renamed one once left the page pointing nowhere)."""
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    page = (ROOT / "workflow/report/workflow.rst").read_text()
    places = [name for name in re.findall(r"\*\*(.+?)\*\*", page) if name not in STUDIES.values()]  # not headings
    assert len(places) >= 9, places
    for name in places:
        if name.startswith("Benchmark → "):
            assert re.search(rf'category="Benchmark",\s*subcategory="{name.removeprefix("Benchmark → ")}"', rules), name
        else:  # a top-level category (subcategory="..." does not count)
            assert f'category="{name}"' in rules.replace("subcategory=", ""), name


@pytest.mark.parametrize("teacher, says", [("unet-multiplex", "a frozen U-Net teacher on every channel"),
                                           ("external", "a frozen teacher's maps, made elsewhere"),
                                           ("sam", "Segment Anything (a local checkpoint) as the frozen teacher")])
def test_the_landing_page_names_the_segmentation_teacher_that_ran(teacher, says):
    """It said 'a frozen U-Net teacher on every channel' whatever `segmentation.teacher` was."""
    page = " ".join(landing({"segmentation"}, teacher).split())
    assert says in page
    assert ("U-Net teacher" in page) == (teacher == "unet-multiplex")
