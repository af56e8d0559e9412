"""Every relative link in the README and docs/ points to a file or folder of the repository, and
every link to a heading (``page.md#heading``, ``#heading``) to a heading of that page. Commands
in them take data from relative paths or ``$HOPFIELD_DATA_DIR``, never a machine's own path."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} +(.+)$", text, re.M)}


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """The relative links of ``page`` (or of ``text`` placed where ``page`` is) that lead
    nowhere: no such file, a file outside the repository, or no such heading."""
    broken = []
    for target in LINK.findall(page.read_text() if text is None else text):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        own = text is not None and not path_part  # an anchor into the given text itself
        if not path.exists() or not path.is_relative_to(REPO):
            broken.append(target)
        elif anchor and own and anchor not in {slug(h) for h in re.findall(r"^#+ +(.+)$", text, re.M)}:
            broken.append(target)
        elif anchor and not own and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)} links to missing files or headings: {broken}"


def test_the_check_sees_the_links():
    targets = LINK.findall((REPO / "README.md").read_text())
    for page in ("docs/papers.md", "docs/performance.md", "docs/sweep.md", "docs/wandb.md",
                 "docs/README.md", "LICENSE", "CITATION.cff"):
        assert page in targets, page
    index = LINK.findall((REPO / "docs" / "README.md").read_text())
    for page in sorted(p.name for p in (REPO / "docs").glob("*.md") if p.name != "README.md"):
        assert page in index, f"docs/README.md does not list {page}"


def test_the_check_catches_a_missing_file_a_missing_heading_and_a_way_out():
    text = ("[a](performance.md#no-such-heading) [b](no-such-file.md) [c](../..) "
            "[d](performance.md#the-fast-mode) [e](#tests) [f](#no-such-heading)\n## Tests\n")
    assert broken_links(REPO / "docs" / "README.md", text) == [
        "performance.md#no-such-heading", "no-such-file.md", "../..", "#no-such-heading"]


def test_github_anchors():
    assert slug("Options that change speed") == "options-that-change-speed"
    assert slug("Using the engine for your own DEQ") == "using-the-engine-for-your-own-deq"
    assert slug("`--fused-anderson` & friends") == "--fused-anderson--friends"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_machine_paths_for_data(page):
    assert "/usr/share" not in page.read_text(), \
        f"{page.relative_to(REPO)}: point commands at data with $HOPFIELD_DATA_DIR"
