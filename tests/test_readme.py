"""The README's own links and the files it names: a renamed heading or a moved file fails here, not a reader."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def prose(text: str) -> str:
    """The README without its fenced code blocks (a ``# comment`` there is not a heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than hyphens dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_anchor_follows_github():
    assert anchor("Side by side (`--jobs`) and progress") == "side-by-side---jobs-and-progress"
    assert anchor("Full MNIST, the 99.31% teacher") == "full-mnist-the-9931-teacher"


def test_every_link_to_a_heading_finds_it():
    headings = {anchor(match) for match in re.findall(r"^#{1,6} (.+)$", prose(README), flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert len(links) >= 10, "the contents list links the sections"
    assert sorted(set(links) - headings) == []


def test_contents_lists_every_section():
    sections = re.findall(r"^## (.+)$", prose(README), flags=re.M)
    contents = prose(README).split("## Contents", 1)[1].split("\n## ", 1)[0]
    assert [section for section in sections if section != "Contents" and f"(#{anchor(section)})" not in contents] == []


def test_every_config_and_benchmark_named_exists():
    named = set(re.findall(r"\b((?:configs|benchmarks|docs)/[\w./-]+\.(?:yaml|py|sh|png|txt|md|json|jsonl))\b", README))
    assert len(named) >= 10
    assert sorted(path for path in named if not (ROOT / path).exists()) == []


def test_every_benchmark_script_is_named():
    scripts = sorted(
        path.relative_to(ROOT).as_posix() for path in ROOT.glob("benchmarks/*") if path.suffix in {".py", ".sh"}
    )
    assert len(scripts) >= 10
    assert [script for script in scripts if script not in README] == []
