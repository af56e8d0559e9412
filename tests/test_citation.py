"""LICENSE and CITATION.cff: the licence the README states, and a CFF 1.2.0 file that cites the
two papers the project implements."""
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ECAI = "Accelerating Hopfield Network Dynamics: Beyond Synchronous Updates and Forward Euler"
NEURIPS = "Accelerating Hierarchical Associative Memory: A Deep Equilibrium Approach"


def citation() -> dict:
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def test_citation_cff_has_the_keys_of_cff_1_2_0():
    cff = citation()
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "license", "preferred-citation", "references"):
        assert cff[key], key
    assert cff["license"] == "MIT"
    for work in (cff["preferred-citation"], *cff["references"]):
        for key in ("type", "title", "authors", "year"):
            assert work[key], (work.get("title"), key)
        for author in work["authors"]:
            assert author.get("family-names") or author.get("name"), author


def test_citation_cff_cites_both_papers_with_their_arxiv_versions():
    cff = citation()
    preferred = cff["preferred-citation"]
    assert preferred["title"] == ECAI and preferred["year"] == 2024
    assert preferred["url"] == "https://arxiv.org/abs/2311.15673v2"
    (neurips,) = [r for r in cff["references"] if r["title"] == NEURIPS]
    assert neurips["year"] == 2023 and neurips["url"] == "https://arxiv.org/abs/2311.15673v1"
    families = [a["family-names"] for a in preferred["authors"]]
    assert families == ["Goemaere", "Deleu", "Demeester"]
    assert [a["family-names"] for a in neurips["authors"]] == families


def test_the_papers_are_the_ones_the_readme_and_docs_name():
    for page in ("README.md", "docs/papers.md"):
        text = re.sub(r"\s+", " ", (REPO / page).read_text())
        for title in (ECAI, NEURIPS):
            assert title in text, (page, title)


def test_license_is_mit_with_its_copyright_line():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the hopfield-deq authors" in text
    assert "MIT" in (REPO / "README.md").read_text()
