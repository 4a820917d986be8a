"""The README and docs/ point at things that exist: every relative link resolves, and every command
the README and docs/REFERENCE.md show names a script of the repository and flags that script accepts."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_DOCUMENTS = [REPO / "README.md", REPO / "docs" / "REFERENCE.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown):
    """GitHub's anchors of the document's headings."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_relative_links_resolve(document):
    text = document.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path) if path else document
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(target)
    assert not broken, f"{document.relative_to(REPO)}: links that do not resolve: {broken}"


def documented_commands():
    """(script, flags) of every `python X.py ...` / `bash scripts/X.sh` line in the code blocks of the
    README and the reference page."""
    text = "\n".join(document.read_text() for document in COMMAND_DOCUMENTS)
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            match = re.search(r"(?<![=\w/])(?:python3?|\.venv/bin/python)\s+(?:-m\s+)?([\w./]+)", line)
            if match:
                commands.append((match.group(1), re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line[match.end():])))
            for script in re.findall(r"bash\s+(scripts/[\w.]+\.sh)", line):
                commands.append((script, []))
    return commands


def test_the_docs_show_commands():
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize("script, flags", documented_commands(), ids=lambda value: str(value))
def test_every_documented_command_exists_with_its_flags(script, flags):
    if script.endswith(".sh"):
        assert (REPO / script).is_file(), f"the docs run {script}, which does not exist"
        return
    if script in ("pip", "venv", "pytest"):
        return
    module = script.removesuffix(".py").replace("/", ".")
    path = REPO / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"the docs run {script}, which does not exist"
    if not flags:
        return
    help_text = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=120).stdout
    unknown = [flag for flag in flags if flag not in help_text]
    assert not unknown, f"the docs pass {unknown} to {script}, whose --help does not list them"
