"""The docs site and the README: no development machine's paths, a README a newcomer reads in five
minutes that starts with the two commands, every page in the site's navigation, and no broken
relative link or anchor (what `mkdocs build --strict` also refuses, checked here without MkDocs)."""

import glob
import os
import re

import pytest
import yaml
from markdown.extensions.toc import slugify  # the anchors MkDocs gives headings (its toc extension)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
MARKDOWN = [README, *PAGES]

# An absolute path on a development or CI machine, or in its temporary folders: a home or root
# directory, this workplace's /work, /tmp, mounts, macOS and Windows user and temp folders, pytest's
# own temporary directories. Relative paths that merely contain such a word (`runs/x/root/...`,
# the pipeline root) are not paths on a machine.
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:/(?:work|root|home|tmp|mnt|scratch|Users|private/var|var/folders)/"
    r"|[A-Za-z]:\\(?:Users|Windows|Temp)\\"
    r"|pytest-of-)"
)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def machine_paths(text):
    """(line number, line) of each line that names a path on a development machine."""
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]


def test_the_machine_path_check_finds_what_it_must_and_only_that():
    for sample in (
        "Release report: /work/main/runs/penguin-pruning/root/EvaluatorGate/evaluation/5/report.html",
        "    --output-dir /tmp/tfx-penguin",
        "cached in `/root/.cache/pip`",
        "(log: /home/dev/runs/penguin-pruning/logs/x.log)",
        "/Users/dev/runs",
        r"C:\Users\dev\runs",
        "/tmp/pytest-of-root/pytest-3/test_x0/serving",
    ):
        assert machine_paths(sample), sample
    for sample in (
        "Release report: runs/penguin-pruning/root/EvaluatorGate/evaluation/5/report.html",
        "--output-dir runs/tfx-penguin",
        "cached under `~/.cache`",
        "a graph that reads `/etc/hostname`",
        "`gs://team/root`, `<output dir>/logs/<run id>.log`",
        "mounts `/proc`, `/sys`, `/dev`, `/tmp`, the pip cache",
    ):
        assert not machine_paths(sample), sample


@pytest.mark.parametrize("path", MARKDOWN + [os.path.join(ROOT, "mkdocs.yml")], ids=os.path.basename)
def test_no_page_names_a_path_on_a_development_machine(path):
    found = machine_paths(_read(path))
    assert not found, f"{os.path.relpath(path, ROOT)}: write relative paths (runs/..., <output-dir>/...): {found}"


def test_the_readme_is_five_minutes_long_and_starts_with_the_two_commands():
    lines = _read(README).splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the detail into docs/"
    assert lines[0].startswith("# ")
    commands = [line.split("#")[0].split() for line in lines[1:5] if line.strip()]
    assert commands[:2] == [["make", "run"], ["make", "test"]], lines[:5]


def test_every_docs_page_is_in_the_site_navigation_and_every_nav_entry_exists():
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert config["docs_dir"] == "docs" and config["strict"] is True

    def entries(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from entries(value)
            else:
                yield value

    nav = list(entries(config["nav"]))
    assert sorted(nav) == sorted(os.path.relpath(page, DOCS) for page in PAGES)
    assert len(nav) == len(set(nav))


def _lines(text):
    """(line, is code) for each line: fenced blocks and indented code blocks are code (a link in
    code is not a link); a list item's indented continuation is not."""
    fence, in_list = None, False
    for line in text.splitlines():
        opening = re.match(r"\s*(```|~~~)", line)
        if fence:
            fence = None if opening and opening.group(1) == fence else fence
            yield line, True
        elif opening:
            fence = opening.group(1)
            yield line, True
        elif line.startswith("    ") and not in_list:
            yield line, True
        else:
            if line.strip() and not line.startswith(" "):
                in_list = bool(re.match(r"(?:[-*+]|\d+\.)\s", line))
            yield line, False


def _anchors(path):
    """The ids MkDocs gives the page's headings: toc's slug of the heading's text (code spans and
    links as their text), ``_1``, ``_2`` ... appended when one repeats."""
    anchors, seen = set(), {}
    for line, is_code in _lines(_read(path)):
        heading = None if is_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).replace("`", "").replace("*", "")
        slug = slugify(text, "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}_{count}")
    return anchors


LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path):
    """(target file, anchor or None) of each relative Markdown link in ``path``."""
    links = []
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line, is_code in _lines(_read(path)) if not is_code)
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto: ...: not a file of this repository
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        links.append((resolved, anchor or None))
    return links


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Some `code` here\n\ntext\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md) [ok](a.md#a-page) [ok](a.md#some-code-here) [gone](c.md) [gone](a.md#nowhere)\n"
        "`[not a link](x.md)` [web](https://example.org/x.md)\n\n    [code](y.md)\n",
        encoding="utf-8",
    )
    links = relative_links(str(page))
    assert [os.path.basename(target) for target, _ in links] == ["a.md", "a.md", "a.md", "c.md", "a.md"]
    assert _broken(str(page)) == ["c.md", "a.md#nowhere"]


def _broken(path):
    broken = []
    for target, anchor in relative_links(path):
        label = os.path.relpath(target, os.path.dirname(path)) + (f"#{anchor}" if anchor else "")
        if not os.path.exists(target):
            broken.append(label)
        elif anchor and (not target.endswith(".md") or anchor not in _anchors(target)):
            broken.append(label)
    return broken


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: os.path.relpath(path, ROOT))
def test_every_relative_link_points_to_a_file_and_anchor_that_exist(path):
    assert not _broken(path), f"{os.path.relpath(path, ROOT)}: broken links {_broken(path)}"


def test_the_readme_links_into_every_docs_page():
    linked = {os.path.relpath(target, ROOT) for target, _ in relative_links(README)}
    assert linked >= {os.path.relpath(page, ROOT) for page in PAGES}, "a docs page the README does not link to"
