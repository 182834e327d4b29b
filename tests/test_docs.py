"""The documentation keeps up with the code: the configuration reference is what the generator
renders from `Settings` now, every relative link in README.md and docs/ leads to a file (and a
heading, when it names one), and the README fits on a screen or two."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from producers import settings_reference
from producers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
MAX_README_LINES = 200
#: Pages linked before they exist because another change is writing them (issue 18's async
#: producer). Each must not exist yet: once it lands, the test says to take it off this list.
PENDING: set[Path] = set()


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings (outside code blocks)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found: set[str] = set()
    for heading in HEADING.findall(text):
        base = settings_reference.slug(heading)
        anchor, n = base, 0
        while anchor in found:  # GitHub numbers repeated headings: name, name-1, ...
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_configuration_reference_is_what_the_settings_say():
    expected = settings_reference.render()
    actual = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/configuration.md is stale: run scripts/docs and commit it"


def test_every_setting_has_a_description_and_a_section():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no docstring"
        assert f"### `{name.upper()}`" in text, name


def test_render_refuses_a_setting_without_a_group(monkeypatch: pytest.MonkeyPatch):
    groups = tuple((title, intro, names[1:]) for title, intro, names in settings_reference.GROUPS)
    monkeypatch.setattr(settings_reference, "GROUPS", groups)
    with pytest.raises(ValueError, match=r"Settings\.redis_url: must be in exactly one group"):
        settings_reference.render()


def test_the_generator_needs_no_worker_and_no_celery():
    code = (
        "import sys, producers.settings_reference as r; r.render(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'worker', 'celery', 'httpx', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page: Path):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if file in PENDING:
            continue
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_pending_pages_are_still_pending():
    landed = [str(page.relative_to(ROOT)) for page in PENDING if page.exists()]
    assert not landed, f"{landed} exist now: take them off PENDING in tests/test_docs.py"


def test_the_link_check_sees_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [no anchor](#nowhere)\n```\n[code](x.md)\n```\n")
    assert relative_links(page) == ["#title", "missing.md", "#nowhere"]
    assert anchors(page) == {"title"}


def test_the_readme_fits_in_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"(docs/{page.name})" in readme, f"docs/{page.name} is missing from the README's table"
