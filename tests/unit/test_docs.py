"""The repository's documents cite only documents in the repository.

Code, tests and docs once cited a specification that was not in the repository; the
rules now live in docs/design.md (docs/design.md §7.3).  These tests fail when a file
cites a document outside the repository again, when a relative link of a Markdown page
points at nothing (links must work on GitHub), or when a ``docs/design.md §N`` citation
names a section that does not exist.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DESIGN = os.path.join(ROOT, "docs", "design.md")

# What is checked: the package, its C core, tests, tools, docs and shipped files.
_SCANNED = ["kvmstat", "csrc", "tests", "tools", "benchmarks", "docs", "examples", "contrib",
            "man", ".ci", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"]
_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", "build", "dist"}
_BINARY_SUFFIXES = (".so", ".o", ".bin", ".pyc")

# Built from parts, so that this file does not cite what it forbids.
_OUTSIDE = [
    (re.compile(r"\b" + "SP" + r"EC\b"), "cites a specification that is not in the repository"),
    (re.compile(re.escape("../" + "shared")), "points at a shared folder outside the repository"),
]
# A path that starts by going up (not one like bin/../share inside another path).
_PARENT_PATH = re.compile(r"(?<![\w./-])(?:\.\./)+[^\s)\]\"'`<>,;]*")
_MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CITATION = re.compile(r"docs/design\.md((?:(?:,| and)?\s*§\d+(?:\.\d+)*)+)")
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")


def _text_files():
    for entry in _SCANNED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")]
            for name in files:
                if not name.endswith(_BINARY_SUFFIXES):
                    yield os.path.join(folder, name)


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        return None  # a binary file: nothing to cite


def _rel(path):
    return os.path.relpath(path, ROOT)


def _markdown_files():
    return [p for p in _text_files() if p.endswith(".md")]


def github_slug(heading):
    """The anchor GitHub gives a Markdown heading (without the -N of repeats)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    anchors, seen = set(), {}
    in_code = False
    for line in _read(path).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = github_slug(line.lstrip("#"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _design_sections():
    sections = set()
    for line in _read(DESIGN).splitlines():
        match = re.match(r"#{2,4} (\d+(?:\.\d+)*)\.? ", line)
        if match:
            sections.add(match.group(1))
    return sections


def test_no_file_cites_a_document_outside_the_repository():
    found = []
    for path in _text_files():
        text = _read(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for pattern, why in _OUTSIDE:
                if pattern.search(line):
                    found.append(f"{_rel(path)}:{number}: {why}: {line.strip()}")
            for match in _PARENT_PATH.finditer(line):
                target = os.path.normpath(os.path.join(os.path.dirname(path), match.group(0)))
                if os.path.commonpath([ROOT, target]) != ROOT:
                    found.append(f"{_rel(path)}:{number}: {match.group(0)} leaves the repository")
    assert found == []


def test_relative_links_of_markdown_pages_resolve():
    broken = []
    for path in _markdown_files():
        text = _read(path)
        # Links inside code blocks are examples, not links.
        text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        for match in _MD_LINK.finditer(text):
            link = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, mailto:...
                continue
            target, _, anchor = link.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if os.path.commonpath([ROOT, resolved]) != ROOT or not os.path.exists(resolved):
                broken.append(f"{_rel(path)}: {link} (no such file in the repository)")
            elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
                broken.append(f"{_rel(path)}: {link} (no such heading)")
    assert broken == []


def test_design_citations_name_existing_sections():
    sections = _design_sections()
    assert {"1", "1.1", "2", "6", "6.1"} <= sections  # the numbering is readable
    unknown = []
    for path in _text_files():
        text = _read(path)
        if text is None:
            continue
        for match in _CITATION.finditer(text):
            for number in _SECTION.findall(match.group(1)):
                if number not in sections:
                    unknown.append(f"{_rel(path)}: docs/design.md §{number}")
    # Inside design.md a bare §N.M refers to its own sections.
    for number in _SECTION.findall(_read(DESIGN)):
        if number not in sections:
            unknown.append(f"docs/design.md: §{number}")
    assert unknown == []


@pytest.mark.parametrize("heading, slug", [
    ("## 6.8 The interactive display", "68-the-interactive-display"),
    ("## `--by-guest`", "--by-guest"),
    ("## Log mode (`-l`, `-L`)", "log-mode--l--l"),
    ("# Engines and their cost: `--engine auto|bpf|perf`", "engines-and-their-cost---engine-autobpfperf"),
])
def test_github_slugs(heading, slug):
    assert github_slug(heading.lstrip("#")) == slug


def test_the_checks_catch_what_they_forbid(tmp_path):
    forbidden = "see " + "SP" + "EC §3.4 and ../" + "shared/notes.md"
    assert all(p.search(forbidden) for p, _ in _OUTSIDE)
    escaping = [m.group(0) for m in _PARENT_PATH.finditer("open " + "../" * 3 + "etc/passwd")]
    assert not _PARENT_PATH.search("man searches bin/" + "../share/man")
    target = os.path.normpath(os.path.join(ROOT, "docs", escaping[0]))
    assert os.path.commonpath([ROOT, target]) != ROOT
    cited = _CITATION.search("rule (docs/design.md §6.5, §6.9)")
    assert _SECTION.findall(cited.group(1)) == ["6.5", "6.9"]
