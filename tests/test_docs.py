"""The documentation holds together: every relative link and image in README.md, docs/*.md and
results/README.md names a file or folder that exists, every `#anchor` into a Markdown file names one of
its headings (GitHub's slug rule), the README stays short and links every page of docs/."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
INDENTED = re.compile(r"(?:\A|(?<=\n\n))(?:(?: {4}|\t)[^\n]*(?:\n|\Z))+")  # an indented code block
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
INLINE = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")  # [text](t), ![alt](t)
REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(<[^>]*>|\S+)", re.M)  # [label]: target
REF_USE = re.compile(r"\]\[([^\]]+)\]")  # [text][label]
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)(?:\s+#+)?\s*$", re.M)
ABSOLUTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://|mailto:)")


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", INDENTED.sub("", FENCED.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in HEADING.findall(FENCED.sub("", md.read_text(encoding="utf-8"))):
        base = slug(heading)
        found.add(f"{base}-{counts[base]}" if base in counts else base)
        counts[base] = counts.get(base, 0) + 1
    return found


def targets(md: Path) -> list[str]:
    """Every link and image target of a Markdown file: inline and reference-style (unknown labels as `[label]`)."""
    text = prose(md.read_text(encoding="utf-8"))
    defs = {label.lower(): target for label, target in REF_DEF.findall(text)}
    used = [f"[{label}]" for label in REF_USE.findall(text) if label.lower() not in defs]
    return [t.strip("<>") for t in INLINE.findall(text) + list(defs.values())] + used


def broken(md: Path) -> list[str]:
    """The targets of `md` that do not resolve, each with the reason."""
    out = []
    for target in targets(md):
        if ABSOLUTE.match(target):
            continue
        if not target or target.startswith("["):
            out.append(f"{target or '()'}: empty target or undefined reference")
            continue
        path, _, anchor = unquote(target).partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            out.append(f"{target}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading #{anchor} in {dest.name}")
    return out


@pytest.mark.parametrize("md", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(md: Path) -> None:
    assert md.exists()
    assert broken(md) == []


def test_broken_links_are_caught(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Title: one\n\n## Title: one\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#title-one) [ok](b.md#title-one-1) ![ok](b.md) [web](https://x.org/y) [m](mailto:a@b.c)\n"
        "`[code](nowhere.md)` [gone](nowhere.md) [bad](b.md#nope) ![img](missing.png) [r][lbl] [u][undefined]\n\n"
        "[lbl]: gone/\n"
    )
    assert broken(page) == [
        "nowhere.md: " + f"{tmp_path / 'nowhere.md'} does not exist",
        "b.md#nope: no heading #nope in b.md",
        "missing.png: " + f"{tmp_path / 'missing.png'} does not exist",
        "gone/: " + f"{tmp_path / 'gone'} does not exist",
        "[undefined]: empty target or undefined reference",
    ]


def test_readme_is_short_and_links_every_page() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) < 150
    linked = {(ROOT / unquote(t).partition("#")[0]).resolve() for t in targets(readme) if not ABSOLUTE.match(t)}
    assert {p.resolve() for p in PAGES if p.parent.name == "docs"} <= linked
