"""Every link in README.md and docs/ resolves, and none leaves the repository.

A relative link must name a file or folder of the repository and, with a `#fragment`, a
heading of the target page (GitHub's anchor for it) or an explicit `<a id>`. Absolute paths,
`file:` URLs and `../` escapes fail, and so does any mention of a path outside the repository
(users who clone it have nothing there). Web links (`https://...`) are not followed.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

_FENCED = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?^ {0,3}\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:id|name)\s*=\s*["']([^"']+)["']""")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_WEB_SCHEMES = {"http", "https", "mailto"}
# Paths only the team's machines have; a page that names them points users nowhere.
_OUTSIDE_PATHS = ("../shared", "shared/docs", "/work/")


def _prose(markdown: str) -> str:
    """The page without code blocks and code spans, where links are not links."""
    return _CODE_SPAN.sub("", _FENCED.sub("", markdown))


def links(markdown: str) -> list[str]:
    prose = _prose(markdown)
    return [
        *_INLINE_LINK.findall(prose),
        *_REFERENCE.findall(prose),
        *_HTML_LINK.findall(prose),
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    without_code = _FENCED.sub("", markdown)
    found: set[str] = set(_HTML_ANCHOR.findall(without_code))
    seen: Counter[str] = Counter()
    for heading in _HEADING.findall(without_code):
        slug = _slug(heading)
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def broken_links(page: Path, root: Path) -> list[str]:
    """What is wrong with each link of `page`, a Markdown file under `root`."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        scheme = _SCHEME.match(target)
        if scheme and scheme.group(0)[:-1].lower() in _WEB_SCHEMES:
            continue
        if scheme or target.startswith(("/", "\\")):
            problems.append(f"{target}: leaves the repository (use a relative link)")
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: leaves the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif fragment and (resolved.is_dir() or resolved.suffix != ".md"):
            problems.append(f"{target}: an anchor into a page that is not Markdown")
        elif fragment and fragment not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading or anchor #{fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    assert broken_links(page, ROOT) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_names_a_path_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert [path for path in _OUTSIDE_PATHS if path in text] == []


def _linked_from(page: Path) -> set[Path]:
    return {
        (page.parent / unquote(target.partition("#")[0])).resolve()
        for target in links(page.read_text(encoding="utf-8"))
    }


def test_the_readme_links_the_docs_index_which_links_every_page() -> None:
    index = DOCS / "README.md"
    assert index.resolve() in _linked_from(ROOT / "README.md")
    linked = _linked_from(index)
    assert [
        page.name for page in sorted(DOCS.glob("*.md")) if page != index and page not in linked
    ] == []


def test_the_checker_reports_each_kind_of_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Watch `guarantees`, etc.\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Title\n\n"
        "[fine](other.md#watch-guarantees-etc) [fine](#title) [web](https://example.com)\n"
        "[missing](nowhere.md) [bad anchor](other.md#nope) [self](#nope-here)\n"
        "[escape](../../outside.md) [absolute](/etc/passwd) [file](file:///tmp/x.md)\n"
        "`[in code](nowhere-either.md)`\n\n"
        "```\n[in a block](nor-this.md)\n```\n"
    )

    assert broken_links(page, tmp_path) == [
        "nowhere.md: no such file",
        "other.md#nope: no heading or anchor #nope in other.md",
        "#nope-here: no heading or anchor #nope-here in page.md",
        "../../outside.md: leaves the repository",
        "/etc/passwd: leaves the repository (use a relative link)",
        "file:///tmp/x.md: leaves the repository (use a relative link)",
    ]


def test_duplicate_headings_get_numbered_anchors() -> None:
    assert anchors("# Errors\n## Errors\n<a id='custom'></a>\n") == {
        "errors",
        "errors-1",
        "custom",
    }
