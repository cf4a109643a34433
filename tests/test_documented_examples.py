"""Every `weldstream …` example in the README and the guides is a command the CLI takes as written: each
is parsed by the real parser (flags, their values and their places), and the quick ones are run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from weldstream.cli import build_parser
from weldstream.settings import apply_environment

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?:sh|bash|shell|console)?\s*$\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documented_examples() -> list[tuple[str, str]]:
    """(page, command line) for every line of a shell block that runs weldstream."""
    examples = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.splitlines():
                words = line.split("#", 1)[0].strip()
                if words.startswith("weldstream "):
                    examples.append((str(page.relative_to(ROOT)), words))
    return examples


EXAMPLES = documented_examples()


def test_the_pages_document_examples():
    pages = {page for page, _ in EXAMPLES}
    assert "README.md" in pages and len(EXAMPLES) >= 20, pages


@pytest.mark.parametrize(("page", "line"), EXAMPLES, ids=[f"{p}: {line[:60]}" for p, line in EXAMPLES])
def test_a_documented_example_parses_as_written(page, line, capsys):
    argv = shlex.split(line)[1:]
    parser = build_parser(argv)
    apply_environment(parser, {})
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{page}: `{line}` is refused: {capsys.readouterr().err.strip()}")
    assert callable(args.run), line


QUICK = [(page, line) for page, line in EXAMPLES if " --help" in line or line.startswith("weldstream models list")]


@pytest.mark.parametrize(("page", "line"), QUICK, ids=[f"{p}: {line[:60]}" for p, line in QUICK])
def test_a_quick_documented_example_runs(page, line, tmp_path):
    argv = shlex.split(line)[1:]
    if argv[:2] == ["models", "list"]:
        argv += ["--model-dir", str(tmp_path / "models"), "--registry", "off", "--kafka", ""]
    done = subprocess.run([sys.executable, "-m", "weldstream.cli", *argv], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, f"{page}: `{line}`\n{done.stderr[-2000:]}"
